"""What more meta-training compute buys: held-out accuracy at 1x, 3x, 10x ... the default's steps, per corpus.

Each budget is one run of :mod:`benchmarks.quality.table` with ``--set train.steps=<m x the config's
steps>`` into its own folder (the cosine schedule follows ``train.steps``, so it is stretched;
``train.patience`` and ``run.eval_every`` stay as shipped, so a run that stops improving stops
early, as a user's would)::

    python -m benchmarks.quality.table --configs configs/default.yaml --set train.steps=600 \\
        --out benchmarks/results/quality/compute-3x
    python -m benchmarks.quality.compute_curve --budget 1=benchmarks/results/quality/quality.json \\
        --budget 3=benchmarks/results/quality/compute-3x/quality.json [--config default] \\
        [--out benchmarks/results/quality/compute_curve]

This script runs nothing: it reads those ``quality.json`` files (and, where the run directory
is still there, its ``metrics.jsonl`` for the step of the best meta-validation) and writes
``compute_curve.md`` (one row per corpus and budget) and ``compute_curve.png`` (accuracy ± 95 %
CI against the budget, one panel per setting, the frozen encoder dashed).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.quality.table import PLOTTED, minutes, pct

ROOT = Path(__file__).resolve().parents[2]


def parse_budget(item: str) -> tuple[float, Path]:
    """``3=path/quality.json`` -> (3.0, path)."""
    mult, sep, path = item.partition("=")
    try:
        value = float(mult)
    except ValueError:
        value = -1.0
    if not sep or value <= 0 or not path:
        raise argparse.ArgumentTypeError(f"--budget {item!r}: expected MULTIPLIER=quality.json, e.g. 3=out/quality.json")
    return value, Path(path)


def best_validation(run_dir: str | None) -> tuple[int, float] | None:
    """(step, accuracy) of the best meta-validation in a run's ``metrics.jsonl``, or None when it is gone."""
    path = Path(run_dir or "") / "metrics.jsonl"
    if not run_dir or not path.is_file():
        return None
    vals = [(int(r["step"]), float(r["val/accuracy"])) for r in map(json.loads, path.read_text().splitlines())
            if "val/accuracy" in r and int(r.get("step", 0)) > 0]
    return max(vals, key=lambda sv: (sv[1], -sv[0])) if vals else None


def curve_rows(budgets: list[tuple[float, dict[str, Any]]], config: str) -> list[dict[str, Any]]:
    """One row per (corpus, budget) of the ``config`` runs that finished, budgets ascending.

    Args:
        budgets: (multiplier, a ``quality.json`` report) pairs.
        config: the ``config_name`` the rows are for (``default``).

    Returns:
        Rows with the corpus, multiplier, steps asked and run, the best validation, each
        setting's test block and its frozen-encoder block, and the wall time.
    """
    rows = []
    for mult, report in sorted(budgets, key=lambda b: b[0]):
        for run in report["runs"]:
            if run["config_name"] != config or run.get("status") != "ok":
                continue
            res = run["results"]
            rows.append({"corpus": run["corpus"], "multiplier": mult, "steps_run": res.get("step"),
                         "steps_asked": _steps_asked(run), "best_val": best_validation(run.get("run_dir")),
                         "test": res["test"], "frozen": res.get("before_meta_training", {}),
                         "wall_s": run["wall_s"]})
    order = list(dict.fromkeys(r["corpus"] for r in rows))
    return sorted(rows, key=lambda r: (order.index(r["corpus"]), r["multiplier"]))


def _steps_asked(run: dict[str, Any]) -> int | None:
    """``train.steps`` as the run's command set it (the last ``train.steps=`` wins), else None (the config's)."""
    asked = [a.split("=", 1)[1] for a in run.get("command", []) if a.startswith("train.steps=")]
    return int(asked[-1]) if asked else None


