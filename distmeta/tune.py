"""Ray Tune searches over distributed meta-training runs.

One trial is one :class:`~distmeta.runtime.driver.Trainer` run. Its resources are a
placement group of ``[driver bundle] + workers x [worker bundle]``
(:func:`trial_resources`); the trial's :class:`~distmeta.runtime.actors.RayBackend`
finds that group (``ray.util.get_current_placement_group()``) and puts its actors in
the worker bundles, so concurrent trials never share a CPU or GPU share.

A search is described by a YAML file (``configs/tune_*.yaml``)::

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

It is checked completely (every key, every candidate value against the config schema)
before Ray starts. Trials report at every meta-validation (``run.eval_every``) with a
checkpoint (``ray.tune.report(metrics, checkpoint=...)``); a trial started with a
checkpoint (PBT exploiting another trial, ``Tuner.restore``) resumes its Trainer from it:
parameters, optimiser state, RNG and step. The final report adds the trial's meta-test.
After the search, ``best.json`` and ``best_config.yaml`` (the best trial's resolved
config) are written to the experiment directory.

Python::

    from distmeta.tune import run_search
    summary = run_search("configs/tune_sinusoid.yaml")       # or resume=True after a kill

    # or with Tune directly
    tuner = ray.tune.Tuner(tune.with_resources(distmeta.tune.trainable, trial_resources(cfg)),
                           param_space={"_base": base_dict, "algorithm.inner_lr": tune.loguniform(0.01, 1)})
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from distmeta.config import Config, apply_overrides, config_from_dict, dump_config, read_yaml
from distmeta.errors import ConfigError, DistmetaError

BASE_KEY = "_base"  # the trial config's base distmeta config (a mapping); every other key is a dotted override
ORIGIN_FILE = "tune_origin.json"  # in each reported checkpoint: which trial saved it, at which step
BEST_FILE = "best.json"
BEST_CONFIG_FILE = "best_config.yaml"
RUN_FILES = ("split.json", "tokenizer.json")  # what a resumed trial needs besides the checkpoint
DOMAINS = {"loguniform": 2, "uniform": 2, "quniform": 3, "qloguniform": 3, "randint": 2, "choice": None, "grid": None}
# Keys PBT may change in the middle of a trial: none of them changes the shape of the meta-parameters.
PBT_MUTABLE = {
    "algorithm.inner_lr", "algorithm.inner_steps", "algorithm.inner_optimizer", "algorithm.inner_momentum",
    "outer.lr", "outer.momentum", "outer.weight_decay", "outer.grad_clip", "outer.noise_eta", "outer.noise_gamma",
    "data.shots", "data.queries", "train.meta_batch", "eval.inner_steps",
}
# Keys that size a trial's placement group: fixed for a whole search.
RESOURCE_KEYS = {"workers", "cpus_per_worker", "gpus_per_worker"}


# ---------------------------------------------------------------------- the search description


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
    hyperparam_mutations: Optional[list[str]] = None  # default: every search-space key PBT may mutate
    synch: bool = False

    @model_validator(mode="after")
    def _fields_of_this_scheduler(self) -> "SchedulerSpec":
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

    base: Union[str, dict[str, Any]] = Field(description="distmeta config: path (relative to the YAML) or mapping")
    overrides: list[str] = []
    name: str = "tune"
    storage_path: str = "runs/tune"
    metric: Optional[str] = None
    mode: Literal["max", "min"] = "max"
    num_samples: int = Field(4, ge=1)
    max_concurrent_trials: Optional[int] = Field(None, ge=1)
    search_seed: Optional[int] = None
    driver_cpus: float = Field(1.0, ge=0, description="CPUs of a trial's driver process (0: none reserved)")
    driver_gpus: float = Field(0.0, ge=0)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    search_space: dict[str, Any] = {}
    scheduler: SchedulerSpec = SchedulerSpec()
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(0, ge=-1)
    test_episodes: Optional[int] = Field(None, ge=2, description="meta-test episodes for the best trial")
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
        return Path(self.spec.storage_path) / self.spec.name

    @property
    def local_storage(self) -> bool:
        return "://" not in self.spec.storage_path

    def param_space(self) -> dict[str, Any]:
        space: dict[str, Any] = {BASE_KEY: self.base}
        space.update({k: to_domain(v) for k, v in self.spec.search_space.items()})
        return space

    def mutations(self) -> dict[str, Any]:
        keys = self.spec.scheduler.hyperparam_mutations
        if keys is None:
            keys = [k for k in self.spec.search_space if k in PBT_MUTABLE and "grid" not in self.spec.search_space[k]]
        return {k: _mutation(self.spec.search_space[k]) for k in keys}


def _err(where: str, msg: str) -> ConfigError:
    return ConfigError(f"invalid tune config {where}:\n  {msg}")


def _format_spec_error(err: ValidationError) -> str:
    import difflib

    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<tune config>"
        if e["type"] == "extra_forbidden":
            parts = [str(p) for p in e["loc"]]
            model: type[BaseModel] = TuneSpec if len(parts) == 1 else SchedulerSpec
            near = difflib.get_close_matches(parts[-1], list(model.model_fields), n=1, cutoff=0.6)
            hint = f"; did you mean {'.'.join(parts[:-1] + [near[0]])!r}?" if near else ""
            lines.append(f"unknown tune config key {loc!r}{hint}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
            lines.append(f"{loc}: {msg}{got}")
    return "\n  ".join(lines)


def _absolute_paths(raw: dict[str, Any], root: Path) -> dict[str, Any]:
    """File sources and model paths made absolute: trials run in their own working directories."""
    out = copy.deepcopy(raw)
    data = out.get("data") or {}
    src = data.get("source")
    for prefix in ("csv:", "json:", "jsonl:", "parquet:"):
        if isinstance(src, str) and src.startswith(prefix) and not Path(src[len(prefix):]).is_absolute():
            data["source"] = prefix + str((root / src[len(prefix):]).resolve())
    for comp in data.get("mixture") or []:
        s = comp.get("source") if isinstance(comp, dict) else None
        for prefix in ("csv:", "json:", "jsonl:", "parquet:"):
            if isinstance(s, str) and s.startswith(prefix) and not Path(s[len(prefix):]).is_absolute():
                comp["source"] = prefix + str((root / s[len(prefix):]).resolve())
    model = out.get("model") or {}
    if isinstance(model.get("path"), str) and not Path(model["path"]).is_absolute():
        model["path"] = str((root / model["path"]).resolve())
    return out


def set_path(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """``raw`` with the dotted ``key`` set to ``value`` (a copy)."""
    out = copy.deepcopy(raw)
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{key!r}: {part!r} is a value, not a section")
        node = nxt
    node[parts[-1]] = value
    return out


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

    ``overrides`` (``key=value``) apply to the search when the key is a tune-config
    key (``num_samples=2``, ``scheduler.max_t=3``), otherwise to the base config.
    """
    if isinstance(path, dict):
        raw, where, root = copy.deepcopy(path), "<mapping>", Path.cwd()
    else:
        raw, where, root = read_yaml(path), str(path), Path(path).resolve().parent
    spec_over, base_over = [], []
    for item in overrides or []:
        key = item.split("=", 1)[0].strip().split(".")[0]
        (spec_over if key in TuneSpec.model_fields else base_over).append(item)
    raw = apply_overrides(raw, spec_over)
    if "base" not in raw:
        raise _err(where, "base: missing (a distmeta config path, relative to this file, or a mapping)")
    try:
        spec = TuneSpec.model_validate(raw)
    except ValidationError as err:
        raise _err(where, _format_spec_error(err)) from None

    if isinstance(spec.base, str):
        base_path = Path(spec.base)
        if not base_path.is_absolute():
            base_path = (root / base_path) if (root / base_path).exists() else base_path
        try:
            base_raw = read_yaml(base_path)
        except ConfigError as err:
            raise _err(where, f"base: {err}") from None
    else:
        base_raw = spec.base
    base_raw = apply_overrides(base_raw, [*spec.overrides, *base_over])
    try:
        base_cfg = config_from_dict(base_raw)
    except ConfigError as err:
        raise _err(where, f"base: {err}") from None
    # The schema's defaults spelt out, and file paths made absolute (relative ones mean: from here, as for
    # `distmeta train`), since trials run in their own working directories.
    base = _absolute_paths(base_cfg.model_dump(mode="json"), Path.cwd())
    spec = spec.model_copy(update={"storage_path": _abs_storage(spec.storage_path, root)})

    search = Search(spec, base, where)
    _check_search(search, where)
    return search


