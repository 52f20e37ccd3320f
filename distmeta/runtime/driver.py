"""The driver: sample tasks, dispatch groups, reduce in group order, update, log, checkpoint.

The same loop runs in-process (``workers: 0``) and over Ray actors; only the backend
differs. Groups are fixed by the meta-batch, not by the worker count, and their
results are summed in group order, so every backend gives the same parameters.
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from distmeta.config import Config, dump_config
from distmeta.errors import CheckpointError, DistmetaError
from distmeta.evaluate import add_error_reduction, finetuned_summary, format_results, run_episodes, setting_name
from distmeta.experiment import Experiment, prepare_experiment
from distmeta.files import CONFIG_FILE, RESULTS_FILE
from distmeta.optim import OuterOptimizer
from distmeta.runtime.faults import with_faults
from distmeta.runtime.selection import BestTracker
from distmeta.tasks.materialise import chunks
from distmeta.tasks.specs import TaskSpec, task_key
from distmeta.worker import DTYPES, GroupResult, all_finite


def make_backend(cfg: Config, exp: Experiment):
    """In-process worker for ``workers: 0``, a Ray actor pool otherwise."""
    if cfg.workers == 0:
        from distmeta.runtime.local import LocalBackend

        return LocalBackend(cfg, exp.worker_args())
    from distmeta.runtime.actors import RayBackend

    return RayBackend(cfg, exp.worker_args())


def reduce_groups(results: list[GroupResult], names: list[str], dtype: torch.dtype,
                  out: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Sum group gradients in group order: the fixed reduction that makes runs reproducible.

    ``out`` (e.g. :meth:`OuterOptimizer.grad_buffers`) receives the sum in place, which
    spares a fresh allocation per parameter per step. Arrays from Ray's object store are
    read-only; they are only read here.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        if out is None:
            total = {n: torch.from_numpy(results[0].grad[n]).to(dtype, copy=True) for n in names}
        else:
            total = {n: out[n].copy_(torch.from_numpy(results[0].grad[n])) for n in names}
        for r in results[1:]:
            for n in names:
                total[n] += torch.from_numpy(r.grad[n]).to(dtype)
    return total


class NonFiniteError(DistmetaError, FloatingPointError):
    """A task's loss or meta-gradient is NaN/Inf under ``nan_policy: raise``; the message names the tasks and actors."""


class NonFiniteWarning(RuntimeWarning):
    """Tasks (``skip_task``) or a whole step (``skip_step``) left out because of a NaN/Inf."""


def check_tasks(results: list[GroupResult], specs: list[TaskSpec], step: int) -> None:
    """Every task of the meta-batch came back exactly once, in order: never a silently smaller meta-batch."""
    got = [k for r in results for k in r.tasks]
    want = [task_key(s) for s in specs]
    if got != want:
        lost = sorted(set(want) - set(got))
        twice = sorted({k for k in got if got.count(k) > 1})
        raise DistmetaError(f"step {step}: the backend returned {len(got)} task results for a meta-batch of "
                            f"{len(want)} (missing {lost[:8]}, repeated {twice[:8]}); nothing was applied")


def run_dir_of(path: Path) -> Path:
    """The run directory of a run dir, its ``checkpoints/`` dir or one ``step_*`` dir."""
    path = path.resolve()
    if path.name.startswith("step_"):
        return path.parent.parent
    if path.name == "checkpoints":
        return path.parent
    return path


#: ``callback(event, trainer, payload)``; events: "step" (payload: {"step": the meta-batch index,
#: "tasks": the task keys reduced, "skipped": those left out, "results": the GroupResults, "row": the
#: metrics}), "validation" (payload: val metrics), "checkpoint" (payload: {"path": Path}), "end"
#: (payload: the test results). Ray Tune hooks in here.
Callback = Callable[[str, "Trainer", dict], None]


