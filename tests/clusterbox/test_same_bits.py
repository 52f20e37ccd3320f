"""The same parameters bit for bit in one process on the head and with actors on 3 namespaced nodes."""
from __future__ import annotations

import pytest

from tests.clusterbox.conftest import (
    SINUSOID,
    assert_same_bits,
    drive,
    steps_each_task_once,
)

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_three_nodes_equal_one_process(box, dtype):
    base = [*SINUSOID, f"dtype={dtype}", "train.steps=4", "run.checkpoint_every=0"]
    ref = drive(box, f"ref-{dtype}", [*base, "resources.workers=0", f"run.dir=/tmp/runs/ref-{dtype}"])
    assert ref.result, ref.tail()
    for node_reduce in ("true", "false"):
        run = drive(box, f"three-{dtype}-{node_reduce}", [*base, "resources.workers=3", "resources.cpus_per_worker=1",
                                                         f"ray.node_reduce={node_reduce}",
                                                         f"run.dir=/tmp/runs/three-{dtype}-{node_reduce}"])
        assert run.result, run.tail()
        ips = {a["ip"] for a in run.result["actors"]}
        assert len(run.steps[-1]["nodes"]) == 3, f"actors on 3 nodes: {run.steps[-1]} {ips}"
        steps_each_task_once(run, 16)
        if node_reduce == "true":
            assert run.steps[-1]["node_sums"] >= 2, run.steps[-1]
        assert_same_bits(ref.params, run.params, f"{dtype}, node sums {node_reduce}, 3 nodes vs 1 process")
