"""Corpora of millions of rows: load + tokenise time, driver and per-actor memory, steps/s.

For each size a generated CSV corpus (``--classes`` classes, short texts of class-specific
and shared words, written in chunks) is meta-trained with ``configs/bag_protonet.yaml`` (the
from-scratch bag, a wordpiece tokenizer trained on the meta-train rows). Every measurement
runs in a fresh child process:

* ``load (first run)``: ``prepare_experiment`` with empty datasets and token caches (CSV to
  Arrow, label encoding, class split, tokenizer training, tokenising with ``datasets.map``);
* ``load (cached)``: the same again, reading the caches a first run left;
* ``train, N actors``: ``--steps`` meta-training steps on N Ray actors; steps/s is the inverse
  of the median ``train/step_time`` after ``--warmup`` steps. Memory is read from
  ``/proc/<pid>/status`` after training: ``RSS``, its anonymous (private heap) part, its shared
  part (``RssShmem``: Ray's object store, where the corpus lives once per node) and the
  driver's peak (``VmHWM``). The corpus's compact size (ids + offsets) is given beside them.

    .venv/bin/python -m benchmarks.speed.corpus_scale                       # 100K, 1M and 5M rows
    .venv/bin/python -m benchmarks.speed.corpus_scale --rows 100000 --steps 20   # a shorter check
    .venv/bin/python -m benchmarks.speed.corpus_scale --quick    # 20K rows, 1 actor, 5 steps; written to a temporary folder

Writes ``corpus_scale.json`` and ``corpus_scale.md`` to ``--out``; generated corpora and caches
go to ``--data-dir`` (several GB at 5M rows; reused by later runs).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.speed.common import BAG_CONFIG as CONFIG
from benchmarks.speed.common import RESULTS, ROOT, parse_args

ENV = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
       "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "TOKENIZERS_PARALLELISM": "false"}
#: The suite's run: one small corpus, one actor, a few steps; the table goes to a temporary folder, not results/.
QUICK = {"rows": [20_000], "workers": [1], "steps": 5, "warmup": 1,
         "out": str(Path(tempfile.gettempdir()) / "distmeta_corpus_scale_quick")}


def generate(path: Path, rows: int, classes: int, seed: int = 0, chunk: int = 100_000) -> None:
    """A CSV of ``rows`` texts over ``classes`` labels, written ``chunk`` rows at a time (memory stays flat)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    syllables = [a + b for a in "bcdfghklmnprstvz" for b in "aeiou"]
    vocab = np.array(sorted({"".join(rng.choice(syllables, size=rng.integers(2, 4))) for _ in range(40_000)}))
    own = rng.integers(0, len(vocab), size=(classes, 40))  # each class's topic words
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            label = rng.integers(0, classes, size=n)
            topic = own[label[:, None], rng.integers(0, 40, size=(n, 6))]
            shared = rng.integers(0, len(vocab), size=(n, 4))
            words = vocab[np.concatenate([topic, shared], axis=1)]
            w.writerows((" ".join(ws), f"class_{c:04d}") for ws, c in zip(words.tolist(), label.tolist()))
    tmp.rename(path)


def status(pid: int | str = "self") -> dict[str, float]:
    """MiB of ``VmRSS``, ``RssAnon``, ``RssFile``, ``RssShmem``, ``VmHWM`` of a process, and ``store``: its
    resident pages of Ray's object store (``/dev/shm/plasma*`` mappings), where the corpus lives on a node."""
    out = {"store": 0.0}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    plasma = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(None, 5)
        if len(head) >= 5 and "-" in head[0] and not line.endswith(":"):
            plasma = len(head) == 6 and "/plasma" in head[5]
        elif plasma and line.startswith("Rss:"):
            out["store"] += int(line.split()[1]) / 1024
    return out


def actor_pids() -> list[int]:
    """This process's Ray actors (descendants named ``ray::WorkerActor``)."""
    import psutil

    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "WorkerActor" in " ".join(p.cmdline()[:1]) or "WorkerActor" in p.name():
                found.append(p.pid)
        except psutil.Error:
            continue
    return sorted(found)


def overrides(csv_path: Path, workers: int, steps: int, run_dir: Path) -> list[str]:
    return [f"data.source=csv:{csv_path}", "data.small_classes=drop", f"resources.workers={workers}", f"train.steps={steps}",
            "run.eval_every=0", "run.checkpoint_every=0", "run.log_every=1", "run.progress=false",
            "eval.settings=[[5,1]]", "eval.episodes=2", "eval.baseline=false", f"run.dir={run_dir}"]


def child_load(args: argparse.Namespace) -> dict:
    """One ``prepare_experiment`` of the corpus: time, memory, corpus size."""
    from distmeta.config import load_config
    from distmeta.experiment import prepare_experiment

    cfg = load_config(CONFIG, overrides(args.csv, 0, 1, args.run_dir))
    t0 = time.perf_counter()
    exp = prepare_experiment(cfg)
    seconds = time.perf_counter() - t0
    c = exp.corpus
    return {"seconds": seconds, "driver": status(), "rows": len(c), "tokens": int(len(c.ids)),
            "id_dtype": str(c.ids.dtype), "corpus_mib": c.nbytes / 2**20,
            "padded_int64_mib": len(c) * cfg.data.max_length * 8 / 2**20}


