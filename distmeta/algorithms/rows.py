"""Adapt only the rows of the token-embedding table that a task reads.

A text model's embedding table (vocabulary x dim) is most of a small model's parameters,
yet a task touches only the rows of the tokens in its support and query sets. Rows
outside them get no inner gradient, so they leave the inner loop unchanged, and the query
loss does not read them: the meta-gradient is exactly that of running the model on the
gathered rows ``E[ids]`` with the token ids renumbered, scattered back into the table
(``index_add``). Id 0 (padding) is always row 0, so padding masks and ``padding_idx`` behave
as before. The inner loop then adapts, differentiates and updates ``len(ids)`` rows instead
of the whole vocabulary, twice over for second order.

Per task on the loop path (the fewest rows); per group on the vmap path (one row set, so
the tasks still stack).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from distmeta.algorithms.functional import Params
from distmeta.tasks.materialise import Task, num_tasks, split_task

if TYPE_CHECKING:
    from distmeta.algorithms.base import Algorithm

#: The models whose ``forward`` reads the named table with the raw token ids ``x`` and nothing else.
TOKEN_TABLES = {"BagEncoder": "embedding.weight", "TransformerEncoder": "embeddings.word.weight"}
PARTS = ("support_x", "query_x")


def token_table(module: nn.Module) -> str | None:
    """The name of ``module``'s token-embedding table, if its class is one of :data:`TOKEN_TABLES`."""
    return TOKEN_TABLES.get(type(module).__name__)


def gather_rows(batch: Task) -> tuple[Tensor, Task]:
    """The sorted ids ``batch`` reads (0 first) and ``batch`` with its token ids renumbered to rows of them."""
    parts = [batch[k] for k in PARTS]
    flat = torch.cat([p.reshape(-1) for p in parts] + [parts[0].new_zeros(1)])
    ids, inverse = torch.unique(flat, sorted=True, return_inverse=True)
    out = dict(batch)
    offset = 0
    for key, p in zip(PARTS, parts):
        out[key] = inverse[offset: offset + p.numel()].view_as(p)
        offset += p.numel()
    return ids, out


def applies(alg: "Algorithm", meta: Params, batch: Task) -> bool:
    """Whether :func:`rows_batch_grad` computes ``alg``'s meta-gradient on ``batch`` exactly."""
    table = alg.row_table
    return (table is not None and table in meta and table in alg.adapt and all(k in batch for k in PARTS)
            and not batch["support_x"].is_floating_point() and alg.has_objective)


def rows_batch_grad(alg: "Algorithm", meta: Params, batch: Task, use_vmap: bool) -> tuple[Params, dict[str, Tensor]]:
    """``alg.batch_grad`` with the inner loop on the gathered rows of the token table (see the module docstring).

    Args:
        alg: a MAML-family algorithm with ``row_table`` set.
        meta: the meta-parameters, the full table among them.
        batch: the group's tasks (token ids).
        use_vmap: vmap over the group (rows per group) or the per-task loop (rows per task).

    Returns:
        The summed meta-gradient (full-size table) and per-task metrics, as ``alg.batch_grad``.
    """
    table = alg.row_table
    assert table is not None
    if use_vmap:
        ids, local = gather_rows(batch)
        grads, metrics = alg.dense_batch_grad({**meta, table: meta[table][ids]}, local, use_vmap=True)
        full = torch.zeros_like(meta[table]).index_add_(0, ids, grads[table])
        return {**grads, table: full}, metrics
    total: Params = {n: torch.zeros_like(p) for n, p in meta.items()}
    rows: list[dict[str, Tensor]] = []
    leaves = {n: p.detach().requires_grad_() for n, p in meta.items() if n != table}
    with torch.enable_grad():
        for t in range(num_tasks(batch)):
            ids, local = gather_rows(split_task(batch, t))
            sub = meta[table][ids].detach().requires_grad_()
            loss, m = alg.objective({**leaves, table: sub}, local)
            loss.backward()
            total[table].index_add_(0, ids, sub.grad)
            rows.append(m)
    for n, p in leaves.items():
        if p.grad is not None:
            total[n] = p.grad
    return total, {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
