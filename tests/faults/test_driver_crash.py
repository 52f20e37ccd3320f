"""The driver SIGKILLed mid-run, or mid-way through writing a checkpoint, then ``distmeta train --resume``.

The reference is the same run uninterrupted: per-step metrics (one ``metrics.jsonl``
row per step, every step logged), validation and test rows, the final parameters and
the optimiser state must be identical (CPU, float32).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import distmeta
from distmeta.cli import main
from distmeta.persistence.checkpoint import list_checkpoints
from tests.faults.conftest import assert_bit_identical
from tests.helpers import QUIET, SINUSOID_TINY, text_tiny, write_tiny_csv

CHILD = Path(__file__).with_name("cli_child.py")
ROOT = Path(__file__).parents[2]
#: Keys of a row that depend on wall-clock time or on the backend (retries exist only with Ray), not on the computation.
TIMING = ("time", "step_time", "tasks_per_s", "dispatch_s", "driver_s", "driver_share", "max_group_compute_s", "compute_s",
          "retries")


def deterministic(row: dict) -> dict:
    return {k: v for k, v in row.items() if not any(k.endswith(t) for t in TIMING)}


def rows(run_dir: Path) -> list[dict]:
    return [deterministic(json.loads(ln)) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def child(mode: list[str], args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(CHILD), *mode, "--", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until metrics.jsonl has the train row of ``step`` (the process is then inside the stalled next step)."""
    deadline = time.monotonic() + timeout
    path = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended early: {proc.communicate()[1][-3000:]}"
        if path.exists() and any(r.get("step") == step and "train/loss" in r for r in rows(run_dir)):
            return
        time.sleep(0.2)
    raise AssertionError(f"no train row for step {step} within {timeout}s")


def assert_same_run(a: Path, b: Path) -> None:
    """Two run directories hold the same training: metrics rows, results and final checkpoint, bit for bit."""
    ra, rb = rows(a), rows(b)
    steps = [r["step"] for r in ra if "train/loss" in r]
    assert steps == list(range(1, len(steps) + 1)), f"one train row per step, in order: {steps}"
    assert ra == rb, "per-step metrics differ: " + json.dumps([(x, y) for x, y in zip(ra, rb) if x != y][:3])
    assert json.loads((a / "results.json").read_text())["test"] == json.loads((b / "results.json").read_text())["test"]
    ca, cb = distmeta.load_checkpoint(a), distmeta.load_checkpoint(b)
    assert ca.step == cb.step
    assert_bit_identical(ca.meta_params, cb.meta_params, "final parameters")
    sa, sb = ca.optimizer_state, cb.optimizer_state
    assert sa["steps"] == sb["steps"]
    for (ka, va), (kb, vb) in zip(sa["optimizer"]["state"].items(), sb["optimizer"]["state"].items()):
        assert ka == kb and all(torch.equal(va[k], vb[k]) for k in va), "optimiser state"


def sinusoid_args() -> list[str]:
    return [*SINUSOID_TINY, *QUIET, "run.log_every=1", "train.steps=10", "run.checkpoint_every=3",
            "run.eval_every=2", "eval.val_episodes=4"]


def text_args(tmp_path: Path) -> list[str]:
    return [*text_tiny(write_tiny_csv(tmp_path / "d.csv")), *QUIET, "algorithm.name=maml", "outer.name=noisy_sgd",
            "outer.lr=0.05", "run.log_every=1", "train.steps=10", "run.checkpoint_every=3"]


@pytest.mark.parametrize("setup", ["sinusoid_adam_val", "text_maml_noisy_sgd"])
def test_driver_sigkilled_mid_step_resumes_bit_identical(tmp_path, setup):
    args = sinusoid_args() if setup == "sinusoid_adam_val" else text_args(tmp_path)
    run, straight = tmp_path / "run", tmp_path / "straight"
    # Step 7 stalls (the driver is its own worker with workers=0), so the kill lands mid-step, after checkpoint 6.
    proc = child(["run"], ["train", *args, f"run.dir={run}", "faults=[{kind: stall, step: 7, seconds: 600}]"])
    try:
        assert main(["train", *args, f"run.dir={straight}"]) == 0  # meanwhile, the uninterrupted run
        wait_for_step(run, 7, proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for p in list_checkpoints(run)] == ["step_00000003", "step_00000006"]
    assert not (run / "results.json").exists()

    assert main(["train", "--resume", str(run), *args, "faults=[]"]) == 0
    assert_same_run(run, straight)


def test_crash_while_writing_a_checkpoint_leaves_the_previous_one_and_resumes(tmp_path):
    args = [*SINUSOID_TINY, *QUIET, "run.log_every=1", "train.steps=6", "run.checkpoint_every=2"]
    run, straight = tmp_path / "run", tmp_path / "straight"
    proc = child(["crash-in-checkpoint", "4"], ["train", *args, f"run.dir={run}"])
    assert main(["train", *args, f"run.dir={straight}"]) == 0
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err[-3000:]

    ckdir = run / "checkpoints"
    partial = [p for p in ckdir.iterdir() if p.name.startswith(".tmp-step_00000004")]
    assert len(partial) == 1 and (partial[0] / "optimizer.pt").exists(), "the crash happened mid-write"
    assert not (partial[0] / "manifest.json").exists()
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002"], "no partial checkpoint is visible"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loads cleanly: no fallback needed
        assert distmeta.load_checkpoint(run).step == 2

    assert main(["train", "--resume", str(run), *args]) == 0
    assert_same_run(run, straight)
    assert not [p for p in ckdir.iterdir() if p.name.startswith(".tmp-")], "the next save cleaned up the leftover"


@pytest.mark.slow
@pytest.mark.ray
def test_driver_of_a_ray_run_sigkilled_then_resumed(ray_local, tmp_path):
    """As above with workers=2: the killed driver's actors are gone with it; the resumed run uses the session's Ray."""
    args = [*sinusoid_args(), "resources.workers=2", "resources.cpus_per_worker=0.25", "ray.step_timeout=120"]
    run, straight = tmp_path / "run", tmp_path / "straight"
    proc = child(["run"], ["train", *args, f"run.dir={run}", "faults=[{kind: stall, actor: 1, step: 7, seconds: 600}]"])
    try:
        assert main(["train", *sinusoid_args(), f"run.dir={straight}"]) == 0  # in-process
        wait_for_step(run, 7, proc, timeout=600)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    assert main(["train", "--resume", str(run), *args, "faults=[]"]) == 0
    assert_same_run(run, straight)
