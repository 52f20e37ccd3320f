"""Ray's own per-step cost: one actor against the same Worker in this process, plain calls and compiled graph.

Sinusoid MAML, 32 tasks in 4 groups, one torch thread everywhere; 3 warm-up steps,
then the median of ``--steps``. Two phases, because an idle compiled-graph actor spins
a core and would slow whatever runs beside it:

1. ``in-process`` (``Worker.meta_grad_groups`` here, the ``workers: 0`` compute) and
   ``actor, plain calls`` (``ray.compiled_graph: false``) take turns a step at a time;
2. ``actor, compiled graph`` (``ray.compiled_graph: true``) and ``in-process beside it``
   (the same in-process compute while the graph's actor waits) take turns.

Each Ray row's overhead is its step time minus the actor's own compute time. Also
printed: a bare actor round trip (``ping``), and the CPU time an idle graph actor and
an idle plain actor burn per second of wall time. Usage:

    .venv/bin/python -m benchmarks.speed.ray_overhead [--steps 20] [--quick]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import ray
import torch

from benchmarks.speed.common import BAG_CONFIG, experiment, parse_args
from distmeta.distributed.ray_backend import RayBackend
from distmeta.groups import chunks
from distmeta.worker import Worker

OVERRIDES = ["resources.workers=1", "resources.threads=1", "resources.cpus_per_worker=1", "data.source=sinusoid", "model.name=mlp",
             "algorithm.name=maml", "train.meta_batch=32", "algorithm.group_size=8"]
RAY_TEMP_DIR = "/tmp/dmray_ovh"
QUICK = {"steps": 3}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux ``/proc``)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu_share(backend: RayBackend, seconds: float = 3.0) -> float:
    """CPU-seconds per wall-second the backend's (single, idle) actor burns."""
    pid = backend.infos[0]["pid"]
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / seconds


def take_turns(rows: dict, steps: int) -> dict[str, tuple[float, float | None]]:
    """Median (step ms, actor compute ms or None) of each row; rows are callables ``step -> results``."""
    step_ms: dict[str, list[float]] = {name: [] for name in rows}
    compute_ms: dict[str, list[float]] = {name: [] for name in rows}
    for step in range(3 + steps):
        for name, run in rows.items():
            t0 = time.perf_counter()
            results = run(step)
            if step >= 3:
                step_ms[name].append(1000 * (time.perf_counter() - t0))
                if "actor_compute_s" in results[0].extra:
                    compute_ms[name].append(1000 * results[0].extra["actor_compute_s"])
    return {name: (statistics.median(step_ms[name]),
                   statistics.median(compute_ms[name]) if compute_ms[name] else None) for name in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    args = parse_args(ap, QUICK)

    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=RAY_TEMP_DIR, logging_level="warning", log_to_driver=False)
    cfg, exp = experiment(BAG_CONFIG, OVERRIDES)
    worker = Worker(cfg, **exp.worker_args(), threads=1)
    meta = {n: t.numpy() for n, t in worker.initial_meta.items()}
    specs = exp.sampler("train").batch(0, cfg.train.meta_batch)
    groups = [specs[r.start: r.stop] for r in chunks(len(specs), cfg.algorithm.group_size)]

    def backend(graph: bool) -> RayBackend:
        c = cfg.model_copy(deep=True)
        c.ray.compiled_graph = graph
        return RayBackend(c, exp.worker_args())

    in_process = lambda step: worker.meta_grad_groups(meta, groups, step)  # noqa: E731
    rows: dict[str, tuple[float, float | None]] = {}
    plain = backend(False)
    try:
        rows.update(take_turns({"in-process": in_process,
                                "actor, plain calls": lambda step: plain.compute(meta, groups, step)}, args.steps))
        plain_idle = idle_cpu_share(plain)
        actor = plain.actors[0]
        t0 = time.perf_counter()
        for _ in range(50):
            ray.get(actor.ping.remote())
        ping_ms = (time.perf_counter() - t0) / 50 * 1000
    finally:
        plain.close()
    graph = backend(True)
    try:
        rows.update(take_turns({"actor, compiled graph": lambda step: graph.compute(meta, groups, step),
                                "in-process beside it": in_process}, args.steps))
        assert graph.stats().compiled_graph
        graph_idle = idle_cpu_share(graph)
    finally:
        graph.close()
        ray.shutdown()

    print(f"sinusoid MAML, {cfg.train.meta_batch} tasks in {len(groups)} groups; median of {args.steps} steps")
    print(f"{'':24} {'step ms':>8} {'actor compute ms':>17} {'overhead ms':>12}")
    for name, (step, compute) in rows.items():
        extra = f" {compute:17.1f} {step - compute:12.1f}" if compute is not None else ""
        print(f"{name:24} {step:8.1f}{extra}")
    print(f"bare actor round trip (ping): {ping_ms:.2f} ms")
    print(f"idle actor CPU use: plain calls {100 * plain_idle:.0f}%, compiled graph {100 * graph_idle:.0f}% of a core")


if __name__ == "__main__":
    main()
