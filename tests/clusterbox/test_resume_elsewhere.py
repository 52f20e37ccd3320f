"""A run started on the head, checkpointed to object storage, resumed by ``distmeta train --resume`` on another node."""
from __future__ import annotations

import pytest
import torch

from tests.clusterbox.conftest import BAG, assert_same_bits, drive

pytestmark = pytest.mark.cluster

ARGS = ["data.source=icd10cm", "algorithm.group_size=2", "train.meta_batch=16", "run.progress=false",
        "run.eval_every=0", "eval.baseline=false", "run.log_every=1", "run.checkpoint_every=4", "eval.episodes=20",
        "resources.workers=2", "resources.cpus_per_worker=1"]
URI = "s3://distmeta/runs/elsewhere"


def test_resume_from_object_storage_on_another_node(box):
    straight = drive(box, "straight", [*ARGS, "train.steps=8", "run.dir=/tmp/runs/straight"], timeout=600)
    assert straight.result, straight.tail()

    env = {"RAY_ADDRESS": box.address}
    first = box.run("head", ["distmeta", "train", "--config", BAG, *ARGS, "train.steps=4", f"run.dir={URI}"],
                    env=env, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    second = box.run("node1", ["distmeta", "train", "--resume", URI, *ARGS, "train.steps=8"], env=env, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]

    code = ("import os, distmeta, torch\n"
            "os.makedirs('/tmp/out', exist_ok=True)\n"
            f"c = distmeta.load_checkpoint({URI!r})\n"
            "assert c.step == 8, c.step\n"
            "torch.save({k: v.clone() for k, v in c.meta_params.items()}, '/tmp/out/elsewhere.pt')\n")
    read = box.run("node2", ["python", "-c", code], timeout=300)
    assert read.returncode == 0, read.stderr[-3000:]
    resumed = torch.load(box.nodes["node2"].tmp / "out" / "elsewhere.pt", weights_only=True)
    assert_same_bits(straight.params, resumed, "stopped on the head, resumed on node1, read on node2 vs straight")
    assert not (box.nodes["node1"].tmp / "runs").exists() and not (box.head.tmp / "runs" / "elsewhere").exists()
