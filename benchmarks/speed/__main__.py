"""The speed suite: every speed benchmark's ``--quick`` mode, one after another, each in its own process.

    python -m benchmarks.speed [--only NAME,...] [--skip NAME,...] [--timeout S] [--list]

(``make bench`` runs it; ``make bench ARGS="--only padding"`` passes flags.) A fresh process per
benchmark keeps one's Ray session, torch threads or patched functions from touching the next.
A benchmark whose optional dependency is not installed is skipped with the reason; an opt-in
one (it needs root, or the machine to itself) runs only when ``--only`` names it. The suite
ends with a table of each benchmark's status and wall time, and exits 1 if any failed.
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from dataclasses import dataclass

from benchmarks.speed.common import ROOT


@dataclass(frozen=True)
class Benchmark:
    """One speed benchmark of the suite (the module ``benchmarks.speed.NAME``)."""

    name: str
    needs: tuple[str, ...] = ()  # modules it imports that distmeta's own install does not bring
    opt_in: str = ""  # why it runs only when --only names it


SUITE = (
    Benchmark("vmap_vs_loop"),
    Benchmark("padding"),
    Benchmark("task_batching"),
    Benchmark("machinery_bound"),
    Benchmark("peers"),
    Benchmark("inner_memory"),
    Benchmark("prefix_cache"),
    Benchmark("encoder_cost"),
    Benchmark("ray_overhead"),
    Benchmark("ray_scaling"),
    Benchmark("tree_reduce"),
    Benchmark("corpus_scale", needs=("psutil",)),
    Benchmark("cluster_box", opt_in="needs root for its network namespaces and the machine to itself"),
)


def skip_reason(bench: Benchmark, named: bool) -> str | None:
    """Why ``bench`` does not run (None if it does); ``named``: ``--only`` asked for it."""
    if bench.opt_in and not named:
        return f"opt-in ({bench.opt_in}): python -m benchmarks.speed --only {bench.name}"
    missing = [m for m in bench.needs if importlib.util.find_spec(m) is None]
    if missing:
        return f"{', '.join(missing)} not installed"
    return None


def run(bench: Benchmark, timeout: float) -> tuple[str, float]:
    """Run ``bench``'s quick mode from the repository root, its output passed through; (status, seconds)."""
    cmd = [sys.executable, "-m", f"benchmarks.speed.{bench.name}", "--quick"]
    print(f"\n== {bench.name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    try:
        rc = subprocess.run(cmd, cwd=ROOT, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        return f"FAILED (over {timeout:.0f} s)", time.perf_counter() - t0
    return ("ok" if rc == 0 else f"FAILED (exit {rc})"), time.perf_counter() - t0


def names(text: str) -> list[str]:
    """A comma-separated list of suite benchmarks, checked."""
    known = [b.name for b in SUITE]
    picked = [n for n in text.split(",") if n]
    unknown = [n for n in picked if n not in known]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown benchmark {', '.join(unknown)}; the suite has {', '.join(known)}")
    return picked


def main(argv: list[str] | None = None) -> int:
    """Run the suite; 0 if every benchmark that ran passed."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", type=names, default=[], help="run just these (comma-separated), opt-in ones included")
    ap.add_argument("--skip", type=names, default=[], help="leave these out (comma-separated)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds before one benchmark counts as failed")
    ap.add_argument("--list", action="store_true", help="print the suite and exit")
    args = ap.parse_args(argv)
    chosen = [b for b in SUITE if (not args.only or b.name in args.only) and b.name not in args.skip]
    if args.list:
        for b in chosen:
            print(b.name + (f"  (skipped: {skip_reason(b, b.name in args.only)})" if skip_reason(b, b.name in args.only) else ""))
        return 0
    rows, t0 = [], time.perf_counter()
    for bench in chosen:
        reason = skip_reason(bench, bench.name in args.only)
        rows.append((bench.name, f"skipped: {reason}", 0.0) if reason else (bench.name, *run(bench, args.timeout)))
    print(f"\nspeed suite, quick mode: {time.perf_counter() - t0:.0f} s in all")
    print("| benchmark | status | seconds |\n|---|---|---|")
    for name, status, seconds in rows:
        print(f"| {name} | {status} | {seconds:.0f} |")
    return 1 if any(status.startswith("FAILED") for _, status, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
