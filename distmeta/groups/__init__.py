"""Task groups: how a meta-batch is cut into groups, which actor computes which, and how their gradients are summed.

Everything here depends only on the meta-batch and the group size, never on how many
actors or nodes there are, which is what makes every backend give the same parameters:

* **cutting**: a meta-batch of ``B`` task specs becomes consecutive groups of
  ``algorithm.group_size`` (:func:`chunks`, :func:`cut`); a group is summed as one unit;
* **assigning**: actor ``k`` of ``n`` computes the contiguous block ``[k*G//n, (k+1)*G//n)``
  of the ``G`` groups (:func:`assign_blocks`);
* **summing**: group gradients are summed in a pairwise tree fixed by ``G``. The tree over
  ``[0, G)`` splits ``[lo, hi)`` at ``lo + p``, ``p`` the largest power of two below
  ``hi - lo``. A node of the cluster can sum a contiguous block of groups on its own: the
  block is the union of a few whole subtrees (:func:`cover`), and the sum of a subtree is
  the same floating-point value wherever it is computed. The driver then combines whatever
  it receives, single group gradients or subtree sums (:func:`combine`), into exactly the
  bits of the whole tree (:func:`reduce_groups`);
* **sizing**: ``algorithm.group_size: auto`` measures one group's peak memory and picks the
  largest size within a budget (:mod:`distmeta.groups.sizing`).
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping, Sequence, TypeVar

import numpy as np
import torch

from distmeta.results import GroupResult

T = TypeVar("T")


# ---------------------------------------------------------------------- cutting and assigning
def chunks(n: int, size: int) -> list[range]:
    """Consecutive index ranges of at most ``size``: the fixed task groups."""
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def cut(specs: Sequence[T], size: int) -> list[list[T]]:
    """A meta-batch cut into groups of ``size`` (the last one possibly smaller), in order."""
    return [list(specs[r.start: r.stop]) for r in chunks(len(specs), size)]


def assign_blocks(num_groups: int, num_actors: int) -> list[range]:
    """Contiguous blocks of groups, one per actor: actor ``k`` gets ``[k*G//n, (k+1)*G//n)``.

    Deterministic and balanced to within one group; the fixed-order summation then gives
    the same parameters for any actor count.
    """
    return [range(k * num_groups // num_actors, (k + 1) * num_groups // num_actors) for k in range(num_actors)]


# ---------------------------------------------------------------------- summing

#: A subtree of the tree over ``[0, G)``: the groups ``[lo, hi)`` it sums.
Span = tuple[int, int]


def split(lo: int, hi: int) -> int:
    """Where the tree splits ``[lo, hi)`` (``hi - lo >= 2``): after the largest power of two below its size."""
    return lo + (1 << ((hi - lo - 1).bit_length() - 1))


def is_node(lo: int, hi: int, total: int) -> bool:
    """Whether ``[lo, hi)`` is a subtree of the tree over ``[0, total)``."""
    a, b = 0, total
    while (a, b) != (lo, hi):
        if b - a < 2 or not a <= lo < hi <= b:
            return False
        mid = split(a, b)
        if hi <= mid:
            b = mid
        elif lo >= mid:
            a = mid
        else:
            return False
    return True


def cover(lo: int, hi: int, total: int) -> list[Span]:
    """The fewest whole subtrees of the tree over ``[0, total)`` that make up ``[lo, hi)``, in order."""
    out: list[Span] = []

    def visit(a: int, b: int) -> None:
        if hi <= a or b <= lo:
            return
        if lo <= a and b <= hi:
            out.append((a, b))
            return
        mid = split(a, b)
        visit(a, mid)
        visit(mid, b)

    if lo < hi:
        visit(0, total)
    return out


def tree_sum(leaves: Sequence[T], add: Callable[[T, T], T]) -> T:
    """The tree sum of ``leaves`` (``add(left, right)`` at every inner node)."""
    return combine({(i, i + 1): leaf for i, leaf in enumerate(leaves)}, 0, len(leaves), add)


def combine(sums: Mapping[Span, T], lo: int, hi: int, add: Callable[[T, T], T]) -> T:
    """The tree sum of ``[lo, hi)`` from known subtree sums (single groups are the spans ``(i, i + 1)``).

    Raises:
        KeyError: a group of ``[lo, hi)`` is covered by no known sum.
    """
    if (lo, hi) in sums:
        return sums[(lo, hi)]
    if hi - lo < 2:
        raise KeyError(f"no gradient for group {lo}")
    mid = split(lo, hi)
    return add(combine(sums, lo, mid, add), combine(sums, mid, hi, add))


def add_grads(a: Mapping[str, Any], b: Mapping[str, Any], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """``a + b`` per name, as fresh tensors (numpy inputs are only read: Ray's are read-only)."""
    def tensor(x: Any) -> torch.Tensor:
        t = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
        return t.to(dtype) if dtype is not None else t

    return {n: tensor(a[n]) + tensor(b[n]) for n in a}


def group_sums(results: Sequence[GroupResult]) -> dict[Span, dict[str, Any]]:
    """The gradient sums the results carry, by the span of groups each one sums.

    A result sums its own group (``covers == 1``), a whole subtree of groups starting at it
    (a node's reducer, ``covers > 1``), or nothing because another result's sum holds it (``0``).
    """
    return {(i, i + r.covers): r.grad for i, r in enumerate(results) if r.covers}


def reduce_groups(results: Sequence[GroupResult], names: list[str], dtype: torch.dtype,
                  out: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Sum the group gradients in the fixed pairwise tree over the group count (the tree above).

    The tree depends only on how many groups there are, and a subtree's sum is the same
    bits wherever it was taken, so any backend, actor count and node layout give the same
    parameters.

    Args:
        results: one per group, in group order (possibly carrying subtree sums, see :func:`group_sums`).
        names: the meta-parameter names to sum.
        dtype: the sum's dtype (the run's).
        out: buffers (e.g. :meth:`OuterOptimizer.grad_buffers`) that receive the sum.

    Returns:
        The sum, by name (``out`` when given).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        sums = {span: {n: g[n] for n in names} for span, g in group_sums(results).items()}
        total = combine(sums, 0, len(results), lambda a, b: add_grads(a, b, dtype))
        if out is None:
            return {n: (torch.from_numpy(t) if isinstance(t, np.ndarray) else t).to(dtype, copy=True)
                    for n, t in total.items()}
        return {n: out[n].copy_(torch.from_numpy(t) if isinstance(t, np.ndarray) else t) for n, t in total.items()}