def _abs_storage(storage: str, root: Path) -> str:
    if "://" in storage:
        return storage
    p = Path(storage).expanduser()
    return str(p if p.is_absolute() else (Path.cwd() / p).resolve())


def _check_search(search: Search, where: str) -> None:
    spec, cfg = search.spec, search.base_cfg
    problems: list[str] = []
    if cfg.workers == "auto":
        problems.append("base workers: 'auto' cannot size a trial; give workers an integer (0 = in-process)")
    elif cfg.workers == 0 and spec.driver_cpus == 0 and spec.driver_gpus == 0:
        problems.append("driver_cpus: a trial with workers=0 trains in its driver, which needs driver_cpus > 0")
    if cfg.run.eval_every <= 0:
        problems.append("base run.eval_every: must be > 0: trials report at every meta-validation")
    if not cfg.data.is_regression:
        split = cfg.data.split
        if not (split.val_classes if split.val_classes is not None else split.val > 0):
            problems.append("base data.split.val: meta-validation needs validation classes (val > 0 or val_classes)")
    allowed = ["val_neg_mse", "val_loss"] if cfg.data.is_regression else ["val_accuracy", "val_loss"]
    if search.metric not in allowed:
        problems.append(f"metric: {search.metric!r} is not reported for this base config; use one of {allowed}")
    for key, dom in spec.search_space.items():
        if key == BASE_KEY:
            problems.append(f"search_space.{key}: reserved name")
            continue
        if key.split(".")[0] in RESOURCE_KEYS or key in RESOURCE_KEYS:
            problems.append(f"search_space.{key}: trial resources are fixed for a search; set {key} in the base")
            continue
        try:
            kind, args = _check_domain(key, dom)
        except ConfigError as err:
            problems.append(str(err))
            continue
        for value in _candidates(kind, args):
            try:
                config_from_dict(set_path(search.base, key, value))
            except ConfigError as err:
                detail = str(err).removeprefix("invalid config:\n  ").replace("\n  ", "; ")
                problems.append(f"search_space.{key}: value {value!r}: {detail}")
                break
    sched = spec.scheduler
    if sched.name == "pbt":
        grids = [len(d["grid"]) for d in spec.search_space.values() if isinstance(d, dict) and "grid" in d]
        if spec.num_samples * math.prod(grids) < 2:
            problems.append("num_samples: PBT needs a population of at least 2 trials (num_samples x grid sizes)")
        keys = sched.hyperparam_mutations
        if keys is not None:
            for k in keys:
                if k not in spec.search_space:
                    problems.append(f"scheduler.hyperparam_mutations: {k!r} is not a search_space key")
        for k in search.mutations() if not any("hyperparam_mutations" in p for p in problems) else []:
            if k not in PBT_MUTABLE:
                problems.append(f"scheduler.hyperparam_mutations: {k!r} changes the meta-parameters or the task "
                                f"family, so a trial cannot continue from another's checkpoint; PBT may mutate "
                                f"{sorted(PBT_MUTABLE)}")
        if not any("hyperparam_mutations" in p for p in problems) and not search.mutations():
            problems.append("scheduler.hyperparam_mutations: nothing for PBT to mutate (search_space has none of "
                            f"{sorted(PBT_MUTABLE)})")
    if problems:
        raise _err(where, "\n  ".join(problems))


