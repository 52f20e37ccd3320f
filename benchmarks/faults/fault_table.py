"""Inject each fault N times and count what the driver reduced: the fault-tolerance table.

    .venv/bin/python -m benchmarks.faults.fault_table [--runs 5] [--steps 6] [--kinds kill,stall,...] [--node-loss]

Every run is a small sinusoid MAML meta-training (8 tasks per step in 4 groups) with
one fault from the ``faults`` config switch at a random step (and actor), seeded.
Per run the driver's ``step`` callback records the task keys of the GroupResults it
reduced; the table reports, over the runs of each fault:

* runs completed: ``fit()`` returned (for the driver kill: after ``distmeta train --resume``),
* tasks lost: tasks of the meta-batches that no reduction counted (must be 0),
* tasks double-counted: tasks counted more than once in one step (must be 0),
* max |Δparam|: the largest parameter difference from the reference, the run without
  the fault (for ``nan``, with ``nan_policy: skip_task``: the plainest loop with that
  task left out). 0 means bit-identical.

Faults: ``kill`` (a Ray actor SIGKILLed mid-step), ``stall`` (an actor silent past
``ray.step_timeout``), ``stale`` (an answer for old parameters), ``nan`` (a task's
loss and gradient NaN, ``skip_task``), ``driver`` (the driver process SIGKILLed
mid-run, ``resources.workers: 0``, then resumed from its checkpoint), ``ckpt`` (the newest
checkpoint corrupted after the run, then resumed from the previous one to the same
length). ``--node-loss`` adds one run of ``tests/faults/node_loss_check.py`` (a
two-node cluster losing a node, then the other).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
# The cases override a from-scratch base (the embedded default is the pretrained MiniLM run).
os.environ.setdefault("DISTMETA_BASE_CONFIG", str(ROOT / "configs" / "bag_protonet.yaml"))

BASE = [
    "resources.workers=0", "data.source=sinusoid", "model.name=mlp", "algorithm.name=maml", "data.shots=5", "data.queries=5",
    "train.meta_batch=8", "algorithm.group_size=2", "eval.episodes=4", "eval.batch=4", "eval.baseline=false",
    "run.progress=false", "run.eval_every=0", "run.log_every=1", "run.checkpoint_every=2",
]
META_BATCH = 8
RAY = ["resources.workers=2", "resources.cpus_per_worker=0.25"]


class Recorder:
    """Trainer callback: the task keys reduced per step (appended to ``path`` as JSON lines if given)."""

    def __init__(self, path: Path | None = None) -> None:
        self.steps: list[tuple[int, list[tuple[int, int]], list[tuple[int, int]]]] = []
        self.path = path

    def __call__(self, event: str, trainer: Any, payload: dict) -> None:
        if event != "step":
            return
        rec = (payload["step"], [tuple(k) for k in payload["tasks"]], [tuple(k) for k in payload["skipped"]])
        self.steps.append(rec)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": rec[0], "tasks": rec[1], "skipped": rec[2], "pid": os.getpid()}) + "\n")


def count(steps: list[tuple[int, list, list]], n_steps: int) -> tuple[int, int]:
    """(tasks lost, tasks double-counted) over ``n_steps`` steps: each task is reduced once or skipped on purpose."""
    lost = double = 0
    by_step: dict[int, list] = {}
    for step, tasks, skipped in steps:
        by_step.setdefault(step, []).append((tasks, skipped))
    for s in range(n_steps):
        recs = by_step.get(s, [])
        if len(recs) != 1:  # a step never reduced, or reduced twice
            lost += META_BATCH if not recs else 0
            double += sum(len(t) for t, _ in recs[1:])
            if not recs:
                continue
        tasks, skipped = recs[0]
        seen = tasks + skipped
        lost += len({(s, i) for i in range(META_BATCH)} - set(seen))
        double += len(seen) - len(set(seen))
    return lost, double


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[n].double() - b[n].double()).abs().max()) for n in a)


def reference(cfg: Any, skip: dict[int, set[int]] | None = None) -> dict[str, torch.Tensor]:
    """The plainest loop: one Worker, groups summed in order, the mean over the tasks used, one update per step."""
    import distmeta
    from distmeta.experiment import prepare_experiment
    from distmeta.optim import OuterOptimizer
    from distmeta.groups import chunks, tree_sum

    skip = skip or {}
    exp = prepare_experiment(cfg)
    worker = distmeta.Worker(cfg, **exp.worker_args())
    opt = OuterOptimizer(cfg.outer, worker.initial_meta, seed=cfg.seed, total_steps=cfg.train.steps)
    for step in range(cfg.train.steps):
        specs = exp.sampler("train").batch(step, cfg.train.meta_batch)
        groups = [[s for s in specs[r.start: r.stop] if s.index not in skip.get(step, set())]
                  for r in chunks(len(specs), cfg.algorithm.group_size)]
        meta = {n: p.numpy() for n, p in opt.params.items()}
        # Every group, an emptied one as zeros, summed in the tree the group count fixes (distmeta.groups).
        grads = [{n: torch.from_numpy(np.array(worker.meta_grad(meta, g).grad[n])) if g else torch.zeros_like(p)
                  for n, p in opt.params.items()} for g in groups]
        total = tree_sum(grads, lambda a, b: {n: a[n] + b[n] for n in a})
        used = sum(len(g) for g in groups)
        opt.step({n: total[n] / used for n in opt.names})
    return {n: p.clone() for n, p in opt.params.items()}


class Pool:
    """One 2-actor RayBackend reused by every Ray run (``reconfigure`` per run), as the tests do; a ``backend_factory``."""

    def __init__(self) -> None:
        self.backend: Any = None

    def __call__(self, cfg: Any, exp: Any) -> Any:
        from distmeta.training.backend import Lent, make_backend

        if cfg.resources.workers == 0:
            return make_backend(cfg, exp)
        if self.backend is None:
            self.backend = make_backend(cfg, exp)
        else:
            self.backend.reconfigure(cfg, exp.worker_args())
        return Lent(self.backend)

    def heal(self) -> None:
        if self.backend is not None:
            self.backend.wait_ready(300)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()


def train(overrides: list[str], run_dir: Path, rec: Recorder,
          pool: Any = None) -> tuple[bool, dict[str, torch.Tensor] | None, str]:
    import distmeta

    cfg = distmeta.load_config(None, [*overrides, f"run.dir={run_dir}"])
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # (the meta-test printout)
            warnings.simplefilter("ignore")
            with distmeta.Trainer(cfg, callbacks=[rec], backend_factory=pool) as trainer:
                trainer.fit()
        return True, trainer.meta_params, ""
    except Exception as e:  # a row of the table, not a crash of the benchmark
        return False, None, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"


def child(run_dir: str, record: str, overrides: list[str]) -> None:
    """``--child``: meta-train recording reduced tasks to ``record`` (the process may be killed by its own fault)."""
    ok, _, err = train(overrides, Path(run_dir), Recorder(Path(record)))
    sys.exit(0 if ok else 3)


def run_fault(kind: str, i: int, rng: random.Random, steps: int, work: Path, pool: Pool, ref: dict) -> dict:
    """One run with one fault; returns its row contributions."""
    import distmeta

    base = [*BASE, f"train.steps={steps}"]
    step = rng.randrange(1, steps)
    actor = rng.randrange(2)
    run = work / f"{kind}{i}"
    rec = Recorder()
    want = ref["none"]
    if kind in ("kill", "stall", "stale"):
        extra = {"kill": "", "stall": ", seconds: 600", "stale": ""}[kind]
        over = [*base, *RAY, f"faults=[{{kind: {kind}, actor: {actor}, step: {step}{extra}}}]", "ray.step_timeout=6"]
        ok, params, err = train(over, run, rec, pool)
        pool.heal()
    elif kind == "nan":
        task = rng.randrange(META_BATCH)
        over = [*base, *RAY, f"faults=[{{kind: nan, actor: all, step: {step}, task: {task}}}]", "nan_policy=skip_task"]
        ok, params, err = train(over, run, rec, pool)
        want = reference(distmeta.load_config(None, [*base, f"run.dir={run}"]), skip={step: {task}})
    elif kind == "driver":
        step = rng.randrange(2, steps)  # after the first checkpoint (step 2)
        record = work / f"{kind}{i}.jsonl"
        over = [*base, f"faults=[{{kind: kill, step: {step}}}]"]
        proc = subprocess.run([sys.executable, "-m", "benchmarks.faults.fault_table", "--child", str(run), str(record),
                               *over], capture_output=True, text=True, timeout=600, cwd=ROOT)
        killed = proc.returncode == -9
        lines = [json.loads(ln) for ln in record.read_text().splitlines()] if record.exists() else []
        resume_from = distmeta.load_checkpoint(run).step
        # Work past the checkpoint died with the process (its updates were never saved): it is recomputed.
        rec.steps = [(r["step"], [tuple(k) for k in r["tasks"]], [tuple(k) for k in r["skipped"]])
                     for r in lines if r["step"] < resume_from]
        cfg = distmeta.load_config(run / "config.yaml", ["faults=[]", f"run.dir={run}"])
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                with distmeta.Trainer(cfg, resume=True, callbacks=[rec]) as trainer:
                    trainer.fit()
            ok, params, err = killed, trainer.meta_params, "" if killed else f"driver not killed (rc {proc.returncode})"
        except Exception as e:
            ok, params, err = False, None, f"{type(e).__name__}: {e}"
    elif kind == "ckpt":
        first = Recorder()
        ok, _, err = train(base, run, first)
        latest = sorted((run / "checkpoints").glob("step_*"))[-1]
        data = bytearray((latest / "meta_params.safetensors").read_bytes())
        data[rng.randrange(len(data) // 2, len(data))] ^= 0xFF
        (latest / "meta_params.safetensors").write_bytes(bytes(data))
        previous = distmeta.load_checkpoint(sorted((run / "checkpoints").glob("step_*"))[-2]).step
        rec.steps = [r for r in first.steps if r[0] < previous]  # their updates are in the kept checkpoint
        cfg = distmeta.load_config(run / "config.yaml", [f"run.dir={run}"])
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                with distmeta.Trainer(cfg, resume=True, callbacks=[rec]) as trainer:
                    trainer.fit()
            ok, params, err = True, trainer.meta_params, ""
        except Exception as e:
            ok, params, err = False, None, f"{type(e).__name__}: {e}"
    else:
        raise ValueError(kind)
    lost, double = count(rec.steps, steps) if ok else (None, None)
    return {"ok": ok, "lost": lost, "double": double, "diff": max_diff(want, params) if params is not None else None,
            "err": err}


def node_loss(work: Path) -> dict:
    script = ROOT / "tests" / "faults" / "node_loss_check.py"
    over = [*BASE, "train.steps=8", "run.checkpoint_every=1"]
    proc = subprocess.run([sys.executable, str(script), str(work / "nodeloss"), "10", *over],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not line:
        return {"ok": False, "lost": None, "double": None, "diff": None, "err": proc.stderr[-300:]}
    out = json.loads(line[-1][7:])
    steps = [(s["step"], [tuple(k) for k in s["tasks"]], []) for s in out["steps"]]
    import distmeta

    ref = reference(distmeta.load_config(None, [*BASE, "train.steps=4", f"run.dir={work / 'nl_ref'}"]))
    params = torch.load(work / "nodeloss" / "params.pt")
    lost, double = count(steps, 4)
    return {"ok": out["checkpoint_step"] == 4, "lost": lost, "double": double, "diff": max_diff(ref, params),
            "err": f"4 steps completed across the loss of actor 1's node; after the last node went, "
                   f"WorkerFailedError in {out['error_after_s']:.0f}s: {out['error']}"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5, help="injections per fault")
    p.add_argument("--steps", type=int, default=6, help="meta-training steps per run")
    p.add_argument("--kinds", default="kill,stall,stale,nan,driver,ckpt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--node-loss", action="store_true", help="add one two-node cluster run losing both nodes (~1 min)")
    args = p.parse_args()

    import logging

    import ray

    import distmeta

    logging.getLogger("distmeta").setLevel(logging.ERROR)
    kinds = args.kinds.split(",")
    work = Path(tempfile.mkdtemp(prefix="fault_table_"))
    rng = random.Random(args.seed)
    ref = {"none": reference(distmeta.load_config(None, [*BASE, f"train.steps={args.steps}", f"run.dir={work / 'ref'}"]))}
    # The reference is also what the Trainer gives without faults.
    with distmeta.Trainer(distmeta.load_config(None, [*BASE, f"train.steps={args.steps}", f"run.dir={work / 'nofault'}"])) as t:
        with contextlib.redirect_stdout(io.StringIO()):
            t.fit()
    assert max_diff(ref["none"], t.meta_params) == 0.0, "no-fault Trainer run differs from the plain loop"

    pool = Pool()
    if any(k in ("kill", "stall", "stale", "nan") for k in kinds):
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2, logging_level="error",
                 log_to_driver=False)
    table = []
    try:
        for kind in kinds:
            t0 = time.monotonic()
            rows = [run_fault(kind, i, rng, args.steps, work, pool, ref) for i in range(args.runs)]
            table.append((kind, rows, time.monotonic() - t0))
            print(f"  {kind}: {sum(r['ok'] for r in rows)}/{len(rows)} completed in {time.monotonic() - t0:.0f}s"
                  + "".join(f"; {r['err']}" for r in rows if r["err"]), file=sys.stderr, flush=True)
        if args.node_loss:
            t0 = time.monotonic()
            table.append(("node lost", [node_loss(work)], time.monotonic() - t0))
    finally:
        pool.close()
        if ray.is_initialized():
            ray.shutdown()

    names = {"kill": "actor SIGKILLed mid-step", "stall": "actor stalled past step_timeout",
             "stale": "stale-parameter answer", "nan": "NaN task (skip_task)",
             "driver": "driver SIGKILLed, --resume", "ckpt": "newest checkpoint corrupt, --resume",
             "node lost": "node lost (then the last one)"}
    print(f"\n{args.runs} injections per fault, {args.steps} steps x {META_BATCH} tasks per run (seed {args.seed})\n")
    print("| fault | injected | runs completed | tasks lost | tasks double-counted | max abs param diff vs reference | seconds |")
    print("|---|---|---|---|---|---|---|")
    for kind, rows, secs in table:
        done = [r for r in rows if r["ok"]]
        lost = sum(r["lost"] for r in done)
        double = sum(r["double"] for r in done)
        diff = max((r["diff"] for r in done if r["diff"] is not None), default=float("nan"))
        print(f"| {names.get(kind, kind)} | {len(rows)} | {len(done)}/{len(rows)} | {lost} | {double} | {diff:.3g} | {secs:.0f} |")
    notes = [f"{names.get(kind, kind)}: {r['err']}" for kind, rows, _ in table for r in rows if r["err"]]
    if notes:
        print("\n" + "\n".join(notes))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        main()
