"""The fixed pairwise tree in which group gradients are summed: it depends only on the number of groups.

The tree over groups ``[0, G)`` splits ``[lo, hi)`` at ``lo + p``, ``p`` the largest power of
two below ``hi - lo``. A node of the cluster can sum a contiguous block of groups on its
own: the block is the union of a few whole subtrees (:func:`cover`), and the sum of a
subtree is the same floating-point value wherever it is computed. The driver then
combines whatever it receives, single group gradients or subtree sums
(:func:`combine`), into exactly the bits of the whole tree. So the parameters do not
depend on how many actors or nodes computed the step, nor on where the sums were taken.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence, TypeVar

T = TypeVar("T")

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
