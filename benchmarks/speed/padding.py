"""What computing texts at their own width buys: one meta-batch at its own widths against padded to ``data.max_length``.

The same worker computes the same meta-batch both ways in one process, interleaved round by
round: as distmeta does (a group padded to its longest text, each task of the loop path cut to
its own), and as before (every text padded to ``data.max_length``). One torch thread; the
speed-up is the median of per-round ratios. The default case is the peers benchmark's ICD-10-CM
transformer (d192 x 3, second-order MAML, 5 inner steps, 16 tasks, float64).

    .venv/bin/python -m benchmarks.speed.padding [--case transformer2m-maml] [--rounds 5] [--quick]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import distmeta.tasks.materialise as materialise
from benchmarks.speed.common import median_ratio, parse_args
from benchmarks.speed.peers import CASES, build

QUICK = {"rounds": 1, "meta_batch": 4}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="transformer2m-maml", choices=sorted(CASES))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--meta-batch", type=int, default=16)
    args = parse_args(ap, QUICK)
    torch.set_num_threads(1)
    base, overrides = CASES[args.case]
    case = build(base, overrides, args.meta_batch, "float64", [])
    worker, specs = case["worker"], case["specs"]
    meta = {n: t.numpy() for n, t in case["meta"].items()}
    own_width = (materialise.trim_padding, materialise.TextTaskBuilder._longest)
    full_width = (lambda x, *_: x, lambda self, rows: self.corpus.max_length)  # trim_padding(x, pad_id): a no-op
    times: dict[str, list[float]] = {"own width": [], "max_length": []}
    for _ in range(args.rounds):
        for name, (trim, longest) in (("own width", own_width), ("max_length", full_width)):
            materialise.trim_padding, materialise.TextTaskBuilder._longest = trim, longest
            t0 = time.perf_counter()
            worker.meta_grad(meta, specs)
            times[name].append(time.perf_counter() - t0)
    materialise.trim_padding, materialise.TextTaskBuilder._longest = own_width
    ratios = [p / o for p, o in zip(times["max_length"], times["own width"])]
    speedup = median_ratio(times["max_length"], times["own width"])
    print(f"{args.case}, {args.meta_batch} tasks, {args.rounds} interleaved rounds, 1 thread: "
          f"own width {statistics.median(times['own width']):.3f} s, padded to max_length "
          f"{statistics.median(times['max_length']):.3f} s; speed-up {speedup:.2f}x "
          f"(per-round {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
