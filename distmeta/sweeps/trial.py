"""One Ray Tune trial: one :class:`~distmeta.training.trainer.Trainer` run in a placement group of its own.

A trial's resources are ``[driver bundle] + workers x [worker bundle]``
(:func:`trial_resources`); its Ray backend finds that group and puts its actors in the
worker bundles, so concurrent trials never share a CPU or GPU share. The trial borrows the
actors of the previous trial Tune ran in the same process (:data:`~distmeta.sweeps.shared_replicas.PROCESS_POOL`).

It reports at every meta-validation, with that step's checkpoint directory as it is (a
step directory carries the split and tokenizer: :mod:`distmeta.persistence.checkpoint`), and a
trial started with a checkpoint (PBT exploiting another trial, ``Tuner.restore``) continues
from it: ``Trainer(resume_from=...)``. The final report adds the meta-test.

A trial whose training diverges (a non-finite loss, gradient or validation metric) is a
result, not a crash: it reports the worst value of the search metric (``diverged: true``) at
each validation it had left, so ASHA stops it and PBT replaces it, and it ends normally.

Use with Tune directly::

    fn = tune.with_resources(tune.with_parameters(trainable, metric="val_neg_mse", mode="max"),
                             trial_resources(cfg))
    tune.Tuner(fn, param_space={"_base": base_dict, "algorithm.inner_lr": tune.loguniform(0.01, 1)}).fit()
"""
from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distmeta.config import Config, config_from_dict, set_key
from distmeta.errors import ConfigError, DistmetaError
from distmeta.sweeps.search import BASE_KEY
from distmeta.sweeps.shared_replicas import PROCESS_POOL

#: The search metric a diverged trial reports, signed to be the worst for the search's mode. Finite on
#: purpose: schedulers interpolate quantiles of reported values, and infinities make those NaN.
WORST = 1e300


class Diverged(DistmetaError):
    """Training left the finite numbers (a NaN/Inf loss, gradient or validation metric)."""


def worst(mode: str) -> float:
    """The worst value of a metric the search maximises (``mode="max"``) or minimises."""
    return -WORST if mode == "max" else WORST


def trial_resources(cfg: Config, driver_cpus: float = 1.0, driver_gpus: float = 0.0, strategy: str = "PACK"):
    """``PlacementGroupFactory([driver] + workers x [cpus_per_worker CPU, gpus_per_worker GPU])``.

    An all-zero driver bundle reserves nothing for the driver process (Tune drops it),
    and the worker bundles are the group's last ``resources.workers`` bundles either way.
    """
    from ray import tune

    from distmeta.distributed.plan import bundle

    res = cfg.resources
    if res.workers == "auto":
        raise ConfigError("resources.workers=auto cannot size a Tune trial; give resources.workers an integer")
    driver = {"CPU": driver_cpus, **({"GPU": driver_gpus} if driver_gpus else {})}
    worker = bundle(res.cpus_per_worker, res.gpus_per_worker)
    return tune.PlacementGroupFactory([driver] + [dict(worker) for _ in range(int(res.workers))], strategy=strategy)


def trial_config(config: dict[str, Any]) -> dict[str, Any]:
    """A Tune trial config -> a distmeta config dict: ``_base`` plus dotted (or nested section) overrides."""
    raw = copy.deepcopy(config.get(BASE_KEY) or {})
    for key, value in config.items():
        if key == BASE_KEY:
            continue
        if "." not in key and isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key].update(value)
        else:
            raw = set_key(raw, key, value)
    return raw


def val_metrics(step: int, val: dict[str, float], regression: bool) -> dict[str, Any]:
    """What a trial reports for one meta-validation (``val_loss``, ``val_neg_mse`` or ``val_accuracy``, CIs)."""
    out: dict[str, Any] = {"step": step, "val_loss": val["loss"], "val_loss_ci95": val.get("loss_ci95", float("nan"))}
    if regression:
        out["val_neg_mse"] = -val["loss"]
    if "accuracy" in val:
        out["val_accuracy"] = val["accuracy"]
        out["val_ci95"] = val["ci95"]
    return out


def meta_test_metrics(results: dict[str, Any]) -> dict[str, Any]:
    """A run's meta-test as flat report keys: ``test_<setting>_accuracy`` / ``_ci95`` or ``_mse`` / ``_mse_ci95``."""
    out: dict[str, Any] = {}
    for name, r in results.get("test", {}).items():
        if "accuracy" in r:
            out[f"test_{name}_accuracy"], out[f"test_{name}_ci95"] = r["accuracy"], r["ci95"]
        else:
            out[f"test_{name}_mse"], out[f"test_{name}_mse_ci95"] = r["loss"], r["loss_ci95"]
    return out


