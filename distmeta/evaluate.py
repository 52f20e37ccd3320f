"""Meta-test: mean accuracy and 95% confidence half-width over held-out episodes."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from distmeta.tasks.specs import TaskSpec

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
