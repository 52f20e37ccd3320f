"""Meta-validation and meta-test: held-out episodes, accuracy ± 95% CI, and the baselines on the same episodes.

The Trainer owns one :class:`Evaluator`; ``distmeta eval`` reaches it through
:meth:`~distmeta.training.trainer.Trainer.evaluate`. Episodes are sampled from the
experiment's ``val`` or ``test`` classes, evaluated in groups of ``eval.batch`` on the
backend, and summarised by :func:`run_episodes` (mean and 1.96 standard errors, the usual
few-shot reporting). The meta-test scores the encoder before meta-training on the same
episodes, used the standard way (:mod:`distmeta.baselines`), and reports the error
reduction against it.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from distmeta.config import Config
from distmeta.experiment import Experiment
from distmeta.tasks.specs import TaskSpec
from distmeta.training.backend import Backend

EvalFn = Callable[[list[list[TaskSpec]]], list[dict[str, list[float]]]]


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and 1.96 * standard error (the usual few-shot reporting)."""
    arr = np.asarray(values, dtype=np.float64)
    if len(arr) < 2:
        return float(arr.mean()), float("nan")
    return float(arr.mean()), float(1.96 * arr.std(ddof=1) / math.sqrt(len(arr)))


def setting_name(ways: int, shots: int) -> str:
    return f"{ways}way_{shots}shot"


#: Episode groups sent to the backend per call: enough to keep every actor busy, few enough
#: that the progress bar moves during a long meta-test.
GROUPS_PER_CALL = 8


def run_episodes(evaluate: EvalFn, sampler, episodes: int, chunk: int, progress: bool = False,
                 desc: str = "meta-test", by_source: bool = False) -> dict[str, float]:
    """Evaluate ``episodes`` episodes (groups of ``chunk``) and summarise every metric (mean, 95% CI).

    Episode ``i`` is ``sampler.sample(0, i)`` whatever the grouping, so every parameter set
    (meta-trained, baselines) is scored on the same episodes.

    Args:
        evaluate: per-episode metrics of episode groups (a backend's ``evaluate``).
        sampler: draws the episodes.
        episodes: how many.
        chunk: episodes per group.
        progress: show a progress bar.
        desc: the bar's label.
        by_source: also summarise each ``data.mixture`` source's episodes, as ``source<c>/<metric>``
            (and ``source<c>/episodes``).

    Returns:
        ``episodes``, each metric's mean and ``<metric>_ci95``, ``ci95`` (accuracy's).
    """
    from distmeta.progress import progress_bar

    groups = [[sampler.sample(0, i) for i in range(s, min(s + chunk, episodes))] for s in range(0, episodes, chunk)]
    per_metric: dict[str, list[float]] = {}
    with progress_bar(total=episodes, desc=desc, unit="ep", disable=not progress, leave=False) as bar:
        for start in range(0, len(groups), GROUPS_PER_CALL):
            calls = groups[start : start + GROUPS_PER_CALL]
            for group, result in zip(calls, evaluate(calls)):
                for k, v in result.items():
                    per_metric.setdefault(k, []).extend(v)
                    if by_source:
                        for spec, x in zip(group, v):
                            per_metric.setdefault(f"source{spec.source}/{k}", []).append(x)
            bar.update(sum(len(g) for g in calls))
    out: dict[str, float] = {"episodes": float(episodes)}
    for k, v in per_metric.items():
        mean, ci = mean_ci95(v)
        out[k] = mean
        out[f"{k}_ci95"] = ci
        if by_source and k.startswith("source") and k.endswith(("/loss", "/accuracy")):
            out[f"{k.rsplit('/', 1)[0]}/episodes"] = float(len(v))
    if "accuracy" in out:
        out["ci95"] = out["accuracy_ci95"]
    return out


def finetuned_summary(summary: dict[str, float]) -> dict[str, float]:
    """A baseline-mode summary of the meta-trained encoder, read as its meta-test with a fine-tuned head.

    ``accuracy`` becomes the fine-tuned head's (``eval.finetune_head``); the nearest-centroid
    accuracy stays beside it as ``accuracy_centroid``.
    """
    out = {"episodes": summary["episodes"],
           "accuracy": summary["accuracy_finetune"], "accuracy_ci95": summary["accuracy_finetune_ci95"],
           "accuracy_centroid": summary["accuracy"], "accuracy_centroid_ci95": summary["accuracy_ci95"]}
    out.update({k: v for k, v in summary.items() if k.startswith("accuracy_transductive")})
    out["ci95"] = out["accuracy_ci95"]
    return out


def add_error_reduction(results: dict[str, dict[str, float]], baseline: dict[str, dict[str, float]]) -> None:
    """Store, per setting, the meta-trained model's relative error reduction against each baseline accuracy."""
    from distmeta.baselines import error_reduction

    for name, r in results.items():
        b = baseline.get(name, {})
        if "accuracy" not in r or "accuracy" not in b:
            continue
        r["error_reduction"] = error_reduction(r["accuracy"], b["accuracy"])
        if "accuracy_finetune" in b:
            r["error_reduction_vs_finetune"] = error_reduction(r["accuracy"], b["accuracy_finetune"])
        if "accuracy_transductive" in r and "accuracy_transductive" in b:
            r["error_reduction_transductive"] = error_reduction(r["accuracy_transductive"], b["accuracy_transductive"])


def _reduction(value: float) -> str:
    """``+13.2%``, or ``n/a`` when undefined (the baseline made no errors)."""
    return "n/a" if math.isnan(value) else f"{100 * value:+.1f}%"


def _pct(r: dict[str, float], key: str) -> str:
    return f"{100 * r[key]:.2f} ± {100 * r[f'{key}_ci95']:.2f}%"


def format_results(results: dict[str, dict[str, float]], baseline: dict[str, dict[str, float]] | None = None) -> str:
    """A small table: setting, meta-trained accuracy ± CI, the baselines on the same episodes, error reduction."""
    lines = []
    for name, r in results.items():
        if "accuracy" in r:
            line = f"{name:>14}: meta-trained {_pct(r, 'accuracy')}"
            if "accuracy_centroid" in r:
                line += f" (fine-tuned head; nearest centroid {_pct(r, 'accuracy_centroid')})"
            if baseline and name in baseline:
                b = baseline[name]
                if "accuracy_finetune" in b:
                    line += (f" | frozen encoder, cosine centroid {_pct(b, 'accuracy')}"
                             f" (Euclidean {_pct(b, 'accuracy_euclidean')})"
                             f" | fine-tuned head {_pct(b, 'accuracy_finetune')}")
                else:
                    line += f" | before meta-training {_pct(b, 'accuracy')}"
                if "error_reduction" in r:
                    line += f" | error reduction vs frozen {_reduction(r['error_reduction'])}"
                if "error_reduction_transductive" in r:
                    line += (f" | transductive: meta-trained {_pct(r, 'accuracy_transductive')},"
                             f" frozen {_pct(b, 'accuracy_transductive')},"
                             f" error reduction {_reduction(r['error_reduction_transductive'])}")
        else:
            line = f"{name:>14}: mse {r['loss']:.4f} ± {r['loss_ci95']:.4f}"
            if baseline and name in baseline:
                line += f"   (before meta-training {baseline[name]['loss']:.4f} ± {baseline[name]['loss_ci95']:.4f})"
        lines.append(line + f"  over {int(r['episodes'])} episodes")
    return "\n".join(lines)


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
