"""Does computing a meta-batch's tasks together beat the per-task loop on the ~2M Transformer?

distmeta's loop path (plain autograd, one task at a time, each at its own width) is what
``vmap: auto`` picks for models that adapt more than ``algorithm.vmap_max_params``. This
benchmark checks that choice on the peers benchmark's ICD-10-CM Transformer (d192 x 3,
second-order MAML, 5 inner steps, 16 tasks, float64, one torch thread) against every way of
batching the tasks it has, each computing the same summed meta-gradient (checked first):

- ``vmap``: distmeta's vmap path over the whole meta-batch (one width: the longest text).
- ``vmap-sorted-N``: the same over groups of N tasks of similar width (less padding).
- ``stacked-N``: no ``torch.func`` at all. The tasks' parameters are stacked along a leading
  task dimension (``theta.expand(T, ...)``; each task's embedding rows gathered), every layer
  is a batched matmul, and plain ``autograd.grad(create_graph=True)`` of the summed support
  loss gives every task its own inner gradient (task t's loss reads only slice t). Groups of
  N tasks of similar width. Written out here for this model only, to measure the idea.

Rounds are interleaved in one process; each ratio is the median of per-round ratios
(batched time / loop time: above 1 means the loop is faster).

    .venv/bin/python -m benchmarks.speed.task_batching [--rounds 3] [--out benchmarks/results/task_batching] [--quick]
"""
from __future__ import annotations

import argparse
import math
import statistics
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.speed.common import interleaved_times, median_ratio, parse_args, report
from benchmarks.speed.peers import CASES, build

QUICK = {"rounds": 1, "meta_batch": 2}
TABLE = "embeddings.word.weight"
Grads = dict[str, Tensor]


