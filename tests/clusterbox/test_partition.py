"""A node cut off mid-run (its link down, its processes alive), then back.

Its blocks are re-run on the other nodes within ``ray.step_timeout`` plus the node sum's
grace and a step; the following steps take about what a run on the remaining nodes alone
takes; the parameters equal the clean run's; each task is reduced exactly once. When the
link comes back the head has already declared the node dead and its raylet exits (Ray's
clean refusal); restarted as an operator would, the node takes the lost actor back.
"""
from __future__ import annotations

import statistics
import time

import pytest

from tests.clusterbox.conftest import assert_same_bits, drive, steps_each_task_once

pytestmark = pytest.mark.cluster

STEP_TIMEOUT = 10
BASE = ["data.source=icd10cm", "algorithm.group_size=2", "train.meta_batch=16", "dtype=float64", "train.steps=40",
        "run.progress=false", "run.eval_every=0", "eval.baseline=false", "run.log_every=1", "run.checkpoint_every=0",
        "resources.cpus_per_worker=1", f"ray.step_timeout={STEP_TIMEOUT}", "ray.elastic=false"]
CUT, HEAL = 5, 14


def _median_wall(steps: list[dict]) -> float:
    return statistics.median(s["wall_s"] for s in steps)


def test_partitioned_node_rerun_rejoin_same_bits(box):
    clean = drive(box, "clean", [*BASE, "resources.workers=3", "run.dir=/tmp/runs/clean"], timeout=600)
    assert clean.result, clean.tail()

    events: dict[str, float] = {}

    def cut():
        box.partition("node2")
        events["cut"] = time.monotonic()

    def heal():
        box.heal("node2")
        box.restart_node("node2")  # the head refused the node's old raylet; an operator restarts it
        # Ray re-places the lost actor's bundle on the restarted node; the run takes it back once it answers.
        box.wait_until(lambda: box.available().get("CPU", 0) == 0, "the lost actor's bundle placed on node2")
        time.sleep(10)

    cut_run = drive(box, "cut", [*BASE, "resources.workers=3", "run.dir=/tmp/runs/cut"], faults={CUT: cut, HEAL: heal},
                    timeout=900)
    assert cut_run.result, cut_run.tail()
    steps_each_task_once(cut_run, 16)
    assert_same_bits(clean.params, cut_run.params, "partitioned run vs clean run")

    by_step = {s["step"]: s for s in cut_run.steps}
    detect = by_step[CUT + 1]
    assert detect["retries"] >= 1 and len(detect["nodes"]) == 2, detect
    clean_step = _median_wall(clean.steps[1:])
    assert detect["wall_s"] <= STEP_TIMEOUT + 2.0 + 2 * clean_step + 3.0, \
        f"re-run {detect['wall_s']:.1f}s after the cut: past ray.step_timeout + grace + a step"
    assert all(len(by_step[s]["nodes"]) == 2 for s in range(CUT + 1, HEAL + 1)), "node2 out while cut"
    assert len(cut_run.steps[-1]["nodes"]) == 3, f"node2 back after the restart: {cut_run.steps[-1]}"

    # Timing: steps after the cut against a run that had the two remaining nodes only.
    box.partition("node2")
    box.wait_for_nodes(2, timeout=120, exact=True)
    try:
        two = drive(box, "two", [*BASE, "resources.workers=2", "run.dir=/tmp/runs/two"], timeout=600)
    finally:
        box.heal("node2")
        box.restart_node("node2")
    assert two.result, two.tail()
    after_cut = _median_wall([by_step[s] for s in range(CUT + 2, HEAL + 1)])
    alone = _median_wall(two.steps[1:])
    print(f"median step: clean 3 nodes {clean_step:.2f}s, after the cut {after_cut:.2f}s, "
          f"2 nodes alone {alone:.2f}s, detection step {detect['wall_s']:.1f}s")
    assert after_cut <= 1.5 * alone, f"after the cut {after_cut:.2f}s/step vs {alone:.2f}s on the 2 nodes alone"
