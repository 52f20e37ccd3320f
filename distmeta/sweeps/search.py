"""A Ray Tune search as a YAML file (``configs/tune_*.yaml``), checked completely before Ray starts.

::

    base: sinusoid_maml.yaml            # a distmeta config (path relative to this file) or a mapping
    overrides: [train.steps=200]        # applied to the base
    name: tune_sinusoid                 # experiment directory = storage_path/name
    storage_path: runs/tune
    metric: val_neg_mse                 # default: val_accuracy, or val_neg_mse for sinusoid
    num_samples: 8
    max_concurrent_trials: 2
    search_space:
      algorithm.inner_lr: {loguniform: [0.01, 1.0]}
      algorithm.inner_steps: {choice: [1, 3, 5]}
    scheduler: {name: asha, max_t: 10, grace_period: 2}

:func:`load_search` reads one and checks every key, and every candidate value of the
search space against the config schema, with errors that name the key::

    search = load_search("configs/tune_sinusoid_asha.yaml", ["num_samples=3", "train.steps=20"])
    search.param_space()   # {"_base": the resolved base config, "algorithm.inner_lr": tune.loguniform(...), ...}
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from distmeta.config import config_from_dict, set_key
from distmeta.errors import ConfigError
from distmeta.sweeps.common import absolute_paths, load_sweep, one_line, sweep_error

WHAT = "tune config"
BASE_KEY = "_base"  # the trial config's base distmeta config (a mapping); every other key is a dotted override
DOMAINS = {"loguniform": 2, "uniform": 2, "quniform": 3, "qloguniform": 3, "randint": 2, "choice": None, "grid": None}
# Keys PBT may change in the middle of a trial: none of them changes the shape of the meta-parameters.
PBT_MUTABLE = {
    "algorithm.inner_lr", "algorithm.inner_steps", "algorithm.inner_optimizer", "algorithm.inner_momentum",
    "outer.lr", "outer.momentum", "outer.weight_decay", "outer.grad_clip", "outer.noise_eta", "outer.noise_gamma",
    "data.shots", "data.queries", "train.meta_batch", "eval.inner_steps",
}
# Keys that size a trial's placement group: fixed for a whole search.
RESOURCE_KEYS = {"resources.workers", "resources.cpus_per_worker", "resources.gpus_per_worker"}


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SchedulerSpec(_Spec):
    """``asha`` (early stopping), ``pbt`` (population-based training) or ``fifo`` (run every trial out)."""

    name: Literal["asha", "pbt", "fifo"] = "asha"
    time_attr: str = "training_iteration"  # one iteration = one meta-validation report
    # asha
    max_t: int = Field(100, ge=1)
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(4.0, gt=1)
    brackets: int = Field(1, ge=1)
    # pbt
    perturbation_interval: float = Field(2.0, gt=0)
    burn_in_period: float = Field(0.0, ge=0)
    quantile_fraction: float = Field(0.25, gt=0, le=0.5)
    resample_probability: float = Field(0.25, ge=0, le=1)
    hyperparam_mutations: list[str] | None = None  # default: every search-space key PBT may mutate
    synch: bool = False

    @model_validator(mode="after")
    def _fields_of_this_scheduler(self) -> SchedulerSpec:
        own = {"asha": {"max_t", "grace_period", "reduction_factor", "brackets"},
               "pbt": {"perturbation_interval", "burn_in_period", "quantile_fraction", "resample_probability",
                       "hyperparam_mutations", "synch"},
               "fifo": set()}
        foreign = sorted((self.model_fields_set - {"name", "time_attr"}) - own[self.name])
        if foreign:
            raise ValueError(f"{', '.join(foreign)} {'is' if len(foreign) == 1 else 'are'} not a setting of the "
                             f"{self.name!r} scheduler")
        if self.name == "asha" and self.grace_period > self.max_t:
            raise ValueError(f"grace_period={self.grace_period} exceeds max_t={self.max_t}")
        return self


class TuneSpec(_Spec):
    """A whole search: ``configs/tune_*.yaml``. Field names are the YAML keys."""

    base: str | dict[str, Any] = Field(description="distmeta config: path (relative to the YAML) or mapping")
    overrides: list[str] = []
    name: str = "tune"
    storage_path: str = "runs/tune"
    metric: str | None = None
    mode: Literal["max", "min"] = "max"
    num_samples: int = Field(4, ge=1)
    max_concurrent_trials: int | None = Field(None, ge=1)
    search_seed: int | None = None
    driver_cpus: float = Field(1.0, ge=0, description="CPUs of a trial's driver process (0: none reserved)")
    driver_gpus: float = Field(0.0, ge=0)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    search_space: dict[str, Any] = {}
    scheduler: SchedulerSpec = SchedulerSpec()
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(0, ge=-1)
    test_episodes: int | None = Field(None, ge=2, description="meta-test episodes for the best trial")
    verbose: int = Field(1, ge=0, le=3)
    reuse_actors: bool = Field(True, description="run the next trial in a finished trial's processes (actors rebuilt)")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError(f"must be a plain directory name, got {v!r}")
        return v


class Search:
    """A validated search: the spec, the resolved base config and the Tune search space."""

    def __init__(self, spec: TuneSpec, base: dict[str, Any], source: str) -> None:
        self.spec, self.base, self.source = spec, base, source
        self.base_cfg = config_from_dict(base)
        self.metric = spec.metric or ("val_neg_mse" if self.base_cfg.data.is_regression else "val_accuracy")

    @property
    def experiment_path(self) -> Path:
        """``storage_path/name``: Tune's experiment directory (local storage)."""
        return Path(self.spec.storage_path) / self.spec.name

    @property
    def local_storage(self) -> bool:
        """Whether ``storage_path`` is a local directory (not a cloud URI)."""
        return "://" not in self.spec.storage_path

    def param_space(self) -> dict[str, Any]:
        """Tune's ``param_space``: the base config under ``_base`` and a Tune domain per search-space key."""
        space: dict[str, Any] = {BASE_KEY: self.base}
        space.update({k: to_domain(v) for k, v in self.spec.search_space.items()})
        return space

    def mutations(self) -> dict[str, Any]:
        """PBT's ``hyperparam_mutations``: the listed keys, default every mutable search-space key."""
        keys = self.spec.scheduler.hyperparam_mutations
        if keys is None:
            keys = [k for k in self.spec.search_space if k in PBT_MUTABLE and "grid" not in self.spec.search_space[k]]
        return {k: _mutation(self.spec.search_space[k]) for k in keys}