def layer_norm(h: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """LayerNorm over the last dim with per-task affine parameters ``[T, D]`` (h is ``[T, N, D]``)."""
    return F.layer_norm(h, h.shape[-1:], None, None, eps) * weight[:, None] + bias[:, None]


def linear(h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``h [T, N, in]`` through per-task ``weight [T, out, in]``, ``bias [T, out]``."""
    return torch.baddbmm(bias[:, None], h, weight.transpose(1, 2))


def stacked_logits(p: Grads, x: Tensor, layers: int, heads: int, eps: float) -> Tensor:
    """distmeta's TransformerEncoder on ``x [T, n, L]`` (ids local to each task's rows of ``p[TABLE]``)."""
    tasks, n, length = x.shape
    dim = p[TABLE].shape[-1]
    mask = x != 0
    h = torch.gather(p[TABLE], 1, x.reshape(tasks, n * length, 1).expand(-1, -1, dim))
    h = h + p["embeddings.position.weight"][:, :length].repeat(1, n, 1) + p["embeddings.token_type.weight"][:, :1]
    h = layer_norm(h, p["embeddings.norm.weight"], p["embeddings.norm.bias"], eps)
    keys = mask.reshape(tasks * n, 1, 1, length)
    def split(t: Tensor) -> Tensor:  # [T, n*L, D] -> [T*n, heads, L, D/heads]
        return t.reshape(tasks * n, length, heads, dim // heads).transpose(1, 2)

    for i in range(layers):
        lin = lambda name, t, i=i: linear(t, p[f"layers.{i}.{name}.weight"], p[f"layers.{i}.{name}.bias"])  # noqa: E731
        scores = split(lin("query", h)) @ split(lin("key", h)).transpose(-1, -2) / math.sqrt(dim // heads)
        scores = torch.where(keys, scores, torch.finfo(scores.dtype).min)
        ctx = (scores.softmax(-1) @ split(lin("value", h))).transpose(1, 2).reshape(tasks, n * length, dim)
        h = layer_norm(h + lin("out", ctx), p[f"layers.{i}.attn_norm.weight"], p[f"layers.{i}.attn_norm.bias"], eps)
        ff = lin("ff_out", F.gelu(lin("ff_in", h)))
        h = layer_norm(h + ff, p[f"layers.{i}.ff_norm.weight"], p[f"layers.{i}.ff_norm.bias"], eps)
    m = mask.reshape(tasks * n, 1, length).to(h.dtype)
    pooled = (m @ h.reshape(tasks * n, length, dim)).squeeze(1) / m.sum(-1).clamp(min=1.0)
    return linear(pooled.view(tasks, n, dim), p["head.weight"], p["head.bias"])


def stacked_group(theta: Grads, batch: dict[str, Tensor], tasks: list[int], cfg) -> None:
    """Accumulate the summed second-order MAML meta-gradient of ``tasks`` into ``theta``'s ``.grad``."""
    sx, qx = [batch["support_x"][t] for t in tasks], [batch["query_x"][t] for t in tasks]
    ids, local = [], []
    for s, q in zip(sx, qx):
        u, inverse = torch.unique(torch.cat([s.reshape(-1), q.reshape(-1), s.new_zeros(1)]), return_inverse=True)
        ids.append(u)
        local.append((inverse[:s.numel()].view_as(s), inverse[s.numel():s.numel() + q.numel()].view_as(q)))
    rows = torch.stack([F.pad(u, (0, max(map(len, ids)) - len(u))) for u in ids])  # padding rows: never read
    width = lambda parts: max(int((t != 0).sum(-1).max()) for t in parts)  # noqa: E731
    xs = torch.stack([s for s, _ in local])[..., :width(sx)]
    xq = torch.stack([q for _, q in local])[..., :width(qx)]
    ys, yq = batch["support_y"][tasks], batch["query_y"][tasks]
    m, a = cfg.model, cfg.algorithm

    def loss(p: Grads, x: Tensor, y: Tensor) -> Tensor:
        out = stacked_logits(p, x, m.layers, m.heads, 1e-12)
        return F.cross_entropy(out.flatten(0, 1), y.reshape(-1), reduction="none").view(y.shape).mean(1).sum()

    p = {n: t[rows] if n == TABLE else t.expand(len(tasks), *t.shape) for n, t in theta.items()}
    for _ in range(a.inner_steps):
        grads = torch.autograd.grad(loss(p, xs, ys), list(p.values()), create_graph=True)
        p = {n: torch.add(t, g, alpha=-a.inner_lr) for (n, t), g in zip(p.items(), grads)}
    loss(p, xq, yq).backward()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--meta-batch", type=int, default=16)
    ap.add_argument("--out", default=None, help="directory for task_batching.txt")
    args = parse_args(ap, QUICK)
    torch.set_num_threads(1)
    base, overrides = CASES["transformer2m-maml"]
    loop = build(base, overrides, args.meta_batch, "float64", [])
    vm = build(base, overrides, args.meta_batch, "float64", ["algorithm.vmap=true"])
    cfg, batch, specs = loop["cfg"], loop["batch"], loop["specs"]
    meta = {n: t.numpy() for n, t in loop["meta"].items()}
    order = sorted(range(len(specs)), key=lambda t: int((batch["support_x"][t] != 0).sum(-1).max()))
    chunks = lambda size: [order[j:j + size] for j in range(0, len(order), size)]  # noqa: E731

    def distmeta(worker, groups: list[list[int]]) -> Callable[[], Grads]:
        def run() -> Grads:
            results = worker.meta_grad_groups(meta, [[specs[t] for t in g] for g in groups])
            return {n: torch.from_numpy(sum(r.grad[n] for r in results)) for n in results[0].grad}
        return run

    def stacked(groups: list[list[int]]) -> Callable[[], Grads]:
        def run() -> Grads:
            theta = {n: t.detach().clone().requires_grad_() for n, t in loop["meta"].items()}
            with torch.enable_grad():
                for g in groups:
                    stacked_group(theta, batch, g, cfg)
            return {n: t.grad for n, t in theta.items()}
        return run

    n = len(specs)
    impls = {"loop (distmeta's choice)": distmeta(loop["worker"], [list(range(n))]),
             "vmap": distmeta(vm["worker"], [list(range(n))]),
             **{f"vmap-sorted-{s}": distmeta(vm["worker"], chunks(s)) for s in (8, 4)},
             **{f"stacked-{s}": stacked(chunks(s)) for s in (n, 8, 4)}}
    ref = impls["loop (distmeta's choice)"]()
    norm = math.sqrt(sum(float((g ** 2).sum()) for g in ref.values()))
    errors = {}
    for name, fn in impls.items():
        g = fn()
        errors[name] = math.sqrt(sum(float(((g[k] - ref[k]) ** 2).sum()) for k in ref)) / norm
        if errors[name] > 1e-10:
            raise SystemExit(f"{name}: meta-gradient differs from the loop's by {errors[name]:.1e} (global norm)")
    times = interleaved_times(impls, args.rounds)
    base_t = times["loop (distmeta's choice)"]
    lines = [(f"transformer2m-maml, {n} tasks, float64, 1 thread, {args.rounds} interleaved rounds; "
              f"torch {torch.__version__}"), f"{'path':26s} {'median s':>9s} {'t/loop':>7s} {'rel err':>8s}"]
    for name, ts in times.items():
        ratio = median_ratio(ts, base_t)
        lines.append(f"{name:26s} {statistics.median(ts):9.3f} {ratio:6.2f}x {errors[name]:8.1e}")
    report(lines, args.out, "task_batching.txt")


if __name__ == "__main__":
    main()