def child_train(args: argparse.Namespace) -> dict:
    """``--steps`` meta-training steps on ``--workers`` actors: steps/s, driver and actor memory."""
    import distmeta
    from distmeta.config import load_config

    cfg = load_config(CONFIG, overrides(args.csv, args.workers, args.steps, args.run_dir))
    t0 = time.perf_counter()
    with distmeta.Trainer(cfg, overwrite=True) as trainer:
        trainer.fit()
        actors = {pid: status(pid) for pid in actor_pids()}
        driver = status()
        corpus_mib = trainer.exp.corpus.nbytes / 2**20
    rows = [json.loads(line) for line in (Path(cfg.run.dir) / "metrics.jsonl").read_text().splitlines()]
    times = [r["train/step_time"] for r in rows if "train/step_time" in r and r["step"] > args.warmup]
    return {"seconds": time.perf_counter() - t0, "steps_per_s": 1 / statistics.median(times), "driver": driver,
            "actors": list(actors.values()), "corpus_mib": corpus_mib}


def run_child(mode: str, csv_path: Path, data_dir: Path, extra: list[str]) -> dict:
    """Run this script as ``--child MODE`` in a fresh process (its own caches under ``data_dir``) and read its JSON."""
    out = data_dir / f"child-{os.getpid()}.json"
    env = {**os.environ, **ENV, "DISTMETA_CACHE_DIR": str(data_dir / "cache"), "HF_DATASETS_CACHE": str(data_dir / "hf"),
           "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "benchmarks.speed.corpus_scale", "--child", mode, "--csv", str(csv_path), "--result", str(out),
           "--run-dir", str(data_dir / "run"), *extra]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    return json.loads(out.read_text())


def measure(rows: int, args: argparse.Namespace) -> dict:
    """Every row of the table for one corpus size."""
    data_dir = Path(args.data_dir) / f"rows{rows}"
    data_dir.mkdir(parents=True, exist_ok=True)
    csv_path = data_dir / "corpus.csv"
    if not csv_path.exists():
        t0 = time.perf_counter()
        generate(csv_path, rows, args.classes)
        print(f"generated {csv_path} ({csv_path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s", flush=True)
    for cache in ("cache", "hf"):
        shutil.rmtree(data_dir / cache, ignore_errors=True)
    result = {"rows": rows, "classes": args.classes, "load_first": run_child("load", csv_path, data_dir, [])}
    result["load_cached"] = run_child("load", csv_path, data_dir, [])
    for w in args.workers:
        result[f"train_{w}"] = run_child("train", csv_path, data_dir,
                                         ["--workers", str(w), "--steps", str(args.steps), "--warmup", str(args.warmup)])
    print(json.dumps(result), flush=True)
    return result


def table(results: list[dict], workers: list[int]) -> str:
    """The Markdown table of every size."""
    head = ["rows", "corpus (compact / padded int64)", "load first", "load cached", "driver RSS (anon) after load",
            *[f"{w} actor{'s' if w > 1 else ''}: steps/s, driver RSS peak, per-actor RSS (private anon + object store)"
              for w in workers]]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in results:
        first, cached = r["load_first"], r["load_cached"]
        cells = [f"{r['rows']:,}", f"{first['corpus_mib']:.0f} MiB ({first['id_dtype']}) / {first['padded_int64_mib']:.0f} MiB",
                 f"{first['seconds']:.1f} s", f"{cached['seconds']:.1f} s",
                 f"{cached['driver']['VmRSS']:.0f} MiB ({cached['driver']['RssAnon']:.0f})"]
        for w in workers:
            t = r[f"train_{w}"]
            per = ", ".join(f"{a['VmRSS']:.0f} ({a['RssAnon']:.0f} + {a['store']:.0f})" for a in t["actors"])
            cells.append(f"{t['steps_per_s']:.1f}, {t['driver']['VmHWM']:.0f} MiB, {per} MiB")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000, 5_000_000])
    ap.add_argument("--classes", type=int, default=500)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--data-dir", default=str(Path.home() / ".cache" / "distmeta" / "corpus_scale"))
    ap.add_argument("--out", default=str(RESULTS / "corpus_scale"))
    ap.add_argument("--child", choices=["load", "train"])
    ap.add_argument("--csv", type=Path)
    ap.add_argument("--result", type=Path)
    ap.add_argument("--run-dir", type=Path)
    args = parse_args(ap, QUICK)
    if args.child:
        args.workers = args.workers[0]
        args.result.write_text(json.dumps(child_load(args) if args.child == "load" else child_train(args)))
        return
    results = [measure(rows, args) for rows in args.rows]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "corpus_scale.json").write_text(json.dumps(results, indent=1))
    md = table(results, args.workers)
    (out / "corpus_scale.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
