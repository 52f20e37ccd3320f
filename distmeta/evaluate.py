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


def run_episodes(evaluate: EvalFn, sampler, episodes: int, chunk: int) -> dict[str, float]:
    """Evaluate ``episodes`` episodes (chunks of ``chunk``) and summarise every metric."""
    groups = [[sampler.sample(0, i) for i in range(s, min(s + chunk, episodes))] for s in range(0, episodes, chunk)]
    per_metric: dict[str, list[float]] = {}
    for result in evaluate(groups):
        for k, v in result.items():
            per_metric.setdefault(k, []).extend(v)
    out: dict[str, float] = {"episodes": float(episodes)}
    for k, v in per_metric.items():
        mean, ci = mean_ci95(v)
        out[k] = mean
        out[f"{k}_ci95"] = ci
    if "accuracy" in out:
        out["ci95"] = out["accuracy_ci95"]
    return out


def format_results(results: dict[str, dict[str, float]], baseline: dict[str, dict[str, float]] | None = None) -> str:
    """A small table: setting, meta-trained accuracy ± CI, and the before-training baseline."""
    lines = []
    for name, r in results.items():
        if "accuracy" in r:
            line = f"{name:>14}: accuracy {100 * r['accuracy']:.2f} ± {100 * r['ci95']:.2f}%"
            if baseline and name in baseline:
                b = baseline[name]
                line += f"   (before meta-training {100 * b['accuracy']:.2f} ± {100 * b['ci95']:.2f}%)"
        else:
            line = f"{name:>14}: mse {r['loss']:.4f} ± {r['loss_ci95']:.4f}"
            if baseline and name in baseline:
                line += f"   (before meta-training {baseline[name]['loss']:.4f} ± {baseline[name]['loss_ci95']:.4f})"
        lines.append(line + f"  over {int(r['episodes'])} episodes")
    return "\n".join(lines)
