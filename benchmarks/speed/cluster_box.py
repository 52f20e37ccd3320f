"""Multi-node costs measured on a cluster in a box: nodes in their own namespaces, links shaped with ``tc tbf``.

Three nodes (the head, with the driver and one actor, and two worker nodes with one actor
each), one logical CPU each, every link shaped to the given rates in turn. On one actor
pool per rate, steps run interleaved, a step at a time:

* ``node-sums``: ``ray.node_reduce`` off (every group's gradient reaches the driver) and on
  (each worker node sums its own groups first): bytes into the driver per step, measured on
  the head's link (``eth0`` rx counter) and as Ray's answer bytes, and step time; the
  parameters of both must be the same bits (checked).
* ``transport``: ``ray.shared_memory`` on and off with the actors on other nodes (each node's
  ``/dev/shm`` is private, so only the head's own actor can use it): step time.
* ``--corpus-rows N``: instead, a generated corpus of N rows (``benchmarks.speed.corpus_scale.generate``) in the
  head's private ``/tmp``, meta-trained by one actor per node: each node's memory, sampled every
  second during the run: the proportional set size of every process in its namespace (shared
  pages split between the processes that map them, so nothing is counted twice) and what its
  private ``/dev/shm`` (Ray's object store) holds; the peak of each.

Reported: medians over the rounds, and the median of the per-round ratios.

    sudo .venv/bin/python -m benchmarks.speed.cluster_box [--rates 100mbit,1gbit] [--steps 8] [--out benchmarks/results/cluster_box] [--quick]

Needs root (namespaces). Run it alone on the machine: the nodes share its CPUs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks.speed.common import experiment, median_ratio, parse_args

#: The from-scratch bag (about 1M float32 meta-parameters, 4 MiB a gradient); 12 groups of one task, so each of
#: the 3 actors' blocks is an aligned subtree of the reduction tree: one sum per worker node.
OVERRIDES = ["data.source=icd10cm", "algorithm.group_size=1", "train.meta_batch=12", "dtype=float32",
             "resources.workers=3", "resources.cpus_per_worker=1", "resources.threads=1", "run.progress=false"]
QUICK = {"rates": "1gbit", "steps": 2}


def inside(steps: int) -> None:
    """Runs on the head: one pool, steps interleaved between modes; prints one RESULT line."""
    import torch

    from distmeta.distributed.ray_backend import RayBackend
    from distmeta.distributed.transport import ObjectStoreTransport
    from distmeta.groups import reduce_groups
    from distmeta.groups import chunks

    def rx() -> int:
        return int(Path("/sys/class/net/eth0/statistics/rx_bytes").read_text())

    cfg, exp = experiment("configs/bag_protonet.yaml", OVERRIDES)
    backend = RayBackend(cfg, exp.worker_args())
    try:
        meta = {n: t.numpy() for n, t in backend.initial_meta.items()}
        names, sampler = list(meta), exp.sampler("train")
        transports = {True: backend.transport, False: ObjectStoreTransport()}  # chosen at set-up; swapped per mode
        modes = {"flat": {"node_reduce": False, "shared_memory": True},
                 "tree": {"node_reduce": True, "shared_memory": True},
                 "flat_objectstore": {"node_reduce": False, "shared_memory": False}}
        rows: dict[str, dict[str, list[float]]] = {m: {"s": [], "rx": [], "answer": []} for m in modes}
        for step in range(steps + 1):  # step 0 warms up
            specs = sampler.batch(step, cfg.train.meta_batch)
            groups = [specs[r.start: r.stop] for r in chunks(len(specs), cfg.algorithm.group_size)]
            sums = {}
            for mode, knobs in modes.items():
                backend.ray_cfg.node_reduce = knobs["node_reduce"]  # read per step: one pool serves every row
                backend.transport = transports[knobs["shared_memory"]]
                before, t0 = rx(), time.perf_counter()
                results = backend.compute(meta, groups, version=step)
                sums[mode] = reduce_groups(results, names, torch.float32)
                if step:
                    rows[mode]["s"].append(time.perf_counter() - t0)
                    rows[mode]["rx"].append(rx() - before)
                    rows[mode]["answer"].append(backend.stats().result_bytes)
            backend.transport = transports[True]
            for mode in modes:
                assert all(torch.equal(sums["flat"][n], sums[mode][n]) for n in names), f"{mode} != flat"
        nodes = sorted({i["node"] for i in backend.infos})
        print("RESULT " + json.dumps({"rows": rows, "nodes": len(nodes), "shm": type(transports[True]).__name__,
                                      "params": sum(v.size for v in meta.values())}), flush=True)
    finally:
        backend.close()


def orchestrate(rates: list[str], steps: int, out: str | None) -> None:
    """One box per rate; the inside part run on its head; the table printed (and written to ``out``)."""
    from clusterbox import NetCluster, Spec

    lines = [f"Cluster in a box, {time.strftime('%Y-%m-%d')}: head (driver + 1 actor) and 2 worker nodes (1 actor "
             "each), 1 logical CPU per node on this machine's 2 cores; bag ProtoNet, 1M float32 parameters, "
             f"12 groups of 1 task; medians of {steps} interleaved steps.", "",
             "| link | mode | MiB into the head per step (link) | answer MiB | step s | vs flat (median of ratios) |",
             "|---|---|---|---|---|---|"]
    raw = {}
    for rate in rates:
        with NetCluster(Spec(workers=2, head_cpus=1, cpus_per_node=1, rate=rate, s3=False)) as box:
            proc = box.run("head", ["python", "-m", "benchmarks.speed.cluster_box", "--inside", "--steps", str(steps)],
                           env={"RAY_ADDRESS": box.address}, timeout=1800)
        result = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not result:
            sys.exit(f"inside run failed at {rate}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        data = json.loads(result[-1][len("RESULT "):])
        raw[rate] = data
        rows = data["rows"]
        for mode, r in rows.items():
            vs = "" if mode == "flat" else (f"bytes {median_ratio(rows['flat']['rx'], r['rx']):.2f}x fewer, "
                                            f"time {median_ratio(rows['flat']['s'], r['s']):.2f}x faster")
            lines.append(f"| {rate} | {mode} | {statistics.median(r['rx']) / 2**20:.1f} | "
                         f"{statistics.median(r['answer']) / 2**20:.1f} | {statistics.median(r['s']):.2f} | {vs} |")
    print("\n".join(lines))
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "node_sums.md").write_text("\n".join(lines) + "\n")
        (Path(out) / "node_sums.json").write_text(json.dumps(raw, indent=1))


def node_memory(box, name: str) -> tuple[int, int]:
    """``(PSS of every process in node name's namespace, bytes used in its /dev/shm)``."""
    from clusterbox import net

    pss = 0
    for pid in net.pids_in(box.nodes[name].ns):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                pss += sum(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
        except OSError:
            continue
    df = box.run(name, ["df", "-B1", "--output=used", "/dev/shm"], timeout=30).stdout.split()
    return pss, int(df[-1]) if df and df[-1].isdigit() else 0


def corpus(rows: int, steps: int, out: str | None) -> None:
    """The ``--corpus-rows`` mode (see the module docstring)."""
    import threading

    from clusterbox import NetCluster, Spec

    from benchmarks.speed.corpus_scale import generate

    with NetCluster(Spec(workers=2, head_cpus=1, cpus_per_node=1, rate="1gbit", s3=False, shm_mb=4096,
                         object_store_mb=1500)) as box:
        generate(box.head.tmp / "corpus.csv", rows, classes=1000)
        peaks = {n: [0, 0] for n in box.nodes}
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                for n in box.nodes:
                    pss, shm = node_memory(box, n)
                    peaks[n] = [max(peaks[n][0], pss), max(peaks[n][1], shm)]
                done.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        proc = box.run("head", ["distmeta", "train", "--config", "configs/bag_protonet.yaml", "data.source=csv:/tmp/corpus.csv",
                                "resources.workers=3", "resources.cpus_per_worker=1", f"train.steps={steps}", "run.eval_every=0",
                                "run.checkpoint_every=0", "eval.baseline=false", "eval.episodes=20", "run.progress=false",
                                "run.dir=/tmp/runs/corpus"], env={"RAY_ADDRESS": box.address}, timeout=3600)
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
    if proc.returncode != 0:
        sys.exit(f"training failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    lines = [f"{rows:,}-row corpus, {time.strftime('%Y-%m-%d')}: one actor per node on a cluster in a box "
             f"(CSV on the head only; {steps} steps, {wall:.0f} s end to end). Peak per node:", "",
             "| node | processes' PSS, MiB | /dev/shm (object store), MiB |", "|---|---|---|"]
    lines += [f"| {n} | {p / 2**20:.0f} | {s / 2**20:.0f} |" for n, (p, s) in peaks.items()]
    print("\n".join(lines))
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "corpus_nodes.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    """Parse the command line; orchestrate, or (``--inside``) run on the head."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="100mbit,1gbit", help="link rates to measure, comma-separated tc rates")
    ap.add_argument("--steps", type=int, default=8, help="measured steps per mode (after one warm-up step)")
    ap.add_argument("--out", default=None, help="folder for node_sums.md / node_sums.json")
    ap.add_argument("--corpus-rows", type=int, default=0, help="measure per-node memory with a corpus of this many rows")
    ap.add_argument("--inside", action="store_true", help="(internal) run on the box's head")
    args = parse_args(ap, QUICK)
    if args.corpus_rows:
        corpus(args.corpus_rows, args.steps, args.out)
    elif args.inside:
        inside(args.steps)
    else:
        orchestrate(args.rates.split(","), args.steps, args.out)


if __name__ == "__main__":
    main()