# ---------------------------------------------------------------------- resources


def trial_resources(cfg: Config, driver_cpus: float = 1.0, driver_gpus: float = 0.0, strategy: str = "PACK"):
    """``PlacementGroupFactory([driver] + workers x [cpus_per_worker CPU, gpus_per_worker GPU])``.

    An all-zero driver bundle reserves nothing for the driver process (Tune drops it),
    and the worker bundles are the group's last ``workers`` bundles either way.
    """
    from ray import tune

    if cfg.workers == "auto":
        raise ConfigError("workers=auto cannot size a Tune trial; give workers an integer")
    driver = {"CPU": driver_cpus, **({"GPU": driver_gpus} if driver_gpus else {})}
    worker = {"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if cfg.gpus_per_worker else {})}
    return tune.PlacementGroupFactory([driver] + [dict(worker) for _ in range(int(cfg.workers))], strategy=strategy)


# ---------------------------------------------------------------------- the trial


def trial_config(config: dict[str, Any]) -> dict[str, Any]:
    """A Tune trial config -> a distmeta config dict: ``_base`` plus dotted (or nested section) overrides."""
    raw = copy.deepcopy(config.get(BASE_KEY) or {})
    for key, value in config.items():
        if key == BASE_KEY:
            continue
        if "." not in key and isinstance(value, dict) and isinstance(raw.get(key), dict):
            merged = raw[key]
            for k2, v2 in value.items():
                merged[k2] = v2
        else:
            raw = set_path(raw, key, value)
    return raw


def _val_metrics(step: int, val: dict[str, float], regression: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"step": step, "val_loss": val["loss"], "val_loss_ci95": val.get("loss_ci95", float("nan"))}
    if regression:
        out["val_neg_mse"] = -val["loss"]
    if "accuracy" in val:
        out["val_accuracy"] = val["accuracy"]
        out["val_ci95"] = val["ci95"]
    return out


def _test_metrics(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, r in results.get("test", {}).items():
        if "accuracy" in r:
            out[f"test_{name}_accuracy"], out[f"test_{name}_ci95"] = r["accuracy"], r["ci95"]
        else:
            out[f"test_{name}_mse"], out[f"test_{name}_mse_ci95"] = r["loss"], r["loss_ci95"]
    return out


class TuneReporter:
    """Trainer callback: one ``ray.tune.report`` per meta-validation, with that step's checkpoint.

    ``run.checkpoint_every`` equals ``run.eval_every`` in a trial, so each validation is
    followed by a checkpoint of the same step; the report goes out then. The last one
    waits for the meta-test and carries it too.
    """

    def __init__(self, trial_id: str, origin: dict[str, Any] | None, report: Callable[..., None] | None = None) -> None:
        self.trial_id = trial_id
        self.origin = origin or {}
        self.pending: dict[str, Any] | None = None
        self.last_checkpoint: Path | None = None
        self.reports = 0
        self._report = report

    def __call__(self, event: str, trainer: Any, payload: dict) -> None:
        regression = trainer.cfg.data.is_regression
        if event == "validation":
            self.pending = _val_metrics(trainer.step, payload, regression)
        elif event == "checkpoint":
            self.last_checkpoint = Path(payload["path"])
            if self.pending and self.pending["step"] == trainer.step and trainer.step < trainer.cfg.train.steps:
                self.send(self.pending, trainer)
                self.pending = None
        elif event == "end":
            metrics = self.pending if self.pending and self.pending["step"] == trainer.step else None
            if metrics is None:
                metrics = _val_metrics(trainer.step, trainer.validate(), regression) if trainer._has_val() else {
                    "step": trainer.step}
            self.send({**metrics, **_test_metrics(payload), "final": True}, trainer)
            self.pending = None

    def send(self, metrics: dict[str, Any], trainer: Any) -> None:
        from ray import tune

        metrics = {**metrics, "trial_id_origin": self.origin.get("trial_id", ""),
                   "restored_from_step": int(self.origin.get("step", -1)), "final": bool(metrics.get("final", False)),
                   **placement()}
        assert self.last_checkpoint is not None
        staging = trainer.run_dir / ".tune_staging" / self.last_checkpoint.name
        shutil.rmtree(staging, ignore_errors=True)
        try:
            shutil.copytree(self.last_checkpoint, staging / "checkpoints" / self.last_checkpoint.name)
            for name in RUN_FILES:
                if (trainer.run_dir / name).exists():
                    shutil.copy2(trainer.run_dir / name, staging / name)
            for extra in trainer.run_dir.glob("split_*.json"):  # one split per mixture component
                shutil.copy2(extra, staging / extra.name)
            (staging / ORIGIN_FILE).write_text(json.dumps({"trial_id": self.trial_id, "step": trainer.step}))
            report = self._report or tune.report
            report(metrics, checkpoint=tune.Checkpoint.from_directory(str(staging)))
            self.reports += 1
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def install_checkpoint(ckpt_dir: Path, run_dir: Path) -> dict[str, Any]:
    """Make ``run_dir`` a distmeta run that resumes from a reported checkpoint; returns its origin."""
    src = sorted((ckpt_dir / "checkpoints").glob("step_*"))
    if not src:
        raise DistmetaError(f"Tune checkpoint {ckpt_dir} holds no distmeta checkpoint (checkpoints/step_*)")
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    shutil.copytree(src[-1], run_dir / "checkpoints" / src[-1].name)
    for f in ckpt_dir.iterdir():
        if f.is_file() and (f.name in RUN_FILES or (f.name.startswith("split_") and f.suffix == ".json")):
            shutil.copy2(f, run_dir / f.name)
    origin = ckpt_dir / ORIGIN_FILE
    return json.loads(origin.read_text()) if origin.exists() else {"trial_id": "", "step": -1}


class _Borrowed:
    """A pooled backend lent to one Trainer: its ``close()`` keeps the actors for the process's next trial."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def close(self) -> None:
        pass


#: In a trial process: the RayBackend of its last trial, ``(key, backend)``. With ``reuse_actors`` Tune runs the
#: next trial of the same size in the same process and placement group, and the actors are rebuilt for it
#: (``RayBackend.reconfigure``: seconds of process start-up saved per trial). They die with the process.
_POOL: dict[str, tuple[Any, Any]] = {}


def pooled_backend(cfg: Config, exp: Any, make: Callable[[Config, Any], Any]) -> Any:
    """``make(cfg, exp)``, or the process's previous backend of the same size and placement group, reconfigured."""
    if cfg.workers == 0:
        return make(cfg, exp)
    import ray

    pg = ray.util.get_current_placement_group()
    key = (pg.id.hex() if pg is not None else None, cfg.workers, cfg.cpus_per_worker, cfg.gpus_per_worker)
    held = _POOL.pop("backend", None)
    if held is not None:
        old_key, backend = held
        if old_key == key and not backend._closed:
            try:
                backend.reconfigure(cfg, exp.worker_args())
                _POOL["backend"] = (key, backend)
                return _Borrowed(backend)
            except Exception:  # a broken pool is replaced, never trusted
                pass
        backend.close()
    backend = make(cfg, exp)
    _POOL["backend"] = (key, backend)
    return _Borrowed(backend)


def release_pool() -> None:
    """Close this process's pooled backend (a grid's driver does at its end; trial processes just exit)."""
    held = _POOL.pop("backend", None)
    if held is not None:
        held[1].close()


def placement() -> dict[str, Any]:
    """Where this trial's workers are: its placement group, and whether the pooled backend's actors are in it."""
    import ray

    pg = ray.util.get_current_placement_group()
    held = _POOL.get("backend")
    backend = held[1] if held else None
    inside = bool(backend is not None and pg is not None and not backend._owns_pg and backend._pg.id == pg.id)
    return {"trial_pg": pg.id.hex() if pg is not None else "", "workers_in_trial_pg": inside,
            "ray_workers": len(backend.actors) if backend is not None else 0}


def _trainer_class():
    from distmeta.runtime import driver

    class TrialTrainer(driver.Trainer):
        """A Trainer for one trial: pooled actors, and a restore that keeps this trial's outer learning rate
        (PBT may have changed it)."""

        def _build(self, reuse_saved: bool) -> None:
            make = driver.make_backend
            driver.make_backend = lambda cfg, exp: pooled_backend(cfg, exp, make)  # this trial process only
            try:
                super()._build(reuse_saved)
            finally:
                driver.make_backend = make

        def _restore(self, ckpt: Any) -> None:
            super()._restore(ckpt)
            assert self.optimizer is not None
            for group in self.optimizer.opt.param_groups:
                group["lr"] = self.cfg.outer.lr

    return TrialTrainer


def trainable(config: dict[str, Any], run_root: str | None = None) -> None:
    """The Ray Tune function trainable: one distributed meta-training run per trial.

    ``config``: ``{"_base": distmeta config dict, "algorithm.inner_lr": 0.1, ...}``. The
    run directory is ``run_root/<trial id>`` (shared storage), or ``run/`` in the trial's
    working directory.
    """
    from ray import tune

    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    run_dir = Path(run_root) / trial_id if run_root else Path(ctx.get_trial_dir()) / "run"
    raw = trial_config(config)
    raw = set_path(raw, "run.dir", str(run_dir))
    raw = set_path(raw, "run.progress", False)
    eval_every = int((raw.get("run") or {}).get("eval_every", 100))
    raw = set_path(raw, "run.checkpoint_every", eval_every)
    cfg = config_from_dict(raw)

    checkpoint = tune.get_checkpoint()
    origin = None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            origin = install_checkpoint(Path(d), run_dir)
    reporter = TuneReporter(trial_id, origin)
    trainer_cls = _trainer_class()
    with trainer_cls(cfg, resume=checkpoint is not None, overwrite=checkpoint is None, callbacks=[reporter]) as trainer:
        trainer.fit()


# ---------------------------------------------------------------------- running a search


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def build_tuner(search: Search, callbacks: list[Any] | None = None, resume: bool = False):
    """A ``ray.tune.Tuner`` for the search (or ``Tuner.restore`` of its experiment with ``resume``)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
    from ray.tune.search import BasicVariantGenerator

    spec = search.spec
    run_root = str(search.experiment_path / "runs") if search.local_storage else None
    fn = tune.with_parameters(trainable, run_root=run_root)
    resources = trial_resources(search.base_cfg, spec.driver_cpus, spec.driver_gpus, spec.placement_strategy)
    fn = tune.with_resources(fn, resources)
    if resume:
        path = str(search.experiment_path) if search.local_storage else f"{spec.storage_path.rstrip('/')}/{spec.name}"
        if not tune.Tuner.can_restore(path):
            raise DistmetaError(f"--resume: no Tune experiment to restore at {path}")
        return tune.Tuner.restore(path, trainable=fn, param_space=search.param_space(),
                                  resume_unfinished=True, resume_errored=True)
    sched = spec.scheduler
    if sched.name == "asha":
        scheduler: Any = ASHAScheduler(time_attr=sched.time_attr, max_t=sched.max_t, grace_period=sched.grace_period,
                                       reduction_factor=sched.reduction_factor, brackets=sched.brackets)
    elif sched.name == "pbt":
        scheduler = PopulationBasedTraining(
            time_attr=sched.time_attr, perturbation_interval=sched.perturbation_interval,
            burn_in_period=sched.burn_in_period, hyperparam_mutations=search.mutations(),
            quantile_fraction=sched.quantile_fraction, resample_probability=sched.resample_probability,
            synch=sched.synch)
    else:
        scheduler = FIFOScheduler()
    run_config = tune.RunConfig(
        name=spec.name, storage_path=spec.storage_path, verbose=spec.verbose, callbacks=callbacks,
        # PBT clones other trials' checkpoints: keep a few more of them than a plain search needs.
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=max(spec.keep_checkpoints, 4) if sched.name == "pbt" else spec.keep_checkpoints),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        sync_config=None if search.local_storage else _sync_artifacts(),
    )
    seeded = spec.search_seed is not None
    tune_config = tune.TuneConfig(
        metric=search.metric, mode=spec.mode, scheduler=scheduler, num_samples=spec.num_samples,
        max_concurrent_trials=None if seeded else spec.max_concurrent_trials, reuse_actors=spec.reuse_actors,
        trial_dirname_creator=_trial_dirname,
        search_alg=BasicVariantGenerator(random_state=spec.search_seed, max_concurrent=spec.max_concurrent_trials or 0)
        if seeded else None,
    )
    return tune.Tuner(fn, param_space=search.param_space(), tune_config=tune_config, run_config=run_config)


def _sync_artifacts():
    from ray import tune

    return tune.SyncConfig(sync_artifacts=True)  # run dirs (TensorBoard, metrics) live in trial working dirs


def _best_test(search: Search, best: Any) -> tuple[dict[str, Any], str]:
    """The best trial's meta-test: from its final report, or by meta-testing its latest checkpoint here."""
    metrics = best.metrics or {}
    test = {k: v for k, v in metrics.items() if k.startswith("test_")}
    if metrics.get("final") and test:
        return test, "trial"
    if best.checkpoint is None:
        return {}, "none"
    from distmeta.runtime.driver import Trainer

    with best.checkpoint.as_directory() as d:
        over = ["workers=0", "run.progress=false"]
        # This search's own trial (storage_path is checked private by run_search): its data paths are ours.
        with Trainer.from_checkpoint(d, over, trust_config=True) as trainer:
            results = trainer.evaluate(split="test", episodes=search.spec.test_episodes, baseline=False)
    return _test_metrics(results), "checkpoint"


def summarise(search: Search, grid: Any, out_dir: Path | None = None) -> dict[str, Any]:
    """Best trial, its config and meta-test ± CI; written to ``best.json`` / ``best_config.yaml`` and printed."""
    errors = [r for r in grid if r.error is not None]
    try:
        best = grid.get_best_result(metric=search.metric, mode=search.spec.mode, scope="last")
    except RuntimeError as err:
        raise DistmetaError(f"no trial reported {search.metric!r}: {err}; "
                            f"{len(errors)} of {len(grid)} trials failed: {[str(e)[:200] for e in errors[:3]]}") from None
    test, test_source = _best_test(search, best)
    cfg_raw = trial_config(best.config)
    cfg_raw = set_path(cfg_raw, "run.dir", f"runs/{search.spec.name}-best")
    cfg = config_from_dict(cfg_raw)
    sampled = {k: v for k, v in best.config.items() if k != BASE_KEY}
    summary = {
        "experiment": str(search.experiment_path), "metric": search.metric, "mode": search.spec.mode,
        "best_trial": best.metrics.get("trial_id"), "best_value": best.metrics.get(search.metric),
        "best_step": best.metrics.get("step"), "best_params": sampled, "test": test, "test_source": test_source,
        "trials": len(grid), "errored_trials": len(errors),
    }
    out_dir = out_dir or (search.experiment_path if search.local_storage else Path("runs") / search.spec.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / BEST_FILE).write_text(json.dumps(summary, indent=2, default=str))
    (out_dir / BEST_CONFIG_FILE).write_text(dump_config(cfg))
    summary["files"] = [str(out_dir / BEST_FILE), str(out_dir / BEST_CONFIG_FILE)]
    print(format_summary(summary), flush=True)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"best trial {summary['best_trial']}: {summary['metric']} = {summary['best_value']:.4f} "
             f"(step {summary['best_step']}) with " + ", ".join(f"{k}={v}" for k, v in summary["best_params"].items())]
    test = summary["test"]
    for key in sorted(k for k in test if k.endswith("_accuracy")):
        name = key[len("test_"):-len("_accuracy")]
        lines.append(f"  meta-test {name}: accuracy {100 * test[key]:.2f} ± {100 * test[f'test_{name}_ci95']:.2f}%")
    for key in sorted(k for k in test if k.endswith("_mse")):
        name = key[len("test_"):-len("_mse")]
        lines.append(f"  meta-test {name}: mse {test[key]:.4f} ± {test[f'test_{name}_mse_ci95']:.4f}")
    lines.append(f"  {summary['trials']} trials ({summary['errored_trials']} failed); wrote {BEST_FILE} and "
                 f"{BEST_CONFIG_FILE} to {summary['experiment']}")
    return "\n".join(lines)


def run_search(path: str | Path | dict[str, Any], overrides: list[str] | None = None, *, resume: bool = False,
               callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Validate, run (or with ``resume`` restore) a search, then write and print its best trial.

    Uses an already-initialised Ray as it is; otherwise connects like ``distmeta train``
    (``ray.address`` / ``RAY_ADDRESS``, else a private Ray on 127.0.0.1).
    """
    search = load_search(path, overrides)
    if search.local_storage:  # Tuner.restore unpickles what it finds there: nobody else may write it
        from distmeta.security import check_private_dir

        check_private_dir(search.experiment_path, "Tune storage_path")
    from distmeta.runtime.ray_session import connect

    session = connect(search.base_cfg)
    try:
        if search.local_storage:
            search.experiment_path.mkdir(parents=True, exist_ok=True)
        tuner = build_tuner(search, callbacks=callbacks, resume=resume)
        grid = tuner.fit()
        summary = summarise(search, grid)
        summary["result_grid"] = grid
        return summary
    finally:
        session.close()


__all__ = ["TuneSpec", "SchedulerSpec", "Search", "load_search", "trial_resources", "trainable", "trial_config",
           "TuneReporter", "build_tuner", "run_search", "summarise"]
