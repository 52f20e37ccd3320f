"""The shipped search and grid across namespaced nodes, with their storage on the head's S3 server.

Scaled down only in length (steps, episodes, samples), as tests/tune/test_shipped.py does;
resources as shipped. Nodes share no disk, so every result the driver reports must have come
through object storage. The commands run from the head's home (a user's own writable folder:
the repository is mounted read-only on every node), naming the shipped configs by path.
"""
from __future__ import annotations

import json

import pytest

from clusterbox.cluster import REPO
from tests.clusterbox.conftest import s3_keys

pytestmark = pytest.mark.cluster


def test_shipped_asha_search_across_nodes_on_object_storage(box):
    over = ["storage_path=s3://distmeta/tune", "verbose=0", "num_samples=3", "train.steps=20", "run.eval_every=10",
            "eval.val_episodes=20", "eval.episodes=20"]
    proc = box.run("head", ["distmeta", "tune", "--config", f"{REPO}/configs/tune_sinusoid_asha.yaml", *over],
                   env={"RAY_ADDRESS": box.address}, timeout=1200, cwd="/tmp/home")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    objects = s3_keys(box, "tune/")
    results = [k for k in objects if k.endswith("/result.json")]
    assert len(results) == 3, sorted(objects)[:40]
    ips = {json.loads(line)["node_ip"] for k in results for line in objects[k].decode().splitlines() if line.strip()}
    assert len(ips) >= 2, f"trials ran on one node only: {ips}"
    assert any(k.endswith("best.json") for k in objects), "the search's best trial recorded in the bucket"


def test_shipped_grid_across_nodes_with_output_dir_on_object_storage(box):
    over = ["output_dir=s3://distmeta/grids", "train.steps=20", "episodes=20"]
    proc = box.run("head", ["distmeta", "grid", "--config", f"{REPO}/configs/grid_sinusoid.yaml", *over],
                   env={"RAY_ADDRESS": box.address}, timeout=1200, cwd="/tmp/home")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    objects = s3_keys(box, "grids/")
    cells = {k.split("/cells/")[1].split("/")[0] for k in objects if "/cells/" in k and k.endswith("results.json")}
    assert len(cells) == 6, sorted(objects)[:60]
    assert any(k.endswith("grid.csv") for k in objects), sorted(objects)[:60]
    assert not (box.head.tmp / "s3:").exists(), "no local folder named after the URI"
