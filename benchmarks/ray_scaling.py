"""Where the Ray backend's time goes, next to plain processes and a plain-PyTorch MAML loop.

For each case, on the same tasks and with one torch thread per process:

* ``1 proc``: one Worker in this process (the ``workers: 0`` trainer's compute);
* ``2 procs``: two plain processes (multiprocessing, no Ray), each computing half of
  every meta-batch at the same time; meta-parameters and gradients go over pipes;
* ``ray 1`` / ``ray 2``: distmeta's RayBackend with one and two actors, driven by the
  same loop as the trainer (sample, dispatch, fixed-order reduce, outer update);
* ``torch loop``: the algorithm as tutorials write it: a Python loop over tasks with
  ``torch.autograd.grad(create_graph=True)`` inner steps (MAML) or the prototype loss
  (ProtoNet), one backward per task, and ``torch.optim.SGD``.

Printed per case: tasks/s of each, their ratio to ``1 proc``, the driver's share of a
Ray step (sampling, reduce, update), Ray's transport share (dispatch time not spent
computing by the slowest actor) and the bytes that travel per step. Machine noise hits
all rows of a case alike: read the ratios, not the absolute numbers. Usage:

    .venv/bin/python benchmarks/ray_scaling.py [--steps 5] [--cases default,sinusoid,bag250k,transformer2m]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time

for _k, _v in {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}.items():
    os.environ.setdefault(_k, _v)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from distmeta.config import load_config  # noqa: E402
from distmeta.experiment import prepare_experiment  # noqa: E402
from distmeta.optim import OuterOptimizer  # noqa: E402
from distmeta.runtime.driver import reduce_groups  # noqa: E402
from distmeta.tasks.materialise import chunks, split_task  # noqa: E402
from distmeta.worker import DTYPES, Worker  # noqa: E402

COMMON = ["workers=0", "threads=1", "cpus_per_worker=1", "outer.name=sgd"]
CASES = {
    "default": ("the default: icd10cm embedding bag, protonet (configs/default.yaml)",
                ["train.meta_batch=16", "algorithm.group_size=8"]),
    "sinusoid": ("sinusoid mlp 1-40-40-1, maml",
                 ["data.source=sinusoid", "model.name=mlp", "algorithm.name=maml", "train.meta_batch=32", "algorithm.group_size=8"]),
    "bag250k": ("icd10cm bag d64 (~260K params), maml",
                ["model.name=bag", "model.dim=64", "tokenizer.vocab_size=4000", "algorithm.name=maml",
                 "algorithm.inner_lr=0.5", "data.queries=5", "train.meta_batch=16", "algorithm.group_size=4"]),
    "transformer2m": ("icd10cm transformer d192 x3 (~2M params), maml",
                      ["model.name=transformer", "model.dim=192", "model.heads=4", "model.layers=3", "model.ff_dim=384",
                       "tokenizer.vocab_size=6000", "algorithm.name=maml", "algorithm.inner_lr=0.1", "data.queries=5",
                       "train.meta_batch=8", "algorithm.group_size=2"]),
}
RAY_TEMP_DIR = "/tmp/dmray_bench"


# ---------------------------------------------------------------------- the trainer's loop, any backend


def drive(cfg, exp, compute, steps: int, warmup: int = 1) -> dict[str, float]:
    """The driver loop of ``Trainer.fit`` around ``compute(meta, groups, version)``; timings of the measured steps."""
    w = Worker(cfg, **exp.worker_args()) if compute is None else None
    init = w.initial_meta if w is not None else compute.initial_meta
    opt = OuterOptimizer(cfg.outer, init, seed=cfg.seed)
    sampler = exp.sampler("train")
    dtype = DTYPES[cfg.dtype]
    run = (lambda m, g, v: w.meta_grad_groups(m, g, v)) if w is not None else compute.compute
    step_s, driver_s, dispatch_s, slowest_s = [], [], [], []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        specs = sampler.batch(step, cfg.train.meta_batch)
        groups = [specs[r.start: r.stop] for r in chunks(len(specs), cfg.algorithm.group_size)]
        meta = {n: p.detach().cpu().numpy() for n, p in opt.params.items()}
        t1 = time.perf_counter()
        results = run(meta, groups, step)
        t2 = time.perf_counter()
        grad = reduce_groups(results, opt.names, dtype)
        opt.step({n: g / len(specs) for n, g in grad.items()})
        t3 = time.perf_counter()
        if step >= warmup:
            step_s.append(t3 - t0)
            driver_s.append((t1 - t0) + (t3 - t2))
            dispatch_s.append(t2 - t1)
            per_actor: dict[int, float] = {}  # compute time of each process (in-process: the sum over groups)
            for r in results:
                k = r.extra.get("actor", 0)
                per_actor[k] = r.extra["actor_compute_s"] if "actor_compute_s" in r.extra else per_actor.get(k, 0.0) + r.compute_s
            slowest_s.append(max(per_actor.values()))
    med = statistics.median
    return {"tasks_per_s": cfg.train.meta_batch / med(step_s), "step_s": med(step_s),
            "driver_share": med(driver_s) / med(step_s),
            "transport_share": max(0.0, med(dispatch_s) - med(slowest_s)) / med(step_s)}


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

    def compute(self, meta, groups, version):
        half = len(groups) // 2
        parts = [groups[:half], groups[half:]]
        for c, part in zip(self.conns, parts):
            c.send((meta, part, version))
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


def torch_loop(cfg, exp, steps: int, warmup: int = 1) -> dict[str, float]:
    """Per-task Python loop with torch.optim.SGD: MAML with autograd.grad(create_graph=True) inner
    steps, or ProtoNet's prototype loss, each task's loss backpropagated on its own."""
    worker = Worker(cfg, **exp.worker_args(), threads=1)  # the same network, initialisation and tasks
    model = worker.module
    params = {n: p for n, p in model.named_parameters() if n in worker.initial_meta}
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.SGD(params.values(), lr=cfg.outer.lr)
    regression = cfg.data.is_regression
    loss_fn = torch.nn.functional.mse_loss if regression else torch.nn.functional.cross_entropy
    lr, inner = cfg.algorithm.inner_lr, cfg.algorithm.inner_steps
    sampler = exp.sampler("train")
    times = []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        batch = worker.builder.build(sampler.batch(step, cfg.train.meta_batch))
        n_tasks = batch["support_x"].shape[0]
        opt.zero_grad()
        for i in range(n_tasks):
            task = split_task(batch, i)
            if cfg.algorithm.name == "protonet":
                support = model(task["support_x"], head=False)
                query = model(task["query_x"], head=False)
                protos = torch.stack([support[task["support_y"] == c].mean(0) for c in range(cfg.data.ways)])
                loss = loss_fn(-torch.cdist(query, protos) ** 2, task["query_y"])
            else:
                fast = dict(params)
                for _ in range(inner):
                    out = torch.func.functional_call(model, fast, (task["support_x"],))
                    grads = torch.autograd.grad(loss_fn(out, task["support_y"]), list(fast.values()), create_graph=True)
                    fast = {n: p - lr * g for (n, p), g in zip(fast.items(), grads)}
                loss = loss_fn(torch.func.functional_call(model, fast, (task["query_x"],)), task["query_y"])
            (loss / n_tasks).backward()
        opt.step()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    return {"tasks_per_s": cfg.train.meta_batch / statistics.median(times), "step_s": statistics.median(times)}


# ---------------------------------------------------------------------- main


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5, help="measured steps per row (after one warm-up step)")
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args()

    import ray

    from distmeta.runtime.actors import RayBackend

    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=512 * 1024**2, _temp_dir=RAY_TEMP_DIR,
             logging_level="warning", log_to_driver=False)
    print(f"{os.cpu_count()} CPUs; one torch thread per process; median of {args.steps} steps after 1 warm-up")
    try:
        for key in args.cases.split(","):
            title, overrides = CASES[key]
            cfg = load_config(None, [*COMMON, *overrides])
            exp = prepare_experiment(cfg)
            n_params = sum(v.numel() for v in Worker(cfg, **exp.worker_args(), threads=1).initial_meta.values())
            groups = len(chunks(cfg.train.meta_batch, cfg.algorithm.group_size))
            print(f"\n== {title}: {n_params:,} meta-parameters, meta-batch {cfg.train.meta_batch} in {groups} groups")
            rows: dict[str, dict[str, float]] = {}
            rows["1 proc"] = drive(cfg, exp, None, args.steps)
            two = TwoProcesses(cfg, exp.worker_args())
            try:
                rows["2 procs"] = drive(cfg, exp, two, args.steps)
            finally:
                two.close()
            moved = {}
            for n in (1, 2):
                c = cfg.model_copy(deep=True)
                c.workers = n
                backend = RayBackend(c, exp.worker_args())
                backend.measure_spec_bytes = True
                try:
                    rows[f"ray {n}"] = drive(c, exp, backend, args.steps)
                    moved[n] = backend.last_step
                finally:
                    backend.close()
            rows["torch loop"] = torch_loop(cfg, exp, args.steps)

            base = rows["1 proc"]["tasks_per_s"]
            print(f"{'':12} {'tasks/s':>9} {'x 1 proc':>9} {'step s':>8} {'driver':>7} {'transport':>9}")
            for name, r in rows.items():
                share = f"{100 * r['driver_share']:6.1f}%" if "driver_share" in r else f"{'':7}"
                transport = f"{100 * r['transport_share']:8.1f}%" if "transport_share" in r and name != "1 proc" else f"{'':9}"
                print(f"{name:12} {r['tasks_per_s']:9.1f} {r['tasks_per_s'] / base:9.2f} {r['step_s']:8.3f} {share} {transport}")
            s = moved[2]
            data = exp.token_ids.nbytes if exp.token_ids is not None else 0
            print(f"per step (ray 2): meta-parameters {human(s.meta_bytes)} (one ray.put), task specs {human(s.spec_bytes)} "
                  f"in {s.calls} calls, gradients back {human(s.result_bytes)} ({groups} groups); "
                  f"dataset {human(data)} once per backend, never per step")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
