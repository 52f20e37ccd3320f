"""Issue 26 item 4: sweep output is the result; Ray's own output goes to a log file without escape codes;
diverged trials and cells are marked; the grid plot reads (log axis for MSE, error bars clipped at zero)."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from distmeta.sweeps.output import diverged_runs, outliers, strip_ansi
from distmeta.sweeps.search import load_search
from distmeta.sweeps.tune import format_summary, summarise


def test_outliers_are_non_finite_or_far_above_the_others():
    mse = {"a": 4.1, "b": 3.9, "c": 471341.0, "d": 4.4}
    assert list(outliers(mse, error=True)) == ["c"]
    assert "471341 is 1.15e+05x the median 4.1 of the others" in outliers(mse, error=True)["c"]
    assert list(outliers({"a": 0.7, "b": math.nan}, error=False)) == ["b"]
    assert outliers({"a": 0.7, "b": 0.001}, error=False) == {}  # a low accuracy is a bad trial, not a diverged one
    assert outliers({"a": 1.0, "b": 50.0}, error=True) == {}


def _result(trial: str, lr: float, **metrics) -> SimpleNamespace:
    return SimpleNamespace(error=None, checkpoint=None, config={"_base": {}, "algorithm.inner_lr": lr},
                           metrics={"trial_id": trial, "step": 20, "final": True, "diverged": False, **metrics})


class FakeGrid(list):
    """What summarise reads of Tune's ResultGrid: iteration and get_best_result."""

    def get_best_result(self, metric: str, mode: str, scope: str):
        ok = [r for r in self if metric in r.metrics]
        return (max if mode == "max" else min)(ok, key=lambda r: r.metrics[metric])


def test_a_trial_with_a_huge_test_mse_is_marked_diverged(tmp_path):
    search = load_search("configs/tune_sinusoid_asha.yaml", [f"storage_path={tmp_path}"])
    grid = FakeGrid([
        _result("good1", 0.01, val_neg_mse=-3.0, val_loss=3.0, test_5shot_mse=4.1, test_5shot_mse_ci95=0.3),
        _result("good2", 0.02, val_neg_mse=-2.5, val_loss=2.5, test_5shot_mse=3.9, test_5shot_mse_ci95=0.3),
        _result("bad", 5.0, val_neg_mse=-9.0, val_loss=9.0, test_5shot_mse=471341.0, test_5shot_mse_ci95=9e5),
    ])
    summary = summarise(search, grid, out_dir=tmp_path / "out")
    assert summary["best_trial"] == "good2" and summary["diverged_trials"] == 1
    assert summary["diverged"][0]["trial"] == "bad" and "test_5shot_mse 471341" in summary["diverged"][0]["because"]
    assert "trial bad DIVERGED (test_5shot_mse 471341 is" in format_summary(summary)


def test_diverged_runs_look_at_the_reported_errors_only():
    runs = {"a": {"val_loss": 1.0, "test_2way_1shot_accuracy": 0.5, "seconds": 1e9},
            "b": {"val_loss": 1.2, "test_2way_1shot_accuracy": math.inf, "seconds": 1.0},
            "c": {"val_loss": 900.0, "test_2way_1shot_accuracy": 0.4, "seconds": 1.0}}
    found = diverged_runs(runs)
    assert set(found) == {"b", "c"} and found["c"].startswith("val_loss 900")


