"""What a stronger encoder costs: two configs' frozen-prefix cache, meta-training steps and episodes, side by side.

For each config (default: ``configs/mpnet.yaml`` against ``configs/default.yaml``), the frozen-prefix
cache is built for the rows of the episodes timed only (its per-token cost, extrapolated to the
whole corpus, is what a cold run pays once per node), then ``--steps`` meta-training steps are
timed a step of each config at a time (interleaved, so drift on a shared machine hits both), then
10 meta-test and 10 baseline episodes per setting. Both wall and process-CPU seconds are printed:
on a shared machine the CPU seconds are the steadier measure. One in-process worker, 2 threads.

    .venv/bin/python -m benchmarks.speed.encoder_cost [--configs configs/mpnet.yaml configs/default.yaml] [--steps 4] [--quick]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.speed.common import experiment, parse_args
from distmeta.config import load_config
from distmeta.models import build_model, select_params
from distmeta.models.prefix import frozen_prefix_layers, open_or_build
from distmeta.worker import Worker

#: The default alone (MPNet's cache is most of a two-config run), one step timed after the warm-up step.
QUICK = {"steps": 2, "configs": ["configs/default.yaml"]}


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(t: tuple[float, float]) -> tuple[float, float]:
    """(wall, process CPU) seconds since ``t``."""
    return time.perf_counter() - t[0], time.process_time() - t[1]


def setup(path: str, steps: int, cache_dir: Path) -> dict[str, Any]:
    """The config's worker over a prefix cache of just the rows its timed episodes read; prints the cache's cost."""
    cfg, exp = experiment(path, ["resources.workers=0", "run.progress=false", "model.prefix_cache=false"])
    corpus = exp.corpus
    train = [exp.sampler("train").batch(s, cfg.train.meta_batch) for s in range(steps)]
    evals = [(split, shots, exp.sampler(split, ways=5, shots=shots, queries=15).batch(0, 10))
             for split, shots in (("val", 1), ("test", 5))]
    rows = np.array(sorted({r + corpus.starts[sp.source] for specs in train + [e[2] for e in evals]
                            for sp in specs for g in (sp.support + sp.query) for r in g}))
    module = build_model(cfg, exp.vocab_size, cfg.data.ways).float()
    layers = frozen_prefix_layers(module, set(select_params(module, cfg.model.trainable)))
    t = clock()
    cache = open_or_build(module, layers, corpus, rows, cache_dir, progress=False)
    wall, cpu = since(t)
    tokens = int(np.minimum(corpus.lengths()[rows], corpus.max_length).sum())
    scale = int(np.minimum(corpus.lengths(), corpus.max_length).sum()) / tokens
    print(f"{path}: prefix cache, {layers} layers, {len(rows)} rows / {tokens} tokens: wall {wall:.1f} s, cpu {cpu:.1f} s;"
          f" the whole corpus ({scale * tokens:.0f} tokens): wall {scale * wall / 60:.1f} min, cpu {scale * cpu / 60:.1f} min",
          flush=True)
    run = load_config(path, ["resources.workers=0", "run.progress=false"])
    worker = Worker(run, corpus=corpus, vocab_size=exp.vocab_size, threads=2,
                    prefix_cache={"path": str(cache.path), "layers": layers, "rows": rows.tolist()})
    return {"cfg": run, "worker": worker, "train": train, "evals": evals}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=["configs/mpnet.yaml", "configs/default.yaml"])
    ap.add_argument("--steps", type=int, default=4)
    args = parse_args(ap, QUICK)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {p: setup(p, args.steps, Path(tmp) / f"prefix{i}") for i, p in enumerate(args.configs)}
        times: dict[str, list[tuple[float, float]]] = {p: [] for p in runs}
        for step in range(args.steps):
            for p, r in runs.items():
                w, size = r["worker"], r["cfg"].algorithm.group_size
                meta = {n: t.numpy() for n, t in w.initial_meta.items()}
                specs = r["train"][step]
                t = clock()
                w.meta_grad_groups(meta, [specs[i : i + size] for i in range(0, len(specs), size)])
                times[p].append(since(t))
        for p in runs:  # the first step warms up
            print(f"{p}: median meta-training step wall {statistics.median(a for a, _ in times[p][1:]):.2f} s, "
                  f"cpu {statistics.median(b for _, b in times[p][1:]):.2f} s", flush=True)
        for p, r in runs.items():
            meta = {n: t.numpy() for n, t in r["worker"].initial_meta.items()}
            for split, shots, specs in r["evals"]:
                for baseline in (False, True):
                    t = clock()
                    r["worker"].evaluate(meta, specs, inner_steps=0, baseline=baseline, cache_key=f"{split}{baseline}")
                    wall, cpu = since(t)
                    print(f"{p}: 5-way {shots}-shot {'baseline' if baseline else 'meta-test'}, 10 episodes: "
                          f"wall {wall:.2f} s, cpu {cpu:.2f} s", flush=True)


if __name__ == "__main__":
    main()