def _candidates(kind: str, args: list[Any]) -> list[Any]:
    if kind in ("choice", "grid"):
        return list(args)
    if kind == "randint":
        return [args[0], args[1] - 1]
    return [args[0], args[1]]


def _check_domain(key: str, spec: Any) -> tuple[str, list[Any]]:
    where = f"search_space.{key}"
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DOMAINS:
        raise ConfigError(f"{where}: expected one of {{{', '.join(f'{k}: [...]' for k in DOMAINS)}}}, got {spec!r}")
    kind, args = next(iter(spec.items()))
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}.{kind}: expected a non-empty list, got {args!r}")
    n = DOMAINS[kind]
    if n is not None:
        if len(args) != n or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
            shape = "[low, high]" if n == 2 else "[low, high, q]"
            raise ConfigError(f"{where}.{kind}: expected {n} numbers {shape}, got {args!r}")
        if not args[0] < args[1]:
            raise ConfigError(f"{where}.{kind}: low must be below high, got {args!r}")
        if kind in ("loguniform", "qloguniform") and args[0] <= 0:
            raise ConfigError(f"{where}.{kind}: a log range needs low > 0, got {args!r}")
        if kind == "randint" and not all(isinstance(a, int) for a in args):
            raise ConfigError(f"{where}.randint: expected integers, got {args!r}")
    return kind, args


def to_domain(spec: dict[str, list[Any]]) -> Any:
    """``{loguniform: [a, b]}`` -> ``tune.loguniform(a, b)`` (and uniform, quniform, qloguniform, randint, choice, grid)."""
    from ray import tune

    kind, args = next(iter(spec.items()))
    if kind == "grid":
        return tune.grid_search(list(args))
    if kind == "choice":
        return tune.choice(list(args))
    return getattr(tune, kind)(*args)


def _mutation(spec: dict[str, list[Any]]) -> Any:
    kind, args = next(iter(spec.items()))
    return list(args) if kind in ("choice", "grid") else to_domain(spec)


