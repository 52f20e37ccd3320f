"""The table and plot of a finished grid (:mod:`distmeta.sweeps.grid`).

``write_table`` writes ``grid.csv``, ``grid.md`` (meta-test accuracy ± 95% CI per cell)
and ``grid.json``; ``plot`` draws the metric against the grid's last axis, one line per
combination of the other axes, with the CI as error bars::

    files = write_table(grid, rows, grid.experiment_path)
    plot(grid, rows, grid.experiment_path / PLOT_FILE)
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from distmeta.sweeps.grid import Grid

CSV_FILE, MD_FILE, JSON_FILE, PLOT_FILE = "grid.csv", "grid.md", "grid.json", "grid.png"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_table(grid: Grid, rows: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    """``grid.csv``, ``grid.md`` and ``grid.json`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    axes = list(grid.spec.axes)
    cols = [*axes, "setting", "metric", "value", "ci95", "before", "episodes", "steps", "seconds", "cached"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (json.dumps(r[k]) if isinstance(r.get(k), (list, dict)) else r.get(k, "")) for k in cols})
    (out / CSV_FILE).write_text(buf.getvalue())

    pct = rows and rows[0]["metric"] == "accuracy"
    head = [*axes, "setting", "meta-test accuracy (%)" if pct else "meta-test MSE", "before meta-training", "episodes"]
    lines = [f"# {grid.spec.name}", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        scale = 100.0 if r["metric"] == "accuracy" else 1.0
        value = f"{scale * r['value']:.2f} ± {scale * r['ci95']:.2f}"
        before = f"{scale * r['before']:.2f}" if r.get("before") is not None else ""
        lines.append("| " + " | ".join([*(_fmt(r[a]) for a in axes), r["setting"], value, before,
                                         str(r["episodes"])]) + " |")
    lines += ["", f"± is the 95% confidence half-width (1.96 · std / √episodes). Base: {grid.where}."]
    (out / MD_FILE).write_text("\n".join(lines) + "\n")
    (out / JSON_FILE).write_text(json.dumps({"axes": grid.spec.axes, "rows": rows}, indent=2, default=str))
    return {"csv": out / CSV_FILE, "md": out / MD_FILE, "json": out / JSON_FILE}


def plot(grid: Grid, rows: list[dict[str, Any]], path: Path) -> Path:
    """Meta-test metric against the last axis, one line per combination of the other axes, CI as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = list(grid.spec.axes)
    x_key, series_keys = axes[-1], axes[:-1]
    x_values = grid.spec.axes[x_key]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x_values)
    scale = 100.0 if rows[0]["metric"] == "accuracy" else 1.0
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(json.dumps(r[k], default=str) for k in series_keys), []).append(r)
    for key, group in groups.items():
        xs = [r[x_key] if numeric else x_values.index(r[x_key]) for r in group]
        label = ", ".join(f"{k.split('.')[-1]}={json.loads(v)}" for k, v in zip(series_keys, key)) or None
        ax.errorbar(xs, [scale * r["value"] for r in group], yerr=[scale * r["ci95"] for r in group],
                    marker="o", capsize=4, label=label)
    if not numeric:
        ax.set_xticks(range(len(x_values)), [str(v)[:24] for v in x_values], rotation=15)
    ax.set_xlabel(x_key)
    ax.set_ylabel("meta-test accuracy (%)" if scale == 100.0 else "meta-test MSE")
    ax.set_title(f"{grid.spec.name}: meta-test ± 95% CI")
    ax.grid(alpha=0.3)
    if len(groups) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["CSV_FILE", "JSON_FILE", "MD_FILE", "PLOT_FILE", "plot", "write_table"]
