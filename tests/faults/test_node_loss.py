"""A node lost for good mid-run: training goes on with the remaining actors, same tasks, same parameters; with no
capacity left, a clear error within a bounded time (never a hang). Own Ray cluster, so in a subprocess."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.faults.conftest import BASE, assert_bit_identical, cfg_of, reference_params

pytestmark = pytest.mark.ray
SCRIPT = Path(__file__).with_name("node_loss_check.py")


def test_node_lost_for_good_then_no_capacity_left(tmp_path):
    timeout = 10.0
    overrides = [*BASE, "train.steps=8"]
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path), str(timeout), *overrides],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    ref = reference_params(cfg_of(overrides, tmp_path / "ref"), steps=4)  # meanwhile: 4 steps of the plain loop
    stdout, stderr = proc.communicate(timeout=500)
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, stdout[-3000:] + stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])

    assert len(set(out["actor_nodes"])) == 2, "one actor per node"
    steps = {s["step"]: s for s in out["steps"]}
    assert sorted(steps) == [0, 1, 2, 3], "steps 0-3 completed, step 4 (no actor left) did not"
    for s, rec in steps.items():
        assert [tuple(k) for k in rec["tasks"]] == [(s, i) for i in range(8)], f"step {s}: each task once"
    assert steps[0]["actors"] == steps[1]["actors"] == [0, 0, 1, 1]
    assert steps[2]["actors"] == steps[3]["actors"] == [0, 0, 0, 0], "after the loss, actor 0 computed every group"
    assert steps[2]["retries"] <= 1 and steps[3]["retries"] == 0

    err = out["error"]
    assert err is not None and "none of the 2 Ray actors is available" in err, err
    assert out["error_after_s"] < 3 * timeout + 30, f"error after {out['error_after_s']:.0f}s: bounded by ray.step_timeout"
    assert out["checkpoint_step"] == 4
    assert_bit_identical(ref, torch.load(tmp_path / "params.pt"), "4 steps across a node loss vs the plain loop")
    assert out["ray_initialized_after_close"] is False
