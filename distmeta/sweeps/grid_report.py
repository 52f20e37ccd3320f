"""The table and plot of a finished grid (:mod:`distmeta.sweeps.grid`).

``write_table`` writes ``grid.csv``, ``grid.md`` (meta-test accuracy ± 95% CI per cell)
and ``grid.json``; ``plot`` draws the metric against the grid's last axis (ticks at its values,
evenly spaced, whatever they are), one line per combination of the other axes, with the CI as
error bars and, dashed in the same colour, that line's value before meta-training (the
frozen encoder's nearest-centroid accuracy, ``before_meta_training`` in a cell's results). MSE is
on a log axis (one diverged cell would flatten every other line on a linear one); error bars stop
at zero (and 100 % for accuracy). Diverged cells (:func:`mark_diverged`) are marked in the table
and labelled in the plot::

    files = write_table(grid, rows, grid.experiment_path)
    plot(grid, rows, grid.experiment_path / PLOT_FILE)
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from distmeta.sweeps.grid_spec import Grid

CSV_FILE, MD_FILE, JSON_FILE, PLOT_FILE = "grid.csv", "grid.md", "grid.json", "grid.png"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def mark_diverged(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Set each row's ``diverged``: why its cell diverged (a non-finite value, an MSE far above the other
    cells', :func:`~distmeta.sweeps.output.outliers`), or ``""``. Returns ``rows``."""
    from distmeta.sweeps.output import outliers

    for metric in {r["metric"] for r in rows}:
        values = {r["cell"]: float(r["value"]) for r in rows if r["metric"] == metric}
        found = outliers(values, error=metric == "mse")
        for r in rows:
            if r["metric"] == metric:
                r["diverged"] = f"{metric} {found[r['cell']]}" if r["cell"] in found else ""
    return rows


