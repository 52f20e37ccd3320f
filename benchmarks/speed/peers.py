"""distmeta against the peer libraries on the same meta-batches: time and peak memory per meta-batch.

For each case, one meta-batch of tasks is built by distmeta's worker, and every
implementation computes the summed meta-gradient of those tasks from the same
parameters: distmeta (``Worker.meta_grad``, task building and the numpy hand-off
included), the tutorial loop (``autograd.grad(create_graph=True)``), ``higher``,
``torchopt``'s functional API and ``learn2learn`` (reported, not skipped, when it does not
install). Every implementation gets each task's texts at the task's own width (trailing
padding cut), as distmeta's loop path computes them. Before any timing each peer's meta-gradient must equal distmeta's (relative
error <= 1e-5 in float64), else the case stops. Rounds are interleaved in this one process
with one torch thread; the speed-up is the median over rounds of peer time / distmeta time.
Peak memory is measured in a separate, untimed call (distmeta.groups.sizing.peak_memory).

    .venv/bin/python -m benchmarks.speed.peers [--rounds 7] [--meta-batch 16] [--cases sinusoid-maml,...] [--json out.json] [--quick]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from benchmarks.speed.common import in_process_worker, interleaved_times, median_ratio, parse_args, write_rows
from benchmarks.speed.peer_impls import (MAML_PEERS, Setting, hf_protonet, leaf_model, learn2learn_status, missing_peer,
                                         tutorial_protonet)

BAG = "configs/bag_protonet.yaml"
SIN = ["data.source=sinusoid", "model.name=mlp", "data.shots=10", "data.queries=10", "algorithm.inner_lr=0.01"]
BAG_260K = ["model.name=bag", "model.dim=64", "tokenizer.vocab_size=4000", "data.queries=5", "algorithm.inner_lr=0.1"]
TRANSFORMER_2M = ["model.name=transformer", "model.dim=192", "model.heads=4", "model.layers=3", "model.ff_dim=384",
                  "tokenizer.vocab_size=6000", "data.queries=5", "algorithm.inner_lr=0.1"]
FIVE = ["algorithm.inner_steps=5"]
#: name -> (base config, overrides); the algorithm decides which peers apply.
CASES: dict[str, tuple[str | None, list[str]]] = {
    "sinusoid-maml": (BAG, [*SIN, *FIVE, "algorithm.name=maml"]),
    "bag260k-maml": (BAG, [*BAG_260K, *FIVE, "algorithm.name=maml"]),
    "transformer2m-maml": (BAG, [*TRANSFORMER_2M, *FIVE, "algorithm.name=maml"]),
    "sinusoid-fomaml": (BAG, [*SIN, *FIVE, "algorithm.name=fomaml"]),
    "bag260k-fomaml": (BAG, [*BAG_260K, *FIVE, "algorithm.name=fomaml"]),
    "default-protonet": (None, ["data.ways_range=null"]),
}
MAX_REL_ERR = 1e-5
#: Not a peer: the per-task loop on distmeta's own model and cached frozen prefix, which no peer
#: library has. It isolates what the loop structure alone is worth; verdicts leave it out.
ABLATION = "loop-on-cache"
#: Two small cases, each second order or first order, on a few tasks: the suite's smoke run.
QUICK = {"rounds": 1, "meta_batch": 4, "cases": "sinusoid-maml,bag260k-fomaml"}


def build(base: str | None, overrides: list[str], meta_batch: int, dtype: str, extra: list[str]) -> dict[str, Any]:
    """The case's worker, meta-parameters, task specs and the tensors of those tasks."""
    os.environ.pop("DISTMETA_BASE_CONFIG", None)
    cfg, exp, worker = in_process_worker(base, [*overrides, f"train.meta_batch={meta_batch}",
                                                f"algorithm.group_size={meta_batch}", f"dtype={dtype}", "resources.threads=1",
                                                "resources.workers=0", *extra])
    specs = exp.sampler("train").batch(0, meta_batch)
    meta = {n: t.to(worker.dtype) for n, t in worker.initial_meta.items()}
    return {"cfg": cfg, "worker": worker, "specs": specs, "meta": meta, "batch": worker.builder.build(specs)}


