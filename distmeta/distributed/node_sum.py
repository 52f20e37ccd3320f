"""Summing a node's group gradients on that node, so the driver receives a few sums instead of every group's.

With actors on several nodes (``ray.node_reduce``), the dispatcher hands each node other
than the driver's a :class:`SumRequest` for the blocks its actors are computing: one of
them (the *reducer*, the node's first actor) waits for the others' answers (Ray moves
them inside the node), checks them as the driver would (:mod:`distmeta.distributed.answers`),
and sums every contiguous run of good blocks into whole subtrees of the reduction tree
(:mod:`distmeta.groups.tree`). Those sums are the bits the driver would have computed, so
the parameters do not change. A block the reducer could not use (late, failed, malformed)
is left to the driver, which reads that block's answer itself and retries it as usual.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

import ray

from distmeta.distributed import answers
from distmeta.distributed.wire import Packed, pack
from distmeta.groups import add_grads, combine, cover
from distmeta.tasks.specs import TaskSpec


@dataclass
class SumRequest:
    """What a node's reducer needs: its blocks (in group order), their tasks, and what a good answer looks like."""

    blocks: list[range]
    groups: dict[int, list[TaskSpec]]  # the blocks' groups, by group index
    version: int
    spec: answers.MetaSpec
    total: int  # groups in the step: the reduction tree's size
    wait_s: float  # how long to wait for the blocks' answers

    def dumps(self) -> bytes:
        return pickle.dumps(self, protocol=5)


def _sum_run(values: dict[int, Any], lo: int, hi: int, total: int) -> list[Any]:
    """The GroupResults of groups ``[lo, hi)`` with their gradients summed into the run's whole subtrees."""
    results = [values[i] for i in range(lo, hi)]
    leaves = {(i, i + 1): values[i].grad for i in range(lo, hi)}
    for a, b in cover(lo, hi, total):
        summed = combine(leaves, a, b, add_grads)
        results[a - lo].grad = {n: t.numpy() if hasattr(t, "numpy") else t for n, t in summed.items()}
        results[a - lo].covers = b - a
        for k in range(a + 1, b):
            results[k - lo].grad, results[k - lo].covers = {}, 0
    return results


def sum_blocks(request: SumRequest, refs: list[Any]) -> Packed:
    """Run on the reducer: the node's usable blocks summed by run, and the positions of the others.

    Returns:
        Packed ``{"runs": [(lo, hi, [GroupResult, ...])], "unused": [block positions]}``.
    """
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=request.wait_s)
    values: dict[int, Any] = {}
    unused: list[int] = []
    for pos, (block, ref) in enumerate(zip(request.blocks, refs)):
        value, problem = None, "late"
        if ref in ready:
            try:
                value, problem = answers.open_answer(ray.get(ref))
            except Exception as err:  # noqa: BLE001 - the driver reads this block itself and judges the failure
                problem = f"{type(err).__name__}"
            problem = problem or answers.group_results_problem(block, value, request.groups, request.version,
                                                               request.spec)
        if problem is not None:
            unused.append(pos)
            continue
        values.update(zip(block, value))
    runs, start = [], None
    good = [b for pos, b in enumerate(request.blocks) if pos not in unused]
    for k, block in enumerate(good):
        start = block.start if start is None else start
        if k + 1 == len(good) or good[k + 1].start != block.stop:
            runs.append((start, block.stop, _sum_run(values, start, block.stop, request.total)))
            start = None
    return pack({"runs": runs, "unused": unused})