def write_table(grid: Grid, rows: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    """``grid.csv``, ``grid.md`` and ``grid.json`` in ``out``; diverged cells marked (:func:`mark_diverged`)."""
    out.mkdir(parents=True, exist_ok=True)
    mark_diverged(rows)
    axes = list(grid.spec.axes)
    cols = [*axes, "setting", "metric", "value", "ci95", "before", "diverged", "episodes", "steps", "seconds",
            "cached", "started", "ended", "node"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (json.dumps(r[k]) if isinstance(r.get(k), (list, dict)) else r.get(k, "")) for k in cols})
    (out / CSV_FILE).write_text(buf.getvalue())

    pct = rows and rows[0]["metric"] == "accuracy"
    head = [*axes, "setting", "meta-test accuracy (%)" if pct else "meta-test MSE", "before meta-training", "episodes",
            "note"]
    lines = [f"# {grid.spec.name}", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        scale = 100.0 if r["metric"] == "accuracy" else 1.0
        value = f"{scale * r['value']:.2f} ± {scale * r['ci95']:.2f}"
        before = f"{scale * r['before']:.2f}" if r.get("before") is not None else ""
        note = f"DIVERGED: {r['diverged']}" if r.get("diverged") else ""
        lines.append("| " + " | ".join([*(_fmt(r[a]) for a in axes), r["setting"], value, before,
                                         str(r["episodes"]), note]) + " |")
    lines += ["", f"± is the 95% confidence half-width (1.96 · std / √episodes). Base: {grid.where}."]
    (out / MD_FILE).write_text("\n".join(lines) + "\n")
    (out / JSON_FILE).write_text(json.dumps({"axes": grid.spec.axes, "rows": rows}, indent=2, default=str))
    return {"csv": out / CSV_FILE, "md": out / MD_FILE, "json": out / JSON_FILE}


def _series(grid: Grid, rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by the values of every axis but the last, labelled ``ways=3``; ordered along the last axis."""
    axes = list(grid.spec.axes)
    x_key, series_keys = axes[-1], axes[:-1]
    order = [json.dumps(v, sort_keys=True, default=str) for v in grid.spec.axes[x_key]]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        label = ", ".join(f"{k.split('.')[-1]}={r[k]}" for k in series_keys)
        groups.setdefault(label, []).append(r)
    for group in groups.values():
        group.sort(key=lambda r: order.index(json.dumps(r[x_key], sort_keys=True, default=str)))
    return groups


def plot(grid: Grid, rows: list[dict[str, Any]], path: Path) -> Path:
    """Draw :func:`figure` to a PNG.

    Args:
        grid: the grid.
        rows: one row per cell.
        path: the PNG to write.

    Returns:
        ``path``.
    """
    import matplotlib.pyplot as plt

    fig = figure(grid, rows)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def figure(grid: Grid, rows: list[dict[str, Any]]) -> Any:
    """Meta-test metric against the last axis, one line per combination of the other axes.

    Args:
        grid: the grid (its axes give the x ticks, in their order).
        rows: one row per cell (:func:`distmeta.sweeps.grid.run_cells`).

    Returns:
        A matplotlib Figure (Agg). The CI is drawn as error bars; each line's ``before`` values (before
        meta-training) as a dashed line of the same colour, where the cells have them.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key = list(grid.spec.axes)[-1]
    x_values = grid.spec.axes[x_key]
    positions = {json.dumps(v, sort_keys=True, default=str): i for i, v in enumerate(x_values)}
    scale = 100.0 if rows[0]["metric"] == "accuracy" else 1.0
    # Classification: the frozen encoder's nearest-centroid accuracy; regression: the initial model adapted.
    baseline = "frozen-encoder baseline" if scale == 100.0 else "before meta-training"
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    groups = _series(grid, rows)
    for label, group in groups.items():
        xs = [positions[json.dumps(r[x_key], sort_keys=True, default=str)] for r in group]
        ys = [scale * r["value"] for r in group]
        line = ax.errorbar(xs, ys, yerr=_clipped_bars(ys, [scale * r["ci95"] for r in group], scale),
                           marker="o", capsize=4, label=label or "meta-trained")
        before = [(x, scale * r["before"]) for x, r in zip(xs, group) if r.get("before") is not None]
        if before:
            ax.plot([x for x, _ in before], [y for _, y in before], linestyle="--", marker="x",
                    color=line[0].get_color(), alpha=0.8, label=f"{label + ': ' if label else ''}{baseline}")
        for x, y, r in zip(xs, ys, group):
            if r.get("diverged") and math.isfinite(y):
                ax.annotate("diverged", (x, y), color="red", fontsize=7, xytext=(4, 4), textcoords="offset points")
    if scale != 100.0:  # MSE spans decades (and a diverged cell more): a log axis keeps every line readable
        ax.set_yscale("log", nonpositive="clip")
    ax.set_xticks(range(len(x_values)), [_tick(v) for v in x_values])
    ax.set_xlim(-0.5, len(x_values) - 0.5)
    ax.set_xlabel(x_key)
    ax.set_ylabel("meta-test accuracy (%)" if scale == 100.0 else "meta-test MSE")
    ax.set_title(f"{grid.spec.name}: meta-test ± 95% CI (dashed: {baseline})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _clipped_bars(ys: list[float], cis: list[float], scale: float) -> list[list[float]]:
    """``[lows, highs]`` of asymmetric error bars: never below zero, nor above 100 % for accuracy."""
    top = 100.0 if scale == 100.0 else math.inf
    lows = [min(ci, y) if math.isfinite(y) else 0.0 for y, ci in zip(ys, cis)]
    highs = [min(ci, top - y) if math.isfinite(y) else 0.0 for y, ci in zip(ys, cis)]
    return [[max(v, 0.0) for v in lows], [max(v, 0.0) for v in highs]]


def _tick(value: Any) -> str:
    """An axis value as a tick label: ``5``, ``0.1-1.0`` for a range, cut to 24 characters."""
    if isinstance(value, (list, tuple)):
        return "-".join(_fmt(v) for v in value)[:24]
    return _fmt(value)[:24]


__all__ = ["CSV_FILE", "JSON_FILE", "MD_FILE", "PLOT_FILE", "figure", "mark_diverged", "plot", "write_table"]