def implementations(case: dict[str, Any]) -> dict[str, Callable[[], dict[str, torch.Tensor]] | str]:
    """name -> a call returning the summed meta-gradient, or a string saying why that peer does not run."""
    cfg, worker, meta, batch = case["cfg"], case["worker"], case["meta"], case["batch"]
    meta_np = {n: t.numpy() for n, t in meta.items()}
    impls: dict[str, Callable[[], dict[str, torch.Tensor]] | str] = {
        "distmeta": lambda: {n: torch.from_numpy(g) for n, g in worker.meta_grad(meta_np, case["specs"]).grad.items()},
    }
    alg = worker.algorithm
    if cfg.algorithm.name == "protonet":
        temp = meta.get("temperature")
        model = leaf_model(worker.module, meta)
        leaf_t = temp.clone().requires_grad_() if temp is not None else None
        leaves = {**dict(model.named_parameters()), **({"temperature": leaf_t} if leaf_t is not None else {})}
        if alg.distance == "cosine" and not alg.learn_temperature:
            leaf_t = torch.tensor(alg.temperature)
        if cfg.model.name in ("minilm", "hf") and worker.module.prefix_layers:
            impls["tutorial"] = hf_loop(case, leaf_t)  # the loop a transformers user writes
            impls[ABLATION] = grads_of(lambda: tutorial_protonet(model, batch, alg.ways, leaf_t), leaves, meta)
        else:
            impls["tutorial"] = grads_of(lambda: tutorial_protonet(model, batch, alg.ways, leaf_t), leaves, meta)
        for peer in ("higher", "torchopt", "learn2learn"):
            impls[peer] = "no inner loop in ProtoNet: nothing for this library to differentiate through"
        return impls
    assert set(alg.adapt) == set(meta), "the peers adapt every meta-parameter"
    setting = Setting(cfg.algorithm.inner_lr, cfg.algorithm.inner_steps, alg.first_order, alg.loss)
    l2l = learn2learn_status()
    for name, fn in MAML_PEERS.items():
        if name == "learn2learn" and l2l:
            impls[name] = "not importable (see the first lines)"
            continue
        if missing_peer(name):
            impls[name] = missing_peer(name)
            continue
        model = leaf_model(worker.module, meta)
        impls[name] = grads_of(lambda fn=fn, model=model: fn(model, batch, setting), dict(model.named_parameters()), meta)
    return impls


def hf_loop(case: dict[str, Any], temperature: torch.Tensor | None) -> Callable[[], dict[str, torch.Tensor]]:
    """ProtoNet through ``transformers.AutoModel`` on token ids (:func:`peer_impls.hf_protonet`): what a user writes.

    The same pretrained weights and the same tasks; the layers distmeta meta-trains are the
    trainable leaves (``layers.N.*`` is ``encoder.layer.N.*``), every other parameter is frozen.
    """
    from transformers import AutoModel

    from distmeta.models.minilm import minilm_model_dir

    cfg, worker, meta = case["cfg"], case["worker"], case["meta"]
    path = minilm_model_dir(cfg.model.path) if cfg.model.name == "minilm" else cfg.model.path
    model = AutoModel.from_pretrained(str(path)).to(worker.dtype).eval()
    hf_names = {n: f"encoder.layer.{n[len('layers.'):]}" if n.startswith("layers.") else n for n in meta}
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            p.requires_grad_(False)
        for n, hf in hf_names.items():
            if hf in params:
                params[hf].copy_(meta[n])
                params[hf].requires_grad_(True)
    leaves = {n: params[hf] for n, hf in hf_names.items() if hf in params}
    if temperature is not None:
        leaves["temperature"] = temperature
    builder = worker.builder
    sx, sy, qx, qy = builder.rows(case["specs"])
    ids = lambda rows: torch.from_numpy(builder.corpus.padded(np.asarray(rows, dtype=np.int64)))  # noqa: E731
    tasks = [(ids(sx[t]), torch.tensor(sy[t]), ids(qx[t]), torch.tensor(qy[t])) for t in range(len(sx))]
    return grads_of(lambda: hf_protonet(model, tasks, worker.algorithm.ways, temperature), leaves, meta)