class TuneReporter:
    """Trainer callback: one ``ray.tune.report`` per meta-validation, with that step's checkpoint directory.

    ``run.checkpoint_every`` equals ``run.eval_every`` in a trial, so each validation is
    followed by a checkpoint of the same step; the report goes out then. The last one
    waits for the meta-test and carries it too.

    Args:
        trial_id: this trial's id (stored with each checkpoint: which trial saved it).
        origin: ``{"trial_id", "step"}`` of the checkpoint the trial started from, if any.
        report: the report function (default ``ray.tune.report``; tests pass their own).
    """

    def __init__(self, trial_id: str, origin: dict[str, Any] | None, report: Callable[..., None] | None = None) -> None:
        self.trial_id = trial_id
        self.origin = origin or {}
        self.pending: dict[str, Any] | None = None
        self.last_checkpoint: Path | None = None
        self.last_step = max(int(self.origin.get("step", 0)), 0)  # the last step reported (or started from)
        self.reports = 0
        self._report = report

    def __call__(self, event: str, trainer: Any, payload: dict) -> None:
        regression = trainer.cfg.data.is_regression
        if event == "validation":
            if not all(math.isfinite(v) for k, v in payload.items() if k in ("loss", "accuracy")):
                raise Diverged(f"step {trainer.step}: meta-validation is not finite ({payload})")
            self.pending = val_metrics(trainer.step, payload, regression)
        elif event == "checkpoint":
            self.last_checkpoint = Path(payload["path"])
            if self.pending and self.pending["step"] == trainer.step and trainer.step < trainer.cfg.train.steps:
                self.send(self.pending, self.last_checkpoint)
                self.pending = None
        elif event == "end":
            metrics = self.pending if self.pending and self.pending["step"] == trainer.step else None
            if metrics is None:
                has_val = trainer.evaluator is not None and trainer.evaluator.has_val()
                metrics = val_metrics(trainer.step, trainer.validate(), regression) if has_val else {"step": trainer.step}
            self.send({**metrics, **meta_test_metrics(payload), "final": True}, self.last_checkpoint)
            self.pending = None

    def _fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {**metrics, "trial_id_origin": self.origin.get("trial_id", ""),
                "restored_from_step": int(self.origin.get("step", -1)), "final": bool(metrics.get("final", False)),
                "diverged": bool(metrics.get("diverged", False)), **PROCESS_POOL.placement()}

    def send(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        """Report ``metrics`` with the checkpoint step directory as it is (Tune copies it into its storage)."""
        from ray import tune

        checkpoint = None
        if checkpoint_dir is not None:
            checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir))
            checkpoint.set_metadata({"trial_id": self.trial_id, "step": int(metrics["step"])})
        (self._report or tune.report)(self._fields(metrics), checkpoint=checkpoint)
        self.last_step = int(metrics["step"])
        self.reports += 1

    def diverged(self, cfg: Config, metric: str, mode: str, why: str) -> None:
        """Report the worst ``metric`` at every validation the trial had left (no checkpoint), the last as final."""
        every, end = cfg.run.eval_every, cfg.train.steps
        steps = list(range((self.last_step // every + 1) * every, end + 1, every))
        if not steps or steps[-1] != end:
            steps.append(end)
        for step in steps:
            self.send({"step": step, metric: worst(mode), "diverged": True, "diverged_because": why[:300],
                       "final": step == end}, None)


def _trial_cfg(config: dict[str, Any], run_dir: Path | str) -> Config:
    raw = trial_config(config)
    raw = set_key(raw, "run.dir", str(run_dir))
    raw = set_key(raw, "run.progress", False)
    eval_every = int((raw.get("run") or {}).get("eval_every", 100))
    return config_from_dict(set_key(raw, "run.checkpoint_every", eval_every))


def _run_dir(run_root: str, trial_id: str) -> Path | str:
    """``run_root/<trial id>``: a path, or a URI when the search stores on an object store (``s3://...``)."""
    from distmeta.persistence.storage import join_uri

    return join_uri(run_root, trial_id) if "://" in run_root else Path(run_root) / trial_id


def trainable(config: dict[str, Any], run_root: str | None = None, metric: str = "val_accuracy",
              mode: str = "max") -> None:
    """The Ray Tune function trainable: one distributed meta-training run per trial.

    Args:
        config: ``{"_base": distmeta config dict, "algorithm.inner_lr": 0.1, ...}``.
        run_root: the run directory is ``run_root/<trial id>`` (shared or object storage), or ``run/``
            in the trial's working directory.
        metric: the search metric (a diverged trial reports its worst value).
        mode: ``max`` or ``min``.
    """
    from ray import tune

    from distmeta.training.reduce import NonFiniteError
    from distmeta.training.trainer import Trainer

    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    run_dir = _run_dir(run_root, trial_id) if run_root else Path(ctx.get_trial_dir()) / "run"
    cfg = _trial_cfg(config, run_dir)
    checkpoint = tune.get_checkpoint()
    origin = None
    if checkpoint is not None:
        origin = checkpoint.get_metadata() or {"trial_id": "", "step": -1}
    reporter = TuneReporter(trial_id, origin)
    with checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext() as start:
        try:
            with Trainer(cfg, overwrite=True, resume_from=start, callbacks=[reporter],
                         backend_factory=PROCESS_POOL.factory) as trainer:
                trainer.fit()
        except (NonFiniteError, Diverged) as err:
            reporter.diverged(cfg, metric, mode, f"{type(err).__name__}: {err}")


__all__ = ["WORST", "Diverged", "TuneReporter", "trainable", "trial_config", "trial_resources", "worst"]
