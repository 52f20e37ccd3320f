"""What reaches the driver per step, flat (every group's gradient) vs tree (each node sums its own groups).

On simulated multi-node clusters (``ray.cluster_utils.Cluster``, 2 and 3 nodes on this one
machine, two actors per node), the same steps run with ``ray.node_reduce`` off and on,
interleaved a step at a time on one actor pool. Per step: the gradient bytes that reach
the driver (``StepStats.result_bytes``) and the driver's own reduction time (reading the
answers is Ray's; this is the sum in ``reduce_groups``), median of the measured steps;
the parameters of both must be the same bits (checked). Then the arithmetic for a 4-node
x 8-GPU cluster, from the measured time of one gradient addition.

    .venv/bin/python -m benchmarks.speed.tree_reduce [--steps 10] [--nodes 2,3] [--quick]

The nodes share this machine's CPUs, so step times here say nothing about a real cluster;
bytes and the driver's reduction work do.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from benchmarks.speed.common import BAG_CONFIG, experiment, parse_args
from distmeta.groups import reduce_groups
from distmeta.groups import cover
from distmeta.groups import chunks

#: ~260K meta-parameters (benchmarks.speed.ray_scaling's bag250k), 16 tasks in 8 groups of 2.
OVERRIDES = ["model.name=bag", "model.dim=64", "tokenizer.vocab_size=4000", "algorithm.name=maml",
             "algorithm.inner_lr=0.5", "data.queries=5", "train.meta_batch=16", "algorithm.group_size=2",
             "resources.threads=1", "resources.cpus_per_worker=0.5", "outer.name=sgd"]
TEMP_DIR = "/tmp/dmray_tb"
QUICK = {"steps": 2, "nodes": "2"}


def run_cluster(nodes: int, steps: int) -> dict[str, float]:
    """Flat vs tree on ``nodes`` simulated nodes: median bytes and reduce ms per step, and the check."""
    import ray
    from ray._common.utils import get_default_ray_temp_dir
    from ray.cluster_utils import Cluster

    from distmeta.distributed.ray_backend import RayBackend

    os.makedirs(get_default_ray_temp_dir(), exist_ok=True)
    spec = {"num_cpus": 1, "object_store_memory": 150 * 1024**2, "temp_dir": TEMP_DIR}
    cluster = Cluster(initialize_head=True, head_node_args={**spec, "include_dashboard": False})
    backend = None
    try:
        for _ in range(nodes - 1):
            cluster.add_node(**spec)
        cluster.wait_for_nodes()
        cfg, exp = experiment(BAG_CONFIG, [*OVERRIDES, f"resources.workers={2 * nodes}", f"ray.address={cluster.address}"])
        backend = RayBackend(cfg, exp.worker_args())
        meta = {n: t.numpy() for n, t in backend.initial_meta.items()}
        names, sampler = list(meta), exp.sampler("train")
        rows: dict[str, dict[str, list[float]]] = {m: {"bytes": [], "reduce_ms": []} for m in ("flat", "tree")}
        for step in range(steps + 1):  # step 0 warms up
            specs = sampler.batch(step, cfg.train.meta_batch)
            groups = [specs[r.start: r.stop] for r in chunks(len(specs), cfg.algorithm.group_size)]
            sums = {}
            for mode in ("flat", "tree"):
                backend.ray_cfg.node_reduce = mode == "tree"  # read per step; one pool serves both rows
                results = backend.compute(meta, groups, version=step)
                t0 = time.perf_counter()
                sums[mode] = reduce_groups(results, names, torch.float32)
                if step:
                    rows[mode]["reduce_ms"].append(1000 * (time.perf_counter() - t0))
                    rows[mode]["bytes"].append(backend.stats().result_bytes)
            assert all(torch.equal(sums["flat"][n], sums["tree"][n]) for n in names), "tree != flat"
        nparams = sum(v.size for v in meta.values())
        return {"nodes": nodes, "actors": 2 * nodes, "groups": len(groups), "params": nparams,
                **{f"{m}_{k}": statistics.median(v) for m, r in rows.items() for k, v in r.items()}}
    finally:
        if backend is not None:
            backend.close()
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def add_ms(params: int, repeats: int = 50) -> float:
    """Milliseconds of one float32 gradient addition of ``params`` elements on this machine (median)."""
    a, b = torch.randn(params), torch.randn(params)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _ = a + b
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--nodes", default="2,3")
    args = parse_args(ap, QUICK)
    os.environ.pop("RAY_ADDRESS", None)  # the simulated clusters, not one this shell points at
    torch.set_num_threads(1)
    rows = [run_cluster(int(n), args.steps) for n in args.nodes.split(",")]
    print(f"\nflat vs tree, median of {args.steps} steps (bag ~260K params, float32, 8 groups of 2 tasks, 2 actors/node)")
    print("| nodes | actors | MB into driver: flat | tree | driver reduce ms: flat | tree |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['nodes']} | {r['actors']} | {r['flat_bytes'] / 2**20:.2f} | {r['tree_bytes'] / 2**20:.2f} | "
              f"{r['flat_reduce_ms']:.2f} | {r['tree_reduce_ms']:.2f} |")
    params, per_node, nodes = 1_000_000, 8, 4
    ms = add_ms(params)
    groups = nodes * per_node  # one group per GPU
    mb = params * 4 / 2**20
    local = per_node  # the driver's own node: its groups come through /dev/shm and are summed by the driver
    remote_units = (nodes - 1) * len(cover(local, local + per_node, groups))  # sums per other node (aligned: 1)
    print(f"\n{nodes} nodes x {per_node} GPUs, 1M float32 parameters, {groups} groups: one addition of 1M floats "
          f"takes {ms:.2f} ms here.")
    print(f"  flat: {groups} gradients reach the driver per step ({groups - local} = {(groups - local) * mb:.0f} MB "
          f"through Ray's object store, {local} through /dev/shm), {groups - 1} additions = "
          f"{(groups - 1) * ms:.1f} ms of serial driver reduce")
    print(f"  tree: {local + remote_units} ({local} through /dev/shm, {remote_units} node sums = "
          f"{remote_units * mb:.0f} MB through Ray), {local + remote_units - 1} additions = "
          f"{(local + remote_units - 1) * ms:.1f} ms on the driver; each other node's reducer adds its "
          f"{per_node} in {(per_node - 1) * ms:.1f} ms, in parallel")

if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
