"""Peak memory and time of second-order meta-gradients as the inner loop grows.

Rows: MAML storing every inner step (the default), MAML with ``algorithm.checkpoint_inner``
(each step recomputed in the backward pass) and iMAML (implicit gradient, nothing of the
inner loop kept), at 1, 5, 10 and 20 inner steps, on one group of tasks whose support set
is large enough that activations, not parameters, dominate. Before timing, the
checkpointed meta-gradient is checked against the stored one. Time is the median of
interleaved rounds in one process with one torch thread; peak memory is measured in a
separate call (distmeta.groups.sizing.peak_memory).

    .venv/bin/python -m benchmarks.speed.inner_memory [--rounds 3] [--steps 1,5,10,20] [--json out.json] [--quick]
"""
from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.speed.common import in_process_worker, interleaved_times, median_ratio, parse_args, write_rows

BASE = "configs/bag_protonet.yaml"
QUICK = {"rounds": 1, "steps": "1,2"}
CASE = ["model.name=transformer", "model.dim=192", "model.heads=4", "model.layers=3", "model.ff_dim=384",
        "tokenizer.vocab_size=6000", "data.ways=5", "data.shots=10", "data.queries=5", "algorithm.inner_lr=0.05",
        "data.ways_range=null"]
VARIANTS = {
    "maml stored": ["algorithm.name=maml"],
    "maml checkpoint_inner": ["algorithm.name=maml", "algorithm.checkpoint_inner=true"],
    "imaml": ["algorithm.name=imaml", "algorithm.imaml_lambda=1", "algorithm.cg_steps=5"],
}


def worker_for(variant: str, steps: int, args: argparse.Namespace) -> Any:
    os.environ.pop("DISTMETA_BASE_CONFIG", None)
    _, exp, worker = in_process_worker(BASE, [*CASE, *VARIANTS[variant], f"algorithm.inner_steps={steps}",
                                              f"dtype={args.dtype}", f"train.meta_batch={args.tasks}",
                                              f"algorithm.group_size={args.tasks}", "resources.threads=1", "resources.workers=0", *args.set])
    return worker, exp.sampler("train").batch(0, args.tasks)


def main() -> None:
    from distmeta.groups.sizing import MB, peak_memory

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", default="1,5,10,20")
    ap.add_argument("--tasks", type=int, default=2, help="tasks in the group")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--set", action="append", default=[], help="extra config override (repeatable)")
    ap.add_argument("--json", type=Path)
    args = parse_args(ap, QUICK)
    torch.set_num_threads(1)
    print(f"one group of {args.tasks} tasks, {args.dtype}, 1 torch thread, median of {args.rounds} interleaved rounds")
    print(f"{'inner steps':>11} {'variant':24} {'peak MB':>8} {'median s':>9} {'vs stored':>16}")
    rows = []
    for steps in [int(s) for s in args.steps.split(",")]:
        workers = {v: worker_for(v, steps, args) for v in VARIANTS}
        meta = {n: t.numpy() for n, t in workers["maml stored"][0].initial_meta.items()}
        calls = {v: (lambda w=w, s=s: w.meta_grad(meta, s)) for v, (w, s) in workers.items()}
        stored, ckpt = calls["maml stored"]().grad, calls["maml checkpoint_inner"]().grad
        err = max(float(np.abs(ckpt[n] - stored[n]).max() / max(np.abs(stored[n]).max(), 1e-30)) for n in stored)
        times = interleaved_times(calls, args.rounds)
        for v, call in calls.items():
            peak = peak_memory(call)[1] / MB
            ratio = median_ratio(times[v], times["maml stored"])
            row = {"steps": steps, "variant": v, "peak_mb": peak, "median_s": statistics.median(times[v]),
                   "time_vs_stored": ratio, "checkpoint_max_rel_diff": err}
            rows.append(row)
            print(f"{steps:>11} {v:24} {peak:8.1f} {row['median_s']:9.3f} {ratio:15.2f}x", flush=True)
        print(f"{'':>11} checkpointed vs stored meta-gradient: max relative difference {err:.1e}")
    by = {(r["steps"], r["variant"]): r for r in rows}
    first, last = min(r["steps"] for r in rows), max(r["steps"] for r in rows)
    for v in VARIANTS:
        growth = by[(last, v)]["peak_mb"] / max(by[(first, v)]["peak_mb"], 1e-9)
        print(f"{v}: peak at {last} steps = {growth:.2f}x the peak at {first}")
    write_rows(args.json, args, rows)


if __name__ == "__main__":
    main()