def grads_of(run: Callable[[], None], leaves: dict[str, torch.Tensor], meta: dict[str, Any]) -> Callable[[], dict[str, torch.Tensor]]:
    """A call that clears the leaves' gradients, runs the peer and returns the gradients of ``meta``'s names."""
    def call() -> dict[str, torch.Tensor]:
        for p in leaves.values():
            p.grad = None
        with torch.enable_grad():
            run()
        return {n: leaves[n].grad if leaves[n].grad is not None else torch.zeros_like(leaves[n]) for n in meta}
    return call


def relative_error(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    """Largest per-parameter ``||got - want|| / ||want||``.

    A parameter whose meta-gradient is zero in exact arithmetic (an attention key bias:
    softmax ignores a per-query constant) holds only rounding noise, so each norm is
    floored at 1e-6 of the whole meta-gradient's.
    """
    total = float(torch.sqrt(sum((w.double() ** 2).sum() for w in want.values())))
    worst = 0.0
    for n, w in want.items():
        diff = float((got[n].to(w.dtype) - w).norm())
        worst = max(worst, diff / max(float(w.norm()), 1e-6 * total, 1e-300))
    return worst


def run_case(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Check, then time and measure every implementation of one case."""
    from distmeta.groups.sizing import MB, cpu_peak_supported, peak_memory

    base, overrides = CASES[name]
    case = build(base, overrides, args.meta_batch, args.dtype, args.set)
    impls = implementations(case)
    n_params = sum(t.numel() for t in case["meta"].values())
    row: dict[str, Any] = {"case": name, "params": n_params, "vmap": case["worker"].use_vmap, "peers": {}}
    want = impls["distmeta"]()  # type: ignore[operator]
    runnable = {}
    for impl, fn in impls.items():
        if isinstance(fn, str):
            row["peers"][impl] = {"skipped": fn}
            print(f"  {name}: {impl}: {fn}", flush=True)
            continue
        err = relative_error(fn(), want) if impl != "distmeta" else 0.0
        if err > MAX_REL_ERR:
            raise SystemExit(f"{name}: {impl}'s meta-gradient differs from distmeta's (relative error {err:.2e} > "
                             f"{MAX_REL_ERR}); not timing a different computation")
        row["peers"][impl] = {"rel_err": err}
        runnable[impl] = fn
    times = interleaved_times(runnable, args.rounds)
    for impl in runnable:
        peak = peak_memory(runnable[impl])[1] / MB if cpu_peak_supported() else float("nan")
        row["peers"][impl].update(median_s=statistics.median(times[impl]), speedup=median_ratio(times[impl], times["distmeta"]),
                                  peak_mb=peak)
    return row


def print_row(row: dict[str, Any]) -> None:
    print(f"\n{row['case']}  ({row['params']:,} meta-parameters, distmeta path: {'vmap' if row['vmap'] else 'loop'})")
    print(f"  {'implementation':12} {'median s':>9} {'distmeta x':>10} {'peak MB':>8} {'rel err':>8}")
    for impl, r in row["peers"].items():
        if "skipped" in r:
            print(f"  {impl:12} {'-':>9} {'-':>10} {'-':>8} {'-':>8}  (not run: see above)")
            continue
        print(f"  {impl:12} {r['median_s']:9.4f} {r['speedup']:9.2f}x {r['peak_mb']:8.1f} {r['rel_err']:8.1e}")
    timed = {k: v for k, v in row["peers"].items() if k not in ("distmeta", ABLATION) and "speedup" in v}
    if timed:
        best = min(timed, key=lambda k: timed[k]["speedup"])  # the peer distmeta beats by the least
        verdict = "met" if timed[best]["speedup"] >= 1.5 else "MISSED"
        print(f"  fastest peer: {best}; distmeta {timed[best]['speedup']:.2f}x it (target 1.5x: {verdict})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--meta-batch", type=int, default=16)
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    ap.add_argument("--set", action="append", default=[], help="extra config override for every case (repeatable)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = parse_args(ap, QUICK)
    torch.set_num_threads(1)
    print(f"meta-batch {args.meta_batch}, {args.dtype}, 1 torch thread, {args.rounds} interleaved rounds; "
          f"torch {torch.__version__}, Python {sys.version.split()[0]}")
    status = learn2learn_status()
    if status:
        print(status)
    rows = []
    for name in args.cases.split(","):
        rows.append(run_case(name, args))
        print_row(rows[-1])
    write_rows(args.json, args, rows)


if __name__ == "__main__":
    main()
