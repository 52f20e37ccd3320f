"""The driver: sample tasks, dispatch groups, reduce in group order, update, log, checkpoint.

The same loop runs in-process (``resources.workers: 0``) and over Ray actors; only the backend
differs. Groups are fixed by the meta-batch, not by the worker count, and their
results are summed in group order, so every backend gives the same parameters.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from distmeta.config import Config, dump_config
from distmeta.errors import DistmetaError
from distmeta.experiment import Experiment, prepare_experiment
from distmeta.files import CONFIG_FILE, RESULTS_FILE
from distmeta.groups import cut
from distmeta.models import DTYPES
from distmeta.optim import OuterOptimizer
from distmeta.tasks.specs import TaskSpec
from distmeta.training.backend import Backend, BackendFactory, make_backend
from distmeta.training.evaluation import Evaluator
from distmeta.training.metrics import source_row, step_row
from distmeta.training.reduce import reduce_and_update
from distmeta.training.report import announce, log_results, validation_line
from distmeta.training.selection import BestTracker, record_validation, restore_best

#: ``callback(event, trainer, payload)``; events: "step" (payload: {"step": the meta-batch index,
#: "tasks": the task keys reduced, "skipped": those left out, "results": the GroupResults, "row": the
#: metrics}), "validation" (payload: val metrics), "checkpoint" (payload: {"path": Path}), "end"
#: (payload: the test results). Ray Tune hooks in here.
Callback = Callable[[str, "Trainer", dict], None]


class Trainer:
    """Meta-trains one configuration: ``Trainer(cfg).fit()``, then ``.evaluate()``.

    Use it as a context manager (or call :meth:`close`) so Ray actors are released.

    Args:
        cfg: the run's config.
        resume: continue the run in ``cfg.run.dir`` from its last checkpoint.
        overwrite: start afresh in a ``run.dir`` that holds another run.
        callbacks: ``callback(event, trainer, payload)`` hooks (see :data:`Callback`).
        resume_from: a checkpoint step directory anywhere (a Ray Tune trial checkpoint) to continue
            from in ``run.dir``, which must be new or come with ``overwrite``; the split and tokenizer
            the checkpoint carries are written there first.
        backend_factory: ``factory(cfg, experiment) -> Backend``; default
            :func:`~distmeta.training.backend.make_backend` (in-process or Ray, from the config).
    """

    def __init__(self, cfg: Config, *, resume: bool = False, overwrite: bool = False,
                 callbacks: list[Callback] | None = None, resume_from: str | Path | None = None,
                 backend_factory: BackendFactory | None = None) -> None:
        self.cfg = cfg
        self.backend_factory: BackendFactory = backend_factory if backend_factory is not None else make_backend
        self.callbacks = list(callbacks or [])
        self.resume = resume
        self.resume_from = Path(resume_from) if resume_from is not None else None
        if resume and resume_from is not None:
            raise DistmetaError("resume (from run.dir) and resume_from (a checkpoint elsewhere) exclude each other")
        self.overwrite = overwrite
        self.run_dir = Path(cfg.run.dir)
        self.exp: Experiment | None = None
        self.backend: Backend | None = None
        self.optimizer: OuterOptimizer | None = None
        self.step = 0
        self.best = BestTracker(self.run_dir, cfg.train.patience)
        self.pretrained = False  # the supervised stage (pretrain:) has run; kept in checkpoints
        self.stopped_early = False  # train.patience ran out
        # The group size in use (algorithm.group_size, or what `auto` chose): kept in checkpoints so a resumed
        # run cuts its meta-batches into the same groups, and so sums them to the same bits.
        self.group_size: int | None = None
        self.evaluator: Evaluator | None = None
        self.location: Any = None  # the run directory, local or remote, and its writer lock (persistence.location)

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        """Prepare the run directory, data, backend and optimiser (restoring them on resume)."""
        from distmeta.files import write_text_atomic
        from distmeta.persistence.checkpoint import load_checkpoint, write_run_files
        from distmeta.persistence.location import open_run

        self._preflight()  # a plan that cannot fit is refused before the run directory is touched
        # One writer per run directory (released by close()); a remote run.dir is checked and its
        # resume files fetched into a local cache here, before any worker starts.
        self.location = open_run(self.cfg.run.dir, resume=self.resume, overwrite=self.overwrite, owner=self)
        self.run_dir = self.location.local
        self.best.path = self.run_dir / self.best.path.name
        # Verified and safely deserialised before any worker starts: a bad checkpoint costs no actors.
        source = self.resume_from if self.resume_from is not None else (self.run_dir if self.resume else None)
        ckpt = load_checkpoint(source) if source is not None else None
        if self.resume_from is not None:
            write_run_files(ckpt, self.run_dir)  # the split and tokenizer it was trained with
        self._build(reuse_saved=ckpt is not None)
        write_text_atomic(self.run_dir / CONFIG_FILE, dump_config(self.cfg))
        if ckpt is not None:
            self._restore(ckpt)

    def _preflight(self) -> None:
        """Refuse Ray actors the private Ray on this machine cannot hold, before any cache or Ray start."""
        if self.backend_factory is make_backend and self.cfg.resources.workers != 0:
            from distmeta.distributed.preflight import check_local_fit

            check_local_fit(self.cfg.resources, self.cfg.ray)

    def _build(self, reuse_saved: bool) -> None:
        cfg = self.cfg
        self.exp = prepare_experiment(cfg, self.run_dir, reuse_saved=reuse_saved)
        self.backend = self.backend_factory(cfg, self.exp)
        self.evaluator = Evaluator(cfg, self.exp, self.backend)
        self.initial_meta = {n: t.clone() for n, t in self.backend.initial_meta.items()}
        self.optimizer = OuterOptimizer(cfg.outer, self.initial_meta, seed=cfg.seed, total_steps=cfg.train.steps)

    def _restore(self, ckpt: Any) -> None:
        assert self.optimizer is not None
        self.optimizer.load_params(ckpt.meta_params)
        self.optimizer.load_state_dict(ckpt.optimizer_state)
        torch.set_rng_state(ckpt.rng["torch"])
        self.step = ckpt.step
        self.best.load_state(ckpt.state.get("best"))
        self.pretrained = bool(ckpt.state.get("pretrained", False))
        saved = ckpt.state.get("group_size")
        if saved is not None and self.cfg.algorithm.group_size == "auto":  # the groups the run was using
            self.group_size = int(saved)

    @classmethod
    def from_checkpoint(cls, path: str | Path, overrides: list[str] | None = None, *,
                        trust_config: bool = False, came_from: str | None = None) -> "Trainer":
        """A trainer holding a saved run's parameters, ready for :meth:`evaluate` (``distmeta eval``).

        The checkpoint's config is checked as :func:`~distmeta.persistence.reopen.open_saved_run` says.
        """
        from distmeta.persistence.reopen import open_saved_run

        cfg, run_dir, ckpt = open_saved_run(path, overrides, trust_config=trust_config, came_from=came_from)
        trainer = cls(cfg)
        trainer.run_dir = run_dir
        trainer._preflight()
        trainer._build(reuse_saved=True)
        trainer._restore(ckpt)
        return trainer

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def meta_params(self) -> dict[str, torch.Tensor]:
        assert self.optimizer is not None, "call fit() first"
        return {n: p.detach().clone() for n, p in self.optimizer.params.items()}

    def _meta_numpy(self) -> dict[str, np.ndarray]:
        assert self.optimizer is not None
        return {n: p.detach().cpu().numpy() for n, p in self.optimizer.params.items()}

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        """Meta-train for ``train.steps`` steps, checkpointing and validating on the way; then meta-test.

        Returns:
            The meta-test results (:meth:`evaluate`), also written to ``results.json``.
        """
        from distmeta.progress import progress_bar, set_line_interval
        from distmeta.training.metrics import MetricsLogger

        self._setup()
        cfg, exp = self.cfg, self.exp
        set_line_interval(cfg.run.progress_every)
        assert exp is not None
        announce(cfg, exp, self.backend, self._has_val())  # what was loaded, where it runs; useless settings
        sampler = exp.sampler("train")
        logger = MetricsLogger(self.run_dir, tensorboard=True, resume_step=self.step, sync=self.location.sync)
        if cfg.pretrain.steps and not self.pretrained and self.step == 0:
            self._pretrain(logger)
        if self.step == 0 and cfg.run.eval_every and self._has_val():  # the curve's starting point
            self._validate_step(logger, print)
        bar = progress_bar(total=cfg.train.steps, initial=self.step, disable=not cfg.run.progress,
                           desc="meta-train", unit="step")
        upcoming: dict[int, list] = {}  # the next step's specs, sampled while the workers compute this one

        def sample_next(step: int) -> None:
            if step < cfg.train.steps:
                upcoming[step] = sampler.batch(step, cfg.train.meta_batch)

        try:
            while self.step < cfg.train.steps and not self.stopped_early:
                specs = upcoming.pop(self.step, None) or sampler.batch(self.step, cfg.train.meta_batch)
                row = self._train_step(specs, overlap=lambda step=self.step + 1: sample_next(step))
                if self.step % cfg.run.log_every == 0 or self.step == cfg.train.steps:
                    logger.log(self.step, row, prefix="train/")
                bar.update(1)
                bar.set_postfix({k: f"{row[k]:.3f}" for k in ("loss", "accuracy") if k in row})
                if cfg.run.eval_every and self.step % cfg.run.eval_every == 0 and self._has_val():
                    self._validate_step(logger, bar.write)
                if cfg.run.checkpoint_every and self.step % cfg.run.checkpoint_every == 0:
                    self._emit("checkpoint", {"path": self.save_checkpoint()})
            bar.close()
            return self._finish(logger, bar.write)
        finally:
            bar.close()
            logger.close()

    def groups_of(self, specs: list[TaskSpec]) -> list[list[TaskSpec]]:
        """The meta-batch cut into groups of ``algorithm.group_size``: fixed by the meta-batch, not the worker count."""
        size = self.group_size
        if size is None:  # group_size auto / memory_budget_mb: measured once, on the first step's tasks
            from distmeta.groups.sizing import resolve_group_size

            assert self.backend is not None
            meta, backend = self._meta_numpy(), self.backend
            size = self.group_size = resolve_group_size(self.cfg, lambda g: backend.group_peak(meta, g), specs)
        return cut(specs, size)

    def _train_step(self, specs: list[TaskSpec], overlap: Callable[[], Any]) -> dict[str, float]:
        """One step: dispatch, check, reduce in group order, update; returns the step's metrics row."""
        assert self.backend is not None and self.optimizer is not None
        optimizer = self.optimizer
        t0 = time.perf_counter()
        meta = self._meta_numpy()
        t1 = time.perf_counter()
        results = self.backend.compute(meta, self.groups_of(specs), version=self.step, overlap=overlap)
        t2 = time.perf_counter()
        skipped, update, opt_stats = reduce_and_update(results, specs, self.step, self.cfg.nan_policy, optimizer,
                                                       DTYPES[self.cfg.dtype])  # nan_policy=raise raises here
        self.step += 1
        t3 = time.perf_counter()
        row = {"lr": optimizer.lr, **opt_stats, **step_row(results, skipped, len(specs), (t0, t1, t2, t3)),
               "retries": self.backend.stats().retries}
        if self.exp is not None and len(self.exp.sources) > 1:  # a mixture: what each source gave and scored
            row.update(source_row(specs, results))
        left_out = set(skipped)
        self._emit("step", {"step": self.step - 1, "results": results, "skipped": skipped, "row": row,
                            "tasks": [k for r in results for k in r.tasks if k not in left_out] if update else []})
        return row

    def _validate_step(self, logger: Any, write: Callable[[str], None]) -> None:
        """Meta-validate now; log, tell the callbacks, keep the best parameters, and stop on ``train.patience``.

        Step 0 (before meta-training) is logged and printed only: a starting point, not a candidate.
        """
        assert self.optimizer is not None
        val = self.validate()
        logger.log(self.step, val, prefix="val/")
        if self.step == 0:
            write(validation_line(0, val, None))
            return
        self._emit("validation", val)
        self.stopped_early = record_validation(self.best, self.step, val, self.optimizer.params, write)

    def _finish(self, logger: Any, write: Callable[[str], None]) -> dict[str, Any]:
        """After the last step: the selected parameters, a final checkpoint, the meta-test and its results file."""
        self._select_best(write)
        self._emit("checkpoint", {"path": self.save_checkpoint()})
        results = self.evaluate()
        (self.run_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2))
        log_results(logger, self.step, results)
        self._emit("end", results)
        return results

    def _pretrain(self, logger: Any) -> None:
        """The supervised stage (:mod:`distmeta.training.pretrain`): its selected encoder becomes the meta-parameters."""
        from distmeta.training.pretrain import Pretrainer

        assert self.optimizer is not None and self.exp is not None
        stage = Pretrainer(self.cfg, self.exp, self.validate, self.run_dir)
        chosen = stage.run(self.meta_params, lambda step, row: logger.log(step, row, prefix="pretrain/"),
                           progress=self.cfg.run.progress)
        self.optimizer.load_params(chosen)
        self.pretrained = True
        print(f"pretrain: best meta-validation {stage.best.score:.4f} at step {stage.best.step}; "
              f"episodic meta-training starts from it", flush=True)
        self._emit("checkpoint", {"path": self.save_checkpoint()})

    def _select_best(self, write: Callable[[str], None]) -> None:
        """With ``train.select_best``, put the best meta-validated parameters back before the final checkpoint."""
        if self.cfg.train.select_best:
            assert self.optimizer is not None
            restore_best(self.best, self.optimizer, write)

    def _emit(self, event: str, payload: dict) -> None:
        for callback in self.callbacks:
            callback(event, self, payload)

    # ------------------------------------------------------------------ evaluation
    def _has_val(self) -> bool:
        return self.evaluator is not None and self.evaluator.has_val()

    def validate(self, meta: dict[str, Any] | None = None) -> dict[str, float]:
        """Meta-validation on ``eval.val_episodes`` episodes of the training shape (of ``meta``, default the current)."""
        assert self.evaluator is not None, "no experiment prepared"
        return self.evaluator.validate(self._meta_numpy() if meta is None else meta, self.step)

    def evaluate(self, split: str = "test", episodes: int | None = None,
                 settings: list[tuple[int, int]] | None = None, baseline: bool | None = None) -> dict[str, Any]:
        """Accuracy ± 95% CI per (ways, shots) on held-out classes; with the before-training baseline on the same episodes.

        See :meth:`~distmeta.training.evaluation.Evaluator.meta_test`; ``baseline`` defaults to ``eval.baseline``.
        """
        assert self.evaluator is not None, "no experiment prepared"
        baseline = self.cfg.eval.baseline if baseline is None else baseline
        initial = {n: t.numpy() for n, t in self.initial_meta.items()} if baseline else None
        return self.evaluator.meta_test(self._meta_numpy(), initial, self.step, split, episodes, settings)

    # ------------------------------------------------------------------ persistence
    def save_checkpoint(self) -> Path:
        """Checkpoint the run now (parameters, optimiser, sampler and selection state, RNG, config); returns its step directory."""
        from distmeta.persistence.checkpoint import Checkpoint
        from distmeta.persistence.location import save_to

        assert self.optimizer is not None
        ckpt = Checkpoint(
            step=self.step,
            meta_params=self.meta_params,
            optimizer_state=self.optimizer.state_dict(),
            state={"sampler": {"seed": self.cfg.seed, "next_step": self.step}, "best": self.best.state(),
                   "pretrained": self.pretrained, "group_size": self.group_size},
            rng={"torch": torch.get_rng_state()},
            config=self.cfg.model_dump(mode="json"),
        )
        return save_to(self.location, self.run_dir, ckpt, self.cfg.run.keep_checkpoints)

    def close(self) -> None:
        """Release the workers (Ray actors) and this run directory's writer lock (uploading a remote run's files)."""
        if self.backend is not None:
            self.backend.close()
            self.backend = None
        if self.location is not None:
            self.location.close()
            self.location = None