class Trainer:
    """Meta-trains one configuration: ``Trainer(cfg).fit()``, then ``.evaluate()``.

    Use it as a context manager (or call :meth:`close`) so Ray actors are released.
    """

    def __init__(self, cfg: Config, *, resume: bool = False, overwrite: bool = False,
                 callbacks: list[Callback] | None = None,
                 resume_from: str | Path | None = None) -> None:
        self.cfg = cfg
        self.callbacks = list(callbacks or [])
        self.resume = resume
        self.resume_from = Path(resume_from) if resume_from is not None else None
        if resume and resume_from is not None:
            raise DistmetaError("resume (from run.dir) and resume_from (a checkpoint elsewhere) exclude each other")
        self.overwrite = overwrite
        self.run_dir = Path(cfg.run.dir)
        self.exp: Experiment | None = None
        self.backend: Any = None
        self.optimizer: OuterOptimizer | None = None
        self.step = 0
        self.best = BestTracker(self.run_dir, cfg.train.patience)
        self.pretrained = False  # the supervised stage (pretrain:) has run; kept in checkpoints
        self.stopped_early = False  # train.patience ran out
        self._val_calls = 0  # a fresh evaluation feature-cache key per validated parameter set
        self._locked = False  # holds the run directory's writer lock (runtime.rundir)

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        """Prepare the run directory, data, backend and optimiser (restoring them on resume)."""
        from distmeta.runtime.checkpoint import load_checkpoint, write_run_files
        from distmeta.runtime.rundir import lock_run_dir, prepare_run_dir, write_text_atomic

        self.run_dir = prepare_run_dir(self.cfg.run.dir, resume=self.resume, overwrite=self.overwrite)
        self.best.path = self.run_dir / self.best.path.name
        lock_run_dir(self.run_dir, owner=self)  # one writer per run directory; released by close()
        self._locked = True
        # Verified and safely deserialised before any worker starts: a bad checkpoint costs no actors.
        source = self.resume_from if self.resume_from is not None else (self.run_dir if self.resume else None)
        ckpt = load_checkpoint(source) if source is not None else None
        if self.resume_from is not None:
            write_run_files(ckpt, self.run_dir)  # the split and tokenizer it was trained with
        self._build(reuse_saved=ckpt is not None)
        write_text_atomic(self.run_dir / CONFIG_FILE, dump_config(self.cfg))
        if ckpt is not None:
            self._restore(ckpt)

    def _build(self, reuse_saved: bool) -> None:
        cfg = self.cfg
        self.exp = prepare_experiment(cfg, self.run_dir, reuse_saved=reuse_saved)
        self.backend = with_faults(make_backend(cfg, self.exp), cfg)
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

    @classmethod
    def from_checkpoint(cls, path: str | Path, overrides: list[str] | None = None, *,
                        trust_config: bool = False) -> "Trainer":
        """A trainer holding a saved run's parameters, ready for :meth:`evaluate` (``distmeta eval``).

        The checkpoint's config supplies the model and its tasks only; Ray, run, fault and
        worker settings come from ``overrides`` over the schema defaults, and a data or
        model path it names must be given in ``overrides`` too
        (:func:`distmeta.security.config_from_saved`), unless ``trust_config``.
        """
        from distmeta.runtime.checkpoint import load_checkpoint
        from distmeta.security import config_from_saved

        ckpt = load_checkpoint(path)
        run_dir = run_dir_of(Path(path))
        cfg = config_from_saved(ckpt.config, list(overrides or []), trust=trust_config,
                                source=f"the config in {ckpt.path}", pins={"run.dir": str(run_dir)})
        trainer = cls(cfg)
        trainer.run_dir = run_dir
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
        """Meta-train for ``train.steps`` steps, checkpointing and validating on the way; then meta-test."""
        from tqdm.auto import tqdm

        from distmeta.runtime.metrics import MetricsLogger

        self._setup()
        cfg, exp, optimizer = self.cfg, self.exp, self.optimizer
        assert exp is not None and optimizer is not None
        sampler = exp.sampler("train")
        names = optimizer.names
        dtype = DTYPES[cfg.dtype]
        logger = MetricsLogger(self.run_dir, tensorboard=True, resume_step=self.step)
        if cfg.pretrain.steps and not self.pretrained and self.step == 0:
            self._pretrain(logger)
        bar = tqdm(total=cfg.train.steps, initial=self.step, disable=not cfg.run.progress, desc="meta-train", unit="step")
        upcoming: dict[int, list] = {}  # the next step's specs, sampled while the workers compute this one

        def sample_next(step: int) -> None:
            if step < cfg.train.steps:
                upcoming[step] = sampler.batch(step, cfg.train.meta_batch)

        try:
            while self.step < cfg.train.steps:
                t0 = time.perf_counter()
                specs = upcoming.pop(self.step, None) or sampler.batch(self.step, cfg.train.meta_batch)
                groups = [specs[r.start : r.stop] for r in chunks(len(specs), cfg.algorithm.group_size)]
                meta = self._meta_numpy()
                t1 = time.perf_counter()
                results = self.backend.compute(meta, groups, version=self.step,
                                               overlap=lambda step=self.step + 1: sample_next(step))
                t2 = time.perf_counter()
                check_tasks(results, specs, self.step)
                skipped = self._nan_policy(results, len(specs))  # raises under nan_policy=raise
                used = [r for r in results if len(r.skipped) < len(r.tasks)] if len(skipped) < len(specs) else []
                opt_stats: dict[str, float] = {}
                if used:
                    grad = reduce_groups(used, names, dtype, out=optimizer.grad_buffers())
                    mean_grad = {n: g.div_(len(specs) - len(skipped)) for n, g in grad.items()}  # the optimiser's own buffers
                    if not all_finite(mean_grad.values()):  # finite groups, non-finite sum: never applied
                        raise NonFiniteError(f"step {self.step}: the summed meta-gradient is not finite although every "
                                             f"task's is (overflow); stopped before the update")
                    opt_stats = optimizer.step(mean_grad)
                self.step += 1
                t3 = time.perf_counter()

                left_out = set(skipped)
                row: dict[str, float] = {"lr": optimizer.lr, **opt_stats, "skipped_tasks": len(skipped)}
                for metric in ("loss", "accuracy"):
                    values = [x for r in results if metric in r.metrics
                              for k, x in zip(r.tasks, r.metrics[metric]) if k not in left_out]
                    if values:
                        row[metric] = float(np.mean(values))
                step_s = t3 - t0
                compute_s = [r.compute_s for r in results]
                row.update(step_time=step_s, tasks_per_s=len(specs) / step_s,
                           dispatch_s=t2 - t1, driver_s=(t1 - t0) + (t3 - t2),
                           driver_share=((t1 - t0) + (t3 - t2)) / step_s, max_group_compute_s=max(compute_s))
                per_actor: dict[str, float] = {}
                for r in results:
                    key = f"actor{r.extra.get('actor', 0)}_compute_s"
                    per_actor[key] = per_actor.get(key, 0.0) + r.compute_s
                row.update(per_actor)
                if hasattr(self.backend, "last_step"):
                    row["retries"] = self.backend.last_step.retries
                if self.step % cfg.run.log_every == 0 or self.step == cfg.train.steps:
                    logger.log(self.step, row, prefix="train/")
                bar.update(1)
                bar.set_postfix({k: f"{row[k]:.3f}" for k in ("loss", "accuracy") if k in row})
                self._emit("step", {"step": self.step - 1, "results": results, "skipped": skipped, "row": row,
                                    "tasks": [k for r in used for k in r.tasks if k not in left_out]})

                if cfg.run.eval_every and self.step % cfg.run.eval_every == 0 and self._has_val():
                    val = self.validate()
                    logger.log(self.step, val, prefix="val/")
                    bar.write(f"step {self.step}: " + ", ".join(f"val {k} {v:.4f}" for k, v in val.items() if k != "episodes"))
                    self._emit("validation", val)
                    if self.best.update(self.step, val, optimizer.params):
                        bar.write(f"step {self.step}: no better meta-validation in {self.best.bad} validations "
                                  f"(train.patience); stopping, best at step {self.best.step}")
                        self.stopped_early = True
                if cfg.run.checkpoint_every and self.step % cfg.run.checkpoint_every == 0:
                    self._emit("checkpoint", {"path": self.save_checkpoint()})
                if self.stopped_early:
                    break
            bar.close()
            self._select_best(bar)
            self._emit("checkpoint", {"path": self.save_checkpoint()})
            results = self.evaluate()
            (self.run_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2))
            for name, r in results["test"].items():
                logger.log(self.step, {k: v for k, v in r.items()}, prefix=f"test/{name}/")
            self._emit("end", results)
            return results
        finally:
            bar.close()
            logger.close()

    def _pretrain(self, logger: Any) -> None:
        """The supervised stage (:mod:`distmeta.pretrain`): its selected encoder becomes the meta-parameters."""
        from distmeta.pretrain import Pretrainer

        assert self.optimizer is not None and self.exp is not None
        stage = Pretrainer(self.cfg, self.exp, self.validate, self.run_dir)
        chosen = stage.run(self.meta_params, lambda step, row: logger.log(step, row, prefix="pretrain/"),
                           progress=self.cfg.run.progress)
        self.optimizer.load_params(chosen)
        self.pretrained = True
        print(f"pretrain: best meta-validation {stage.best.score:.4f} at step {stage.best.step}; "
              f"episodic meta-training starts from it", flush=True)
        self._emit("checkpoint", {"path": self.save_checkpoint()})

    def _select_best(self, bar: Any) -> None:
        """With ``train.select_best``, put the best meta-validated parameters back before the final checkpoint."""
        if not self.cfg.train.select_best:
            return
        best = self.best.best_params()
        if best is None:
            bar.write("train.select_best: no meta-validation ran; keeping the last parameters")
            return
        assert self.optimizer is not None
        self.optimizer.load_params(best)
        bar.write(f"train.select_best: meta-testing the parameters of step {self.best.step} "
                  f"(meta-validation {self.best.score:.4f})")

    def _nan_policy(self, results: list[GroupResult], n_tasks: int) -> list[tuple[int, int]]:
        """The task keys this step leaves out for a NaN/Inf ([] on the usual path); raises under ``nan_policy: raise``."""
        bad = [(k, r.extra.get("actor", 0)) for r in results for k in r.bad_tasks]
        if not bad:
            return []
        policy = self.cfg.nan_policy
        where = ", ".join(f"(step {s}, task {t}) on actor {a}" for (s, t), a in bad[:8])
        where += f" and {len(bad) - 8} more" if len(bad) > 8 else ""
        if policy == "raise":
            raise NonFiniteError(
                f"non-finite loss or meta-gradient in task {where}; nan_policy=raise: stopped before the update, "
                f"the parameters are those after {self.step} steps (nan_policy=skip_task or skip_step goes on past such tasks)")
        if policy == "skip_task" and len(bad) < n_tasks:
            if any(r.skipped != r.bad_tasks for r in results):  # the worker recomputed its groups without them
                raise NonFiniteError(f"nan_policy=skip_task: a worker did not recompute its group without task {where}")
            warnings.warn(f"nan_policy=skip_task: leaving out task {where}; the meta-batch mean divides by "
                          f"{n_tasks - len(bad)} tasks", NonFiniteWarning, stacklevel=3)
            return [k for k, _ in bad]
        warnings.warn(f"nan_policy={policy}: skipping step {self.step} (no update) for task {where}",
                      NonFiniteWarning, stacklevel=3)
        return [k for r in results for k in r.tasks]

    def _emit(self, event: str, payload: dict) -> None:
        for callback in self.callbacks:
            callback(event, self, payload)

    # ------------------------------------------------------------------ evaluation
    def _has_val(self) -> bool:
        return self.cfg.data.is_regression or bool(self.exp and self.exp.split and self.exp.split.val)

    def validate(self, meta: dict[str, Any] | None = None) -> dict[str, float]:
        """Meta-validation on ``eval.val_episodes`` episodes of the training shape (of ``meta``, default the current)."""
        assert self.exp is not None
        sampler = self.exp.sampler("val")
        self._val_calls += 1
        fn = self._eval_fn(self._meta_numpy() if meta is None else meta, f"val-{self.step}-{self._val_calls}")
        return run_episodes(fn, sampler, self.cfg.eval.val_episodes, self.cfg.eval.batch)

    def _eval_fn(self, meta: dict[str, Any], cache_key: str, baseline: bool = False):
        """Evaluate episode groups on the backend; ``cache_key`` names this parameter set for feature reuse."""
        steps = self.cfg.inner_steps_eval
        return lambda groups: self.backend.evaluate(meta, groups, steps, cache_key=cache_key, baseline=baseline)

    def evaluate(self, split: str = "test", episodes: int | None = None,
                 settings: list[tuple[int, int]] | None = None, baseline: bool | None = None) -> dict[str, Any]:
        """Accuracy ± 95% CI per (ways, shots) on held-out classes; with the before-training baseline on the same episodes."""
        assert self.exp is not None, "no experiment prepared"
        cfg = self.cfg
        episodes = episodes or cfg.eval.episodes
        baseline = cfg.eval.baseline if baseline is None else baseline
        if cfg.data.is_regression:
            settings = [(1, cfg.data.shots)]
        settings = settings or [tuple(s) for s in cfg.eval.settings]  # type: ignore[misc]
        metas = {split: self._meta_numpy()}
        if baseline:  # the encoder before meta-training, used the standard way (distmeta.baselines)
            metas["before_meta_training"] = {n: t.numpy() for n, t in self.initial_meta.items()}
        out: dict[str, Any] = {"step": self.step, "split": split}
        for key, meta in metas.items():
            table = {}
            for ways, shots in settings:
                sampler = self.exp.sampler(split, ways=ways, shots=shots, queries=cfg.eval.queries)
                name = setting_name(ways, shots) if not cfg.data.is_regression else f"{shots}shot"
                finetuned = key == split and cfg.eval.finetune_head and not cfg.data.is_regression
                as_baseline = (key != split or finetuned) and not cfg.data.is_regression
                fn = self._eval_fn(meta, f"{key}-{self.step}", baseline=as_baseline)
                label = f"{'baseline' if key != split else 'meta-test'} {name}"
                table[name] = run_episodes(fn, sampler, episodes, cfg.eval.batch, progress=cfg.run.progress, desc=label)
                if finetuned:
                    table[name] = finetuned_summary(table[name])
            out["test" if key == split else key] = table
        if "before_meta_training" in out:
            add_error_reduction(out["test"], out["before_meta_training"])
        print(format_results(out["test"], out.get("before_meta_training")), flush=True)
        return out

    # ------------------------------------------------------------------ persistence
    def save_checkpoint(self) -> Path:
        from distmeta.runtime.checkpoint import Checkpoint, save_checkpoint

        assert self.optimizer is not None
        ckpt = Checkpoint(
            step=self.step,
            meta_params=self.meta_params,
            optimizer_state=self.optimizer.state_dict(),
            state={"sampler": {"seed": self.cfg.seed, "next_step": self.step}, "best": self.best.state(),
                   "pretrained": self.pretrained},
            rng={"torch": torch.get_rng_state()},
            config=self.cfg.model_dump(mode="json"),
        )
        try:
            return save_checkpoint(self.run_dir, ckpt, keep=self.cfg.run.keep_checkpoints)
        except CheckpointError as e:
            from distmeta.runtime.checkpoint import latest_checkpoint

            kept = latest_checkpoint(self.run_dir)
            raise CheckpointError(
                f"{e}; training stopped at step {self.step}. The newest intact checkpoint is "
                f"{kept if kept is not None else 'none'}; fix the cause, then `distmeta train --resume {self.run_dir}`"
            ) from e

    def close(self) -> None:
        """Release the workers (Ray actors) and this run directory's writer lock."""
        from distmeta.runtime.rundir import unlock_run_dir

        if self.backend is not None:
            self.backend.close()
            self.backend = None
        if self._locked:
            unlock_run_dir(self.run_dir)
            self._locked = False
