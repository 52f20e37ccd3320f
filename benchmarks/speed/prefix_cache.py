"""Frozen-prefix cache: meta-training steps per second with and without it, same tasks, same parameters.

The case is a pretrained encoder with only its last layers meta-trained (``model.trainable:
last:N``), the shape where the cache applies. Both rows are one in-process :class:`Worker`
each, built from the same config but for ``model.prefix_cache``; they take turns a step at a
time on the same meta-batches (rounds interleaved, so drift on this machine hits both), and
the speed-up is the median of per-round time ratios. Before timing, the two meta-gradients
of one meta-batch are compared (they must agree to float32 rounding: the cached path pads
each batch to its longest row instead of ``data.max_length``, nothing else differs).

    .venv/bin/python -m benchmarks.speed.prefix_cache [--config configs/default.yaml] [--rounds 20] [--quick] [key=value ...]

``--csv-rows N`` (``--quick``: 2,000, with one-task steps) meta-trains on a generated corpus of N rows instead, with
its own cache folder, so no cache of the whole ICD-10-CM corpus has to be built first.

Prints the cache's size and build time, the gradient difference and the table.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.speed.common import experiment, median_ratio, parse_args
from distmeta.config import load_config
from distmeta.worker import Worker

#: One round of one-task steps on a small generated corpus (its cache is built in seconds, then reused).
QUICK = {"rounds": 1, "csv_rows": 2000, "overrides": ["train.meta_batch=1"]}


def generated_corpus(rows: int) -> list[str]:
    """Overrides that point the run at a generated ``rows``-row corpus of 40 classes, its caches beside it.

    The corpus (``corpus_scale.generate``, seeded) and its prefix cache are kept in the temporary
    folder and reused by the next run of the same size.
    """
    from benchmarks.speed.corpus_scale import generate

    folder = Path(tempfile.gettempdir()) / "distmeta_prefix_cache_bench" / f"rows{rows}"
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / "corpus.csv"
    if not csv_path.exists():
        generate(csv_path, rows, classes=40)
    return [f"data.source=csv:{csv_path}", f"model.cache_dir={folder / 'cache'}"]


def step_time(worker: Worker, meta: dict, groups: list) -> float:
    t0 = time.perf_counter()
    worker.meta_grad_groups(meta, groups)
    return time.perf_counter() - t0


def rel_diff(a: dict, b: dict) -> float:
    """``||a - b|| / ||b||`` over all parameters together (per-tensor ratios blow up on gradients
    that are zero in exact arithmetic, such as attention key biases)."""
    num = sum(float(((a[n] - b[n]).astype(np.float64) ** 2).sum()) for n in b)
    den = sum(float((b[n].astype(np.float64) ** 2).sum()) for n in b)
    return (num / max(den, 1e-300)) ** 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker (both rows)")
    ap.add_argument("--csv-rows", type=int, default=0, help="a generated corpus of this many rows instead (0: the config's)")
    ap.add_argument("overrides", nargs="*")
    args = parse_args(ap, QUICK)
    if args.csv_rows:
        args.overrides = [*generated_corpus(args.csv_rows), *args.overrides]
    t0 = time.perf_counter()
    cfg, exp = experiment(args.config, ["resources.workers=0", "run.progress=false", *args.overrides])
    prep_s = time.perf_counter() - t0
    if exp.prefix is None:
        raise SystemExit(f"{args.config}: no frozen prefix to cache (model.trainable / algorithm.adapt move every layer)")
    today = load_config(args.config, ["resources.workers=0", "run.progress=false", *args.overrides, "model.length_buckets=1"])
    rows = {  # name -> worker; "today" is the full forward of every layer at data.max_length, as before the cache
        "full forward, rows padded to data.max_length (before)": Worker(today, **{**exp.worker_args(), "prefix_cache": None},
                                                                         threads=args.threads),
        "full forward, length buckets": Worker(cfg, **{**exp.worker_args(), "prefix_cache": None}, threads=args.threads),
        "frozen-prefix cache + length buckets": Worker(cfg, **exp.worker_args(), threads=args.threads),
    }
    names = list(rows)
    meta = {n: t.numpy() for n, t in rows[names[-1]].initial_meta.items()}
    sampler = exp.sampler("train")
    size = cfg.algorithm.group_size

    def groups(step: int) -> list:
        specs = sampler.batch(step, cfg.train.meta_batch)
        return [specs[i : i + size] for i in range(0, len(specs), size)]

    reference = rows[names[0]].meta_grad_groups(meta, groups(0))
    diffs = {n: max(rel_diff(a.grad, b.grad) for a, b in zip(rows[n].meta_grad_groups(meta, groups(0)), reference))
             for n in names[1:]}
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(1, args.rounds + 1):  # interleaved: one step of each row per round, order rotating
        g = groups(r)
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            times[name].append(step_time(rows[name], meta, g))
    layers = exp.prefix["layers"]
    print(f"config {args.config} {' '.join(args.overrides)}: {cfg.model.name} trainable={cfg.model.trainable}, "
          f"algorithm={cfg.algorithm.name}, {cfg.train.meta_batch} tasks/step, {args.threads} thread(s)")
    print(f"prefix cache: {layers} frozen layers, {len(exp.prefix['rows'])} examples "
          f"(data + tokenizer + cache ready in {prep_s:.1f} s; a cache already on disk is reused)")
    for n, d in diffs.items():
        print(f"meta-gradient of one meta-batch, {n} vs before: relative difference {d:.2e}")
    print(f"| path | median step (s) | steps/s | speed-up vs before (median of {args.rounds} per-round ratios, range) |")
    print("| --- | --- | --- | --- |")
    for n in names:
        ratios = [a / b for a, b in zip(times[names[0]], times[n])]
        med = statistics.median(times[n])
        print(f"| {n} | {med:.3f} | {1 / med:.2f} | {median_ratio(times[names[0]], times[n]):.2f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f}) |")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
