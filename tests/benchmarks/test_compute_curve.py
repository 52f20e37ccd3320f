"""benchmarks.quality.compute_curve: the budget table reads the quality reports it is given, and nothing else."""
from __future__ import annotations

import argparse
import json

import pytest

from benchmarks.quality.compute_curve import (
    best_validation,
    curve_rows,
    main,
    parse_budget,
    render_curve_table,
)


def _run(corpus: str, acc1: float, acc5: float, steps: int, asked: int | None, run_dir: str = "") -> dict:
    block = lambda a: {"accuracy": a, "ci95": 0.01, "accuracy_ci95": 0.01}  # noqa: E731
    command = ["distmeta", "train"] + ([f"train.steps={asked}"] if asked else [])
    return {"config_name": "default", "corpus": corpus, "status": "ok", "run_dir": run_dir, "wall_s": 61.0,
            "command": command, "results": {"step": steps, "test": {"5way_1shot": block(acc1), "5way_5shot": block(acc5)},
                                             "before_meta_training": {"5way_1shot": block(0.5)}}}


def _report(*runs: dict) -> dict:
    return {"episodes": 600, "date": "2026-12-07T00:00:00", "git_commit": "abc", "runs": list(runs)}


def test_rows_follow_the_budgets_and_the_gain_is_against_the_smallest(tmp_path):
    metrics = tmp_path / "run3"
    metrics.mkdir()
    lines = [{"step": 0, "val/accuracy": 0.9}, {"step": 25, "val/accuracy": 0.6}, {"step": 50, "val/accuracy": 0.7},
             {"step": 75, "val/accuracy": 0.7}, {"step": 80, "train/loss": 1.0}]
    (metrics / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    one = _report(_run("a", 0.80, 0.90, 125, None), _run("b", 0.40, 0.60, 200, None),
                  {"config_name": "default", "corpus": "c", "status": "failed", "wall_s": 1.0})
    three = _report(_run("b", 0.45, 0.61, 600, 600, str(metrics)), _run("a", 0.79, 0.91, 150, 600))
    rows = curve_rows([(3.0, three), (1.0, one)], "default")
    # corpora in the order the smallest budget lists them, budgets ascending within each
    assert [(r["corpus"], r["multiplier"]) for r in rows] == [("a", 1.0), ("a", 3.0), ("b", 1.0), ("b", 3.0)]
    # step 0 is the starting point, not a candidate; ties go to the earlier step
    assert rows[3]["best_val"] == (50, 0.7) and rows[2]["best_val"] is None
    table = render_curve_table(rows, base_steps=200)
    b3 = next(line for line in table.splitlines() if line.startswith("| b | 3x"))
    assert "| 600 (600) | 70.00 (50) | 45.00 ± 1.00 | +5.00 | 61.00 ± 1.00 | +1.00 |" in b3
    a3 = next(line for line in table.splitlines() if line.startswith("| a | 3x"))
    assert "| 600 (150) |" in a3 and "| -1.00 |" in a3 and "| +1.00 |" in a3
    a1 = next(line for line in table.splitlines() if line.startswith("| a | 1x"))
    assert "| 200 (125) | — | 80.00 ± 1.00 | — |" in a1
    assert "| c |" not in table, "a failed run has no row"


def test_bad_budgets_are_refused_naming_the_argument(tmp_path):
    assert parse_budget("3=x/quality.json") == (3.0, __import__("pathlib").Path("x/quality.json"))
    for bad in ("x/quality.json", "0=x.json", "three=x.json", "3="):
        with pytest.raises(argparse.ArgumentTypeError, match="MULTIPLIER=quality.json"):
            parse_budget(bad)
    with pytest.raises(SystemExit):
        main(["--budget", f"1={tmp_path / 'missing.json'}", "--out", str(tmp_path)])
    assert best_validation(None) is None and best_validation(str(tmp_path / "gone")) is None
