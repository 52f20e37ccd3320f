"""How fast distmeta could be against the peers if its own machinery cost nothing.

distmeta and every peer compute the same meta-gradient through the same model (``peers.py``
checks they are equal before timing), so they run
the same forward, backward and double-backward operations on the activations. What can
differ is the machinery around them: parameter dicts, inner updates, their backward,
accumulation. This benchmark bounds how much of distmeta's time that machinery can be: it
profiles one distmeta meta-batch and sums the self time of every ATen op whose tensor
inputs all have a meta-parameter's shape (the inner update, its backward, gradient
accumulation; it also counts some of the model's own weight-gradient work, so it
over-estimates the machinery). Taking all of that away leaves a floor for distmeta's time,
and the fastest peer's time over that floor is the most any machinery could reach.

Times come from interleaved rounds in this one process (one thread, float64); the profile
is a separate call.

    .venv/bin/python -m benchmarks.speed.machinery_bound [--case transformer2m-maml] [--rounds 3] [--out DIR] [--quick]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.speed.common import interleaved_times, parse_args, report
from benchmarks.speed.peers import CASES, build, implementations

QUICK = {"rounds": 1, "meta_batch": 2}
GEMMS = ("aten::mm", "aten::addmm", "aten::bmm")


def profile_split(run, param_shapes: set[tuple[int, ...]]) -> dict[str, float]:
    """One profiled call of ``run``: its wall seconds and the ATen self time of all ops, GEMMs, ops on parameter-shaped tensors only."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        run()
        wall = time.perf_counter() - t0
    events = [e for e in prof.key_averages(group_by_input_shape=True) if e.key.startswith("aten::")]

    def params_only(e) -> bool:
        shapes = [tuple(s) for s in e.input_shapes if isinstance(s, list) and len(s) > 0]
        return bool(shapes) and all(s in param_shapes for s in shapes)

    total = lambda keep: sum(e.self_cpu_time_total for e in events if keep(e)) / 1e6  # noqa: E731
    return {"wall": wall, "aten": total(lambda e: True), "gemm": total(lambda e: e.key in GEMMS), "params_only": total(params_only)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="transformer2m-maml", choices=[c for c in CASES if c.endswith("maml")])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--meta-batch", type=int, default=16)
    ap.add_argument("--out", default=None, help="directory for machinery_bound.txt")
    args = parse_args(ap, QUICK)
    torch.set_num_threads(1)
    base, overrides = CASES[args.case]
    case = build(base, overrides, args.meta_batch, "float64", [])
    impls = {n: f for n, f in implementations(case).items() if callable(f)}
    for fn in impls.values():  # warm-up: first calls build caches and thread pools
        fn()
    times = interleaved_times(impls, args.rounds)
    split = profile_split(impls["distmeta"], {tuple(t.shape) for t in case["meta"].values()})
    ours = statistics.median(times["distmeta"])
    peers = {n: statistics.median(ts) for n, ts in times.items() if n != "distmeta"}
    fastest = min(peers, key=peers.get)
    # Machinery = the parameter-shaped ops; and, more generously, also all time outside ATen ops
    # (Python, the autograd engine), as fractions of the profiled call applied to the timed median.
    share = split["params_only"] / split["wall"]
    floor = ours * (1 - share)
    floor_all = ours * (split["aten"] - split["params_only"]) / split["wall"]
    lines = [
        f"{args.case}, {args.meta_batch} tasks, float64, 1 thread, {args.rounds} interleaved rounds",
        "median s: " + ", ".join(f"{n} {t:.3f}" for n, t in {"distmeta": ours, **peers}.items()),
        f"distmeta profile: ATen self {split['aten']:.2f} s, GEMMs {split['gemm']:.2f} s, ops on "
        f"parameter-shaped tensors only {split['params_only']:.2f} s, of {split['wall']:.2f} s wall (profiled)",
        f"fastest peer {fastest}: distmeta {peers[fastest] / ours:.2f}x it now",
        f"  if the parameter-shaped ops cost nothing (floor {floor:.3f} s): at most {peers[fastest] / floor:.2f}x",
        f"  if they and everything outside ATen ops (Python, autograd engine) cost nothing "
        f"(floor {floor_all:.3f} s): at most {peers[fastest] / floor_all:.2f}x",
    ]
    report(lines, args.out, "machinery_bound.txt")


if __name__ == "__main__":
    main()
