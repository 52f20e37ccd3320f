"""The frozen-prefix cache on namespaced nodes: built on each node, once, under that node's lock, in its private home.

Two actors per node race for the cache (half a CPU each). Each node must end with exactly
one cache entry in its own ``~/.cache/distmeta/prefix`` (nodes share no disk, so an entry
built on the head cannot serve another node), private modes, no builder leftovers, and the
run's actors must have logged one build per node.
"""
from __future__ import annotations

import re
import stat

import pytest

from tests.clusterbox.conftest import drive

pytestmark = pytest.mark.cluster

#: all-MiniLM-L6-v2, its last 2 layers trained over a frozen prefix (the default), on the README's toy CSV.
ARGS = ["data.source=csv:docs/examples/topics.csv", "train.steps=2", "train.meta_batch=6", "algorithm.group_size=1",
        "resources.workers=6", "resources.cpus_per_worker=0.5", "run.progress=false", "run.eval_every=0", "eval.baseline=false",
        "run.checkpoint_every=0", "run.log_every=1", "train.select_best=false"]


def test_prefix_cache_built_once_per_node_on_that_node(box):
    run = drive(box, "prefix", [*ARGS, "run.dir=/tmp/runs/prefix"], config="configs/default.yaml", timeout=900)
    assert run.result, run.tail()
    assert len(run.steps[-1]["nodes"]) == 3, run.steps[-1]
    for name, node in box.nodes.items():
        root = node.home / ".cache" / "distmeta" / "prefix"
        entries = [p for p in root.iterdir() if p.is_dir()]
        assert len(entries) == 1, f"{name}: {sorted(p.name for p in root.iterdir())}"
        assert not [p for p in root.iterdir() if ".tmp" in p.name], f"{name}: builder leftovers"
        assert stat.S_IMODE(root.stat().st_mode) == 0o700 and stat.S_IMODE(entries[0].stat().st_mode) == 0o700
        assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in entries[0].iterdir()), name
        assert (root / f"{entries[0].name}.lock").is_file(), f"{name}: built under the node's lock"
    keys = {next(p for p in (n.home / ".cache/distmeta/prefix").iterdir() if p.is_dir()).name
            for n in box.nodes.values()}
    assert len(keys) == 1, "every node built the same cache (same model, rows)"
    builds = {ip for ip in re.findall(r"ip=([0-9.]+)\)[^\n]*prefix cache", "\n".join(run.log))}
    print("nodes that logged a prefix build:", sorted(builds))
