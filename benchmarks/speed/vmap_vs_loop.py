"""Per-meta-batch time of the vmap path versus the loop path, on the same tasks.

Both paths run in this one process, interleaved, so machine noise hits them alike;
the ratio is what to read. Usage:

    .venv/bin/python -m benchmarks.speed.vmap_vs_loop [--repeats 5] [--meta-batch 16] [--quick]
"""
from __future__ import annotations

import argparse
import statistics
import time

from benchmarks.speed.common import experiment, parse_args
from distmeta.worker import Worker

CASES = {
    "sinusoid mlp, maml": ["data.source=sinusoid", "model.name=mlp", "algorithm.name=maml", "data.shots=10", "data.queries=10"],
    "icd10cm bag, protonet (bag_protonet.yaml)": [],
    "icd10cm bag d64, maml (~260K)": ["model.name=bag", "model.dim=64", "tokenizer.vocab_size=4000", "algorithm.name=maml", "data.queries=5"],
    "icd10cm transformer d64, maml": ["model.name=transformer", "algorithm.name=maml", "model.dim=64", "model.layers=2", "model.ff_dim=128", "data.queries=5", "train.meta_batch=8"],
}
QUICK = {"repeats": 2, "meta_batch": 4}


def time_path(worker: Worker, meta, specs, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        worker.meta_grad(meta, specs)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--meta-batch", type=int, default=16)
    ap.add_argument("--config", default="configs/bag_protonet.yaml")
    args = parse_args(ap, QUICK)
    print(f"meta-batch {args.meta_batch}, {args.repeats} repeats each, interleaved; median seconds per meta-batch")
    print(f"{'case':36} {'params':>9} {'vmap s':>8} {'loop s':>8} {'loop/vmap':>9}")
    for name, overrides in CASES.items():
        cfg, exp = experiment(args.config, [*overrides, "resources.threads=1", "resources.workers=0"])
        specs = exp.sampler("train").batch(0, args.meta_batch)
        workers = {}
        for use_vmap in (True, False):
            c = cfg.model_copy(deep=True)
            c.algorithm.vmap = use_vmap
            workers[use_vmap] = Worker(c, **exp.worker_args())
        meta = {n: t.numpy() for n, t in workers[True].initial_meta.items()}
        n_params = sum(v.size for v in meta.values())
        for w in workers.values():
            w.meta_grad(meta, specs[:2])  # warm-up
        times = {True: [], False: []}
        for _ in range(args.repeats):
            for use_vmap in (True, False):
                times[use_vmap] += time_path(workers[use_vmap], meta, specs, 1)
        v, l = statistics.median(times[True]), statistics.median(times[False])
        print(f"{name:36} {n_params:>9,d} {v:8.3f} {l:8.3f} {l / v:9.2f}x", flush=True)


if __name__ == "__main__":
    main()