def load_search(path: str | Path | dict[str, Any], overrides: list[str] | None = None) -> Search:
    """Read and check a tune YAML completely, before any Ray: errors name the key.

    Args:
        path: the YAML file, or its content as a mapping.
        overrides: ``key=value``; a tune-config key (``num_samples=2``, ``scheduler.max_t=3``)
            changes the search, any other key its base config.

    Returns:
        The validated :class:`Search`.
    """
    spec, base_raw, where = load_sweep(path, overrides, TuneSpec, WHAT)
    root = Path.cwd() if isinstance(path, dict) else Path(path).resolve().parent
    # The schema's defaults spelt out, and file paths made absolute (relative ones mean: from here, as for
    # `distmeta train`), since trials run in their own working directories.
    base = absolute_paths(config_from_dict(base_raw).model_dump(mode="json"), Path.cwd())
    spec = spec.model_copy(update={"storage_path": _abs_storage(spec.storage_path, root)})
    search = Search(spec, base, where)
    problems = _base_problems(search) + _space_problems(search) + _scheduler_problems(search)
    if problems:
        raise sweep_error(WHAT, where, "\n  ".join(problems))
    return search


def _abs_storage(storage: str, root: Path) -> str:
    if "://" in storage:
        return storage
    p = Path(storage).expanduser()
    return str(p if p.is_absolute() else (Path.cwd() / p).resolve())


def _base_problems(search: Search) -> list[str]:
    spec, cfg = search.spec, search.base_cfg
    problems: list[str] = []
    if cfg.resources.workers == "auto":
        problems.append("base resources.workers: 'auto' cannot size a trial; give it an integer (0 = in-process)")
    elif cfg.resources.workers == 0 and spec.driver_cpus == 0 and spec.driver_gpus == 0:
        problems.append("driver_cpus: a trial with resources.workers=0 trains in its driver, which needs "
                        "driver_cpus > 0")
    if cfg.run.eval_every <= 0:
        problems.append("base run.eval_every: must be > 0: trials report at every meta-validation")
    if not cfg.data.is_regression:
        split = cfg.data.split
        if not (split.val_classes if split.val_classes is not None else split.val > 0):
            problems.append("base data.split.val: meta-validation needs validation classes (val > 0 or val_classes)")
    allowed = ["val_neg_mse", "val_loss"] if cfg.data.is_regression else ["val_accuracy", "val_loss"]
    if search.metric not in allowed:
        problems.append(f"metric: {search.metric!r} is not reported for this base config; use one of {allowed}")
    return problems


def _space_problems(search: Search) -> list[str]:
    problems: list[str] = []
    for key, dom in search.spec.search_space.items():
        if key == BASE_KEY:
            problems.append(f"search_space.{key}: reserved name")
            continue
        if key in RESOURCE_KEYS or key == "resources":
            problems.append(f"search_space.{key}: trial resources are fixed for a search; set {key} in the base")
            continue
        try:
            kind, args = _check_domain(key, dom)
        except ConfigError as err:
            problems.append(str(err))
            continue
        for value in _candidates(kind, args):
            try:
                config_from_dict(set_key(search.base, key, value))
            except ConfigError as err:
                problems.append(f"search_space.{key}: value {value!r}: {one_line(err)}")
                break
    return problems


def _scheduler_problems(search: Search) -> list[str]:
    spec, sched = search.spec, search.spec.scheduler
    if sched.name != "pbt":
        return []
    problems: list[str] = []
    grids = [len(d["grid"]) for d in spec.search_space.values() if isinstance(d, dict) and "grid" in d]
    if spec.num_samples * math.prod(grids) < 2:
        problems.append("num_samples: PBT needs a population of at least 2 trials (num_samples x grid sizes)")
    unknown = [k for k in sched.hyperparam_mutations or [] if k not in spec.search_space]
    problems += [f"scheduler.hyperparam_mutations: {k!r} is not a search_space key" for k in unknown]
    if unknown:
        return problems
    mutations = search.mutations()
    for k in mutations:
        if k not in PBT_MUTABLE:
            problems.append(f"scheduler.hyperparam_mutations: {k!r} changes the meta-parameters or the task "
                            f"family, so a trial cannot continue from another's checkpoint; PBT may mutate "
                            f"{sorted(PBT_MUTABLE)}")
    if not mutations:
        problems.append("scheduler.hyperparam_mutations: nothing for PBT to mutate (search_space has none of "
                        f"{sorted(PBT_MUTABLE)})")
    return problems


__all__ = ["BASE_KEY", "PBT_MUTABLE", "SchedulerSpec", "Search", "TuneSpec", "load_search", "to_domain"]
