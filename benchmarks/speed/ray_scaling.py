"""Where the Ray backend's time goes, next to plain processes and a plain-PyTorch loop.

For each case, on the same tasks and with one torch thread per process:

* ``1 proc``: one Worker in this process (the ``resources.workers: 0`` trainer's compute);
* ``2 procs``: two plain processes (multiprocessing, no Ray), each computing half of
  every meta-batch at the same time; meta-parameters and gradients go over pipes;
* ``ray 1`` / ``ray 2``: distmeta's RayBackend with one and two actors (plain actor
  calls: ``ray.compiled_graph: auto`` keeps CPU actors off the compiled graph, whose
  spinning readers would also slow every other row; ``benchmarks.speed.ray_overhead``
  measures the graph on its own);
* ``ray 2 no shm``: ``ray 2`` with ``ray.shared_memory: false`` (parameters and gradients
  through Ray's object store), the row that measures what the shared-memory slab buys;
* ``torch loop``: the algorithm as tutorials write it: a Python loop over tasks with
  ``torch.autograd.grad(create_graph=True)`` inner steps (MAML) or the prototype loss
  (ProtoNet), one backward per task, and ``torch.optim.SGD``.

The first five run the trainer's driver loop (sample, dispatch, fixed-order reduce,
outer update; the next step's sampling overlaps the workers' compute). All rows stay
alive and take turns a step at a time (round-robin), so slow drifts of this noisy
machine hit every row alike; each row's figure is the median of its steps.

Printed per case: tasks/s of each row and its ratio to ``1 proc``; ``ray 2 / 2 procs``
(Ray's cost against this machine's own parallel limit) and ``1 proc / torch loop``, each the
median of per-round ratios (two rows of one round saw the same machine); the compute time of the
slowest worker process; the driver's serial share of a step (sampling not overlapped,
reduce, update); the transport share (step time not spent computing by the slowest
worker); the bytes that travel per step. Usage:

    .venv/bin/python -m benchmarks.speed.ray_scaling [--steps N] [--cases default,sinusoid,bag250k,transformer2m] [--quick]

(``--steps`` overrides each case's own count: 40 steps, 16 for transformer2m's 1.8 s ones;
this machine's speed drifts by a third over seconds, so short cases need many.)
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time
from typing import Any

import torch

from benchmarks.speed.common import BAG_CONFIG, experiment, median_ratio, parse_args
from distmeta.models import DTYPES
from distmeta.optim import OuterOptimizer
from distmeta.training.in_process import LocalBackend
from distmeta.groups import reduce_groups
from distmeta.groups import chunks
from distmeta.tasks.materialise import split_task
from distmeta.worker import Worker

# The cases build on the from-scratch bag config (the embedded default loads MiniLM; its speed is
# benchmarks.speed.prefix_cache's subject).
COMMON = ["resources.workers=0", "resources.threads=1", "resources.cpus_per_worker=1", "outer.name=sgd"]
STEPS = {"transformer2m": 16}  # measured steps per case when --steps is not given; others DEFAULT_STEPS
DEFAULT_STEPS = 40
CASES = {
    "default": ("icd10cm embedding bag, protonet (configs/bag_protonet.yaml, the default before MiniLM)",
                ["train.meta_batch=16", "algorithm.group_size=8"]),
    "sinusoid": ("sinusoid mlp 1-40-40-1, maml",
                 ["data.source=sinusoid", "model.name=mlp", "algorithm.name=maml", "train.meta_batch=32", "algorithm.group_size=8"]),
    "bag250k": ("icd10cm bag d64 (~260K params), maml",
                ["model.name=bag", "model.dim=64", "tokenizer.vocab_size=4000", "algorithm.name=maml",
                 "algorithm.inner_lr=0.5", "data.queries=5", "train.meta_batch=16", "algorithm.group_size=8"]),
    "transformer2m": ("icd10cm transformer d192 x3 (~2M params), maml",
                      ["model.name=transformer", "model.dim=192", "model.heads=4", "model.layers=3", "model.ff_dim=384",
                       "tokenizer.vocab_size=6000", "algorithm.name=maml", "algorithm.inner_lr=0.1", "data.queries=5",
                       "train.meta_batch=8", "algorithm.group_size=4"]),
}
# Group sizes: the two bag/transformer cases adapt > vmap_max_params per task, so algorithm.vmap=auto
# runs each group as a per-task autograd loop, where a group is only the unit of summation: two
# groups (one per worker) halve the gradients sent back and the per-group work (build, checks)
# against four.
RAY_TEMP_DIR = "/tmp/dmray_bench"
QUICK = {"cases": "sinusoid", "steps": 3}


# ---------------------------------------------------------------------- the trainer's loop, any backend


class DriverLoop:
    """The driver loop of ``Trainer.fit`` around ``backend.compute``, one step per call."""

    def __init__(self, cfg, exp, backend) -> None:
        self.cfg, self.backend = cfg, backend
        self.opt = OuterOptimizer(cfg.outer, backend.initial_meta, seed=cfg.seed)
        self.sampler = exp.sampler("train")
        self.dtype = DTYPES[cfg.dtype]
        self.upcoming: dict[int, list] = {}

    def _sample_next(self, step: int) -> None:
        self.upcoming[step] = self.sampler.batch(step, self.cfg.train.meta_batch)

    def step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        t0 = time.perf_counter()
        specs = self.upcoming.pop(step, None) or self.sampler.batch(step, cfg.train.meta_batch)
        groups = [specs[r.start: r.stop] for r in chunks(len(specs), cfg.algorithm.group_size)]
        meta = {n: p.detach().cpu().numpy() for n, p in self.opt.params.items()}
        t1 = time.perf_counter()
        results = self.backend.compute(meta, groups, step, overlap=lambda: self._sample_next(step + 1))
        t2 = time.perf_counter()
        grad = reduce_groups(results, self.opt.names, self.dtype, out=self.opt.grad_buffers())
        self.opt.step({n: g.div_(len(specs)) for n, g in grad.items()})
        t3 = time.perf_counter()
        per_worker: dict[int, float] = {}  # compute time of each process (in-process: the sum over groups)
        for r in results:
            k = r.extra.get("actor", 0)
            per_worker[k] = r.extra["actor_compute_s"] if "actor_compute_s" in r.extra else per_worker.get(k, 0.0) + r.compute_s
        return {"step_s": t3 - t0, "driver_s": (t1 - t0) + (t3 - t2), "dispatch_s": t2 - t1, "slowest_s": max(per_worker.values())}

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()


# ---------------------------------------------------------------------- two plain processes


def _child(conn, cfg, worker_args) -> None:
    worker = Worker(cfg, **worker_args, threads=1)
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg is None:
            return
        meta, groups, version = msg
        conn.send(worker.meta_grad_groups(meta, groups, version))


class TwoProcesses:
    """Two spawned processes, each with a Worker; a step sends each half the groups and waits for both."""

    def __init__(self, cfg, worker_args) -> None:
        ctx = mp.get_context("spawn")
        self.conns, self.procs = [], []
        for _ in range(2):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_child, args=(child, cfg, worker_args), daemon=True)
            p.start()
            self.conns.append(parent)
            self.procs.append(p)
        for c in self.conns:
            assert c.recv() == "ready"
        self.initial_meta = Worker(cfg, **worker_args, threads=1).initial_meta

    def compute(self, meta, groups, version, overlap=None):
        half = len(groups) // 2
        parts = [groups[:half], groups[half:]]
        for c, part in zip(self.conns, parts):
            c.send((meta, part, version))
        if overlap is not None:
            overlap()
        out = []
        for k, c in enumerate(self.conns):
            part = c.recv()
            total = sum(r.compute_s for r in part)  # this process's compute time
            for r in part:
                r.extra.update(actor=k, actor_compute_s=total)
            out.extend(part)
        return out

    def close(self) -> None:
        for c in self.conns:
            c.send(None)
        for p in self.procs:
            p.join(timeout=30)


# ---------------------------------------------------------------------- the tutorials' plain PyTorch loop


class TorchLoop:
    """Per-task Python loop with torch.optim.SGD: MAML with autograd.grad(create_graph=True) inner
    steps, or ProtoNet's prototype loss, each task's loss backpropagated on its own."""

    def __init__(self, cfg, exp) -> None:
        self.cfg = cfg
        self.worker = Worker(cfg, **exp.worker_args(), threads=1)  # the same network, initialisation and tasks
        self.model = self.worker.module
        self.params = {n: p for n, p in self.model.named_parameters() if n in self.worker.initial_meta}
        for p in self.params.values():
            p.requires_grad_(True)
        self.opt = torch.optim.SGD(self.params.values(), lr=cfg.outer.lr)
        self.loss_fn = torch.nn.functional.mse_loss if cfg.data.is_regression else torch.nn.functional.cross_entropy
        self.sampler = exp.sampler("train")

    def step(self, step: int) -> dict[str, float]:
        cfg, model, loss_fn = self.cfg, self.model, self.loss_fn
        t0 = time.perf_counter()
        batch = self.worker.builder.build(self.sampler.batch(step, cfg.train.meta_batch))
        n_tasks = batch["support_x"].shape[0]
        self.opt.zero_grad()
        for i in range(n_tasks):
            task = split_task(batch, i)
            if cfg.algorithm.name == "protonet":
                support = model(task["support_x"], head=False)
                query = model(task["query_x"], head=False)
                protos = torch.stack([support[task["support_y"] == c].mean(0) for c in range(cfg.data.ways)])
                loss = loss_fn(-torch.cdist(query, protos) ** 2, task["query_y"])
            else:
                fast = dict(self.params)
                for _ in range(cfg.algorithm.inner_steps):
                    out = torch.func.functional_call(model, fast, (task["support_x"],))
                    grads = torch.autograd.grad(loss_fn(out, task["support_y"]), list(fast.values()), create_graph=True)
                    fast = {n: p - cfg.algorithm.inner_lr * g for (n, p), g in zip(fast.items(), grads)}
                loss = loss_fn(torch.func.functional_call(model, fast, (task["query_x"],)), task["query_y"])
            (loss / n_tasks).backward()
        self.opt.step()
        return {"step_s": time.perf_counter() - t0}

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------- main


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def run_case(key: str, steps: int) -> None:
    from distmeta.distributed.ray_backend import RayBackend
    from distmeta.distributed.transport import INLINE_META_BYTES

    title, overrides = CASES[key]
    cfg, exp = experiment(BAG_CONFIG, [*COMMON, *overrides])
    local = LocalBackend(cfg, {**exp.worker_args(), "threads": 1})
    n_params = sum(v.numel() for v in local.initial_meta.values())
    groups = len(chunks(cfg.train.meta_batch, cfg.algorithm.group_size))
    print(f"\n== {title}: {n_params:,} meta-parameters, meta-batch {cfg.train.meta_batch} in {groups} groups, {steps} steps; "
          f"{'vmap' if local.worker.use_vmap else 'per-task autograd loop'} within a group (algorithm.vmap=auto)")
    rows: dict[str, Any] = {}
    try:
        rows["1 proc"] = DriverLoop(cfg, exp, local)
        rows["2 procs"] = DriverLoop(cfg, exp, TwoProcesses(cfg, exp.worker_args()))
        for n, shm in ((1, True), (2, True), (2, False)):
            c = cfg.model_copy(deep=True)
            c.resources.workers = n
            c.ray.compiled_graph = False
            c.ray.shared_memory = shm
            rows[f"ray {n}" + ("" if shm else " no shm")] = DriverLoop(c, exp, RayBackend(c, exp.worker_args()))
        rows["torch loop"] = TorchLoop(cfg, exp)
        timings: dict[str, list[dict[str, float]]] = {name: [] for name in rows}
        for step in range(steps + 1):  # step 0 warms every row up and is not counted
            for name, row in rows.items():
                t = row.step(step)
                if step > 0:
                    timings[name].append(t)
        ray2 = rows["ray 2"].backend.stats()
    finally:
        for row in rows.values():
            row.close()

    med = {name: {k: statistics.median(t[k] for t in ts) for k in ts[0]} for name, ts in timings.items()}
    base = cfg.train.meta_batch / med["1 proc"]["step_s"]
    print(f"{'':12} {'tasks/s':>9} {'x 1 proc':>9} {'step ms':>8} {'slowest worker ms':>17} {'driver':>7} {'transport':>9}")
    for name, m in med.items():
        tps = cfg.train.meta_batch / m["step_s"]
        driver = f"{100 * m['driver_s'] / m['step_s']:6.1f}%" if "driver_s" in m else ""
        transport = (f"{100 * max(0.0, m['dispatch_s'] - m['slowest_s']) / m['step_s']:8.1f}%"
                     if "dispatch_s" in m and name != "1 proc" else "")
        slowest = f"{1000 * m['slowest_s']:17.1f}" if "slowest_s" in m else f"{'':17}"
        print(f"{name:12} {tps:9.1f} {tps / base:9.2f} {1000 * m['step_s']:8.1f} {slowest} {driver:>7} {transport:>9}")
    def paired(fast: str, slow: str) -> float:
        """Median over rounds of slow/fast step time: both ran in the same round, so drift cancels."""
        return median_ratio([b["step_s"] for b in timings[slow]], [a["step_s"] for a in timings[fast]])

    print(f"ray.shared_memory on vs off (ray 2 no shm / ray 2 step time): {paired('ray 2', 'ray 2 no shm'):.2f}x "
          f"(median of per-round ratios)")
    print(f"ray 2 / 2 procs = {paired('ray 2', '2 procs'):.2f}; 1 proc / torch loop = {paired('1 proc', 'torch loop'):.2f}x "
          f"(medians of per-round ratios; ratios of the medians above: "
          f"{med['2 procs']['step_s'] / med['ray 2']['step_s']:.2f}, {med['torch loop']['step_s'] / med['1 proc']['step_s']:.2f}x)")
    shm = ray2.shared_memory_calls == ray2.calls
    how = ("inline in each call" if ray2.meta_bytes < INLINE_META_BYTES
           else "one shared-memory write" if shm else "one ray.put")
    data = exp.corpus.nbytes if exp.corpus is not None else 0
    print(f"per step (ray 2): meta-parameters {human(ray2.meta_bytes)} ({how}), task specs {human(ray2.spec_bytes)} "
          f"in {ray2.calls} calls, gradients back {human(ray2.result_bytes)} ({groups} groups, "
          f"{'shared memory' if shm else 'object store'}); "
          f"dataset {human(data)} once per backend, never per step")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=None, help="measured steps per row (after one warm-up step)")
    ap.add_argument("--cases", default=",".join(CASES))
    args = parse_args(ap, QUICK)

    import ray

    torch.set_num_threads(1)
    # 5 logical CPUs: ray 1, ray 2 and ray 2 no shm (five actors) stay alive together and take turns;
    # only one row runs at a time.
    ray.init(num_cpus=5, include_dashboard=False, object_store_memory=512 * 1024**2, _temp_dir=RAY_TEMP_DIR,
             logging_level="warning", log_to_driver=False)
    print(f"{os.cpu_count()} CPUs; one torch thread per process; rows take turns a step at a time; "
          f"each row's median over its steps after 1 warm-up")
    try:
        for key in args.cases.split(","):
            run_case(key, args.steps or STEPS.get(key, DEFAULT_STEPS))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
