"""Meta-validation and meta-test of parameter sets on a backend: held-out episodes, accuracy ± 95% CI, baselines.

The Trainer owns one :class:`Evaluator`; ``distmeta eval`` reaches it through
:meth:`~distmeta.runtime.driver.Trainer.evaluate`. Episodes are sampled from the
experiment's ``val`` or ``test`` classes, evaluated in groups of ``eval.batch`` on the
backend, and summarised by :func:`distmeta.evaluate.run_episodes`. The meta-test scores
the encoder before meta-training on the same episodes, used the standard way
(:mod:`distmeta.baselines`), and reports the error reduction against it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from distmeta.config import Config
from distmeta.evaluate import EvalFn, add_error_reduction, finetuned_summary, format_results, run_episodes, setting_name
from distmeta.experiment import Experiment
from distmeta.runtime.backend import Backend

#: The results key of the baseline: the encoder before meta-training.
BEFORE = "before_meta_training"


class Evaluator:
    """Scores meta-parameters on held-out episodes through ``backend``.

    Args:
        cfg: the run's config (its ``eval`` section, ``inner_steps_eval``, ``run.progress``).
        exp: the prepared experiment (samplers of the ``val`` and ``test`` classes).
        backend: computes the per-episode metrics.
    """

    def __init__(self, cfg: Config, exp: Experiment, backend: Backend) -> None:
        self.cfg, self.exp, self.backend = cfg, exp, backend
        self._val_calls = 0  # a fresh feature-cache key per validated parameter set

    def has_val(self) -> bool:
        """Whether there is anything to meta-validate on (regression always; classification with val classes)."""
        return self.cfg.data.is_regression or bool(self.exp.split and self.exp.split.val)

    def episodes_fn(self, meta: dict[str, Any], cache_key: str, baseline: bool = False) -> EvalFn:
        """Evaluate episode groups on the backend; ``cache_key`` names this parameter set for feature reuse."""
        steps = self.cfg.inner_steps_eval
        return lambda groups: self.backend.evaluate(meta, groups, steps, cache_key=cache_key, baseline=baseline)

    def validate(self, meta: dict[str, Any], step: int) -> dict[str, float]:
        """Meta-validation of ``meta`` on ``eval.val_episodes`` episodes of the training shape.

        With several sources (``data.mixture``) each source's episodes are summarised too
        (``source<c>/accuracy`` ...), so a source that lags shows in TensorBoard and ``metrics.jsonl``.
        """
        self._val_calls += 1
        fn = self.episodes_fn(meta, f"val-{step}-{self._val_calls}")
        return run_episodes(fn, self.exp.sampler("val"), self.cfg.eval.val_episodes, self.cfg.eval.batch,
                            by_source=len(self.exp.sources) > 1)

    def meta_test(self, meta: dict[str, Any], initial: dict[str, np.ndarray] | None, step: int, split: str = "test",
                  episodes: int | None = None, settings: list[tuple[int, int]] | None = None) -> dict[str, Any]:
        """Accuracy ± 95% CI per (ways, shots) on held-out classes, with the baseline on the same episodes.

        Args:
            meta: the meta-trained parameters.
            initial: the parameters before meta-training (the baseline's encoder), or None for no baseline.
            step: the training step, recorded in the results and in feature-cache keys.
            split: ``test`` or ``val`` classes.
            episodes: episodes per setting (default ``eval.episodes``).
            settings: ``(ways, shots)`` pairs (default ``eval.settings``; sinusoid: ``data.shots``).

        Returns:
            ``{"step", "split", "test": {setting: metrics}, "before_meta_training": {...}}``, the
            latter with the error reduction added to ``test``.
        """
        cfg = self.cfg
        if cfg.data.is_regression:
            settings = [(1, cfg.data.shots)]
        settings = settings or [tuple(s) for s in cfg.eval.settings]  # type: ignore[misc]
        metas = {split: meta, **({BEFORE: initial} if initial is not None else {})}
        out: dict[str, Any] = {"step": step, "split": split}
        for key, params in metas.items():
            table = {}
            for ways, shots in settings:
                name, table[name] = self._setting(params, key, key == split, ways, shots, split, step,
                                                  episodes or cfg.eval.episodes)
            out["test" if key == split else key] = table
        if BEFORE in out:
            add_error_reduction(out["test"], out[BEFORE])
        print(format_results(out["test"], out.get(BEFORE)), flush=True)
        return out

    def _setting(self, params: dict[str, Any], key: str, trained: bool, ways: int, shots: int, split: str, step: int,
                 episodes: int) -> tuple[str, dict[str, float]]:
        """One setting's name and summary, for the trained parameters or the baseline."""
        cfg = self.cfg
        regression = cfg.data.is_regression
        sampler = self.exp.sampler(split, ways=ways, shots=shots, queries=cfg.eval.queries)
        name = f"{shots}shot" if regression else setting_name(ways, shots)
        finetuned = trained and cfg.eval.finetune_head and not regression
        as_baseline = (not trained or finetuned) and not regression
        fn = self.episodes_fn(params, f"{key}-{step}", baseline=as_baseline)
        label = f"{'meta-test' if trained else 'baseline'} {name}"
        summary = run_episodes(fn, sampler, episodes, cfg.eval.batch, progress=cfg.run.progress, desc=label)
        return name, finetuned_summary(summary) if finetuned else summary