def render_curve_table(rows: list[dict[str, Any]], base_steps: int) -> str:
    """The Markdown table: corpus, budget, steps, best validation, accuracy per setting, the gain over 1x, wall time."""
    head = ["corpus", "budget", "train.steps (run)", "best val (step)"]
    for _, title in PLOTTED:
        head += [f"{title} ± CI", f"{title} vs 1x"]
    lines = ["| " + " | ".join(head + ["wall time"]) + " |", "|" + " --- |" * (len(head) + 1)]
    first: dict[tuple[str, str], float] = {}
    for r in rows:
        asked = r["steps_asked"] or base_steps
        best = r["best_val"]
        cells = [r["corpus"], f"{r['multiplier']:g}x", f"{asked} ({r['steps_run']})",
                 f"{100 * best[1]:.2f} ({best[0]})" if best else "—"]
        for setting, _ in PLOTTED:
            test = r["test"].get(setting)
            if test is None:
                cells += ["—", "—"]
                continue
            acc = 100 * test["accuracy"]
            ref = first.setdefault((r["corpus"], setting), acc)
            cells += [pct(test, "accuracy"), f"{acc - ref:+.2f}" if r["multiplier"] != rows_min(rows, r) else "—"]
        lines.append("| " + " | ".join(cells + [minutes(r["wall_s"])]) + " |")
    return "\n".join(lines) + "\n"


def rows_min(rows: list[dict[str, Any]], row: dict[str, Any]) -> float:
    """The smallest budget measured on ``row``'s corpus (its gains are measured against that one)."""
    return min(r["multiplier"] for r in rows if r["corpus"] == row["corpus"])


def render_curve_plot(rows: list[dict[str, Any]], path: Path, note: str) -> None:
    """Accuracy ± CI against the budget (log x), one line per corpus, its frozen encoder dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = list(dict.fromkeys(r["corpus"] for r in rows))
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(6 * len(PLOTTED), 4.8), squeeze=False)
    for ax, (setting, title) in zip(axes[0], PLOTTED):
        for i, corpus in enumerate(corpora):
            mine = [r for r in rows if r["corpus"] == corpus and setting in r["test"]]
            if not mine:
                continue
            colour = plt.get_cmap("tab10")(i % 10)
            xs = [r["multiplier"] for r in mine]
            ax.errorbar(xs, [100 * r["test"][setting]["accuracy"] for r in mine],
                        yerr=[100 * r["test"][setting]["ci95"] for r in mine], marker="o", capsize=4,
                        color=colour, label=corpus)
            frozen = mine[0]["frozen"].get(setting)
            if frozen:
                ax.axhline(100 * frozen["accuracy"], color=colour, ls="--", lw=1, alpha=0.7)
        ax.set_xscale("log")
        ax.minorticks_off()  # only the budgets measured are ticked
        ax.set_xticks(sorted({r["multiplier"] for r in rows}), [f"{m:g}x" for m in sorted({r["multiplier"] for r in rows})])
        ax.set_title(f"held-out {title}")
        ax.set_xlabel("meta-training budget (x the default's train.steps)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(title="corpus (dashed: frozen encoder)", fontsize=9)
    fig.suptitle(note, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", dest="budgets", action="append", type=parse_budget, required=True,
                    metavar="MULT=quality.json", help="one per budget; 1= is the shipped config's own run")
    ap.add_argument("--config", default="default", help="the config_name of the runs to compare")
    ap.add_argument("--base-steps", type=int, default=200, help="the config's own train.steps (the 1x budget)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/quality/compute_curve")
    args = ap.parse_args(argv)
    budgets = []
    for mult, path in args.budgets:
        if not path.is_file():
            ap.error(f"--budget {mult:g}={path}: no such file (run benchmarks.quality.table first)")
        budgets.append((mult, json.loads(path.read_text())))
    rows = curve_rows(budgets, args.config)
    if not rows:
        ap.error(f"no finished runs of config {args.config!r} in those files")
    args.out.mkdir(parents=True, exist_ok=True)
    dates = ", ".join(f"{m:g}x: {r.get('date', '?')[:10]} (commit {r.get('git_commit', '?')[:12]})" for m, r in budgets)
    table = render_curve_table(rows, args.base_steps)
    episodes = sorted({r["episodes"] for _, r in budgets})
    note = f"{'/'.join(map(str, episodes))} episodes per setting, 95% CI; {dates}"
    (args.out / "compute_curve.md").write_text(table + "\n" + note + "\n")
    render_curve_plot(rows, args.out / "compute_curve.png", note)
    print(table + "\n" + note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