def test_ray_log_keeps_a_child_process_output_and_strips_escape_codes(tmp_path):
    """In a process whose stdout is a real descriptor: Ray-like output (also from a subprocess) goes to the
    file without ANSI codes; say() reaches the terminal; after the block, output is back on the terminal."""
    script = textwrap.dedent(f"""
        import subprocess, sys
        from distmeta.sweeps.output import RayLog
        with RayLog({str(tmp_path / 'tune.log')!r}) as log:
            print("\\x1b[36m(trainable pid=1)\\x1b[0m Trial status: 3 RUNNING", flush=True)
            print("\\x1b[1;31mwarning\\x1b[0m on stderr", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, "-c", "print('from a child')"], check=True)
            log.say("[tune] trial a finished (1/1)")
        print("after the block", flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[tune] trial a finished (1/1)", "after the block"], done.stdout
    logged = (tmp_path / "tune.log").read_text()
    assert logged.splitlines() == ["(trainable pid=1) Trial status: 3 RUNNING", "warning on stderr", "from a child"]
    assert "\x1b" not in logged and done.stderr == ""


def test_trial_lines_pickle_without_the_terminal():
    import pickle

    from distmeta.sweeps.output import TrialLines

    lines = pickle.loads(pickle.dumps(TrialLines(open(os.devnull, "w").write, "val_accuracy")))
    assert lines.metric == "val_accuracy" and lines.say is print


def test_strip_ansi():
    assert strip_ansi("\x1b[2K\x1b[1A\x1b[32mok\x1b[0m \x1b]0;title\x07done") == "ok done"


@pytest.fixture
def grid_rows():
    from distmeta.sweeps.grid import load_grid

    grid = load_grid("configs/grid_sinusoid.yaml")
    x_key = list(grid.spec.axes)[-1]
    rows = []
    for i, cell in enumerate(grid.cells):
        value = 471341.0 if i == 0 else 2.0 + i
        rows.append({**cell.values, "cell": cell.name, "setting": "5shot", "metric": "mse", "value": value,
                     "ci95": 0.5 if i else 9e5, "before": 6.0, "episodes": 10})
    return grid, rows, x_key


def test_grid_cells_that_diverged_are_marked_and_the_mse_plot_is_on_a_log_axis(grid_rows, tmp_path):
    from distmeta.sweeps.grid_report import figure, mark_diverged, write_table

    grid, rows, _ = grid_rows
    mark_diverged(rows)
    assert [bool(r["diverged"]) for r in rows] == [True] + [False] * (len(rows) - 1)
    files = write_table(grid, rows, tmp_path)
    md = files["md"].read_text()
    assert "DIVERGED" in md.splitlines()[4] and "DIVERGED" not in "".join(md.splitlines()[5:]), md
    assert "diverged" in files["csv"].read_text().splitlines()[0]
    ax = figure(grid, rows).axes[0]
    assert ax.get_yscale() == "log"
    bars = sorted((min(a[1], b[1]), max(a[1], b[1])) for coll in ax.collections for a, b in coll.get_segments())
    want = sorted((max(0.0, r["value"] - r["ci95"]), r["value"] + r["ci95"]) for r in rows)
    assert [y for bar in bars for y in bar] == pytest.approx([y for bar in want for y in bar])
    assert sum(low == 0.0 for low, _ in bars) == 1  # the diverged cell's bar stops at zero


def test_an_accuracy_plot_stays_linear_with_bars_inside_0_100(grid_rows):
    from distmeta.sweeps.grid_report import figure

    grid, rows, _ = grid_rows
    for i, r in enumerate(rows):
        r.update(metric="accuracy", value=0.98 - 0.1 * i, ci95=0.05, before=0.5)
    ax = figure(grid, rows).axes[0]
    ends = [y for coll in ax.collections for seg in coll.get_segments() for _, y in seg]
    assert ax.get_yscale() == "linear" and max(ends) <= 100.0 and min(ends) >= 0.0


def _cli(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    """``distmeta ...`` in a fresh process whose stdout is a pipe (a real descriptor, as a terminal or a file is)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "-m", "distmeta.cli", *args], capture_output=True, text=True,
                          timeout=540, env=env, cwd=os.getcwd())


@pytest.mark.ray
def test_tune_prints_its_result_and_keeps_ray_s_output_in_the_experiment_log(tmp_path):
    storage = tmp_path / "tune"
    done = _cli(["tune", "--config", "configs/tune_sinusoid_asha.yaml", f"storage_path={storage}", "num_samples=2",
                 "train.steps=4", "run.eval_every=2", "eval.val_episodes=4", "eval.episodes=4"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout.splitlines()
    assert sum(line.startswith("[tune] trial ") for line in out) == 2, done.stdout
    assert any(line.startswith("best trial ") for line in out) and len(out) < 30, done.stdout
    assert "pid=" not in done.stdout and "\x1b" not in done.stdout + done.stderr, done.stdout
    log = (load_search("configs/tune_sinusoid_asha.yaml", [f"storage_path={storage}"]).experiment_path
           / "tune.log").read_text()
    assert "pid=" in log and "\x1b" not in log, log[-2000:]  # the trials' own lines, as Ray forwarded them


@pytest.mark.ray
def test_grid_cells_run_as_trials_keep_their_output_in_the_grid_log(tmp_path):
    out_dir = tmp_path / "grids"
    done = _cli(["grid", "--config", "configs/grid_sinusoid.yaml", f"output_dir={out_dir}", "episodes=4",
                 "train.steps=2", "eval.val_episodes=4"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pid=" not in done.stdout and "| note |" in done.stdout, done.stdout
    log = next(out_dir.glob("*/grid.log")).read_text()
    assert "pid=" in log and "\x1b" not in log, log[-2000:]
