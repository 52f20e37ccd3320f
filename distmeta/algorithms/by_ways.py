"""The algorithm for each number of ways an episode has.

A prototype classifier (ProtoNet, Proto-MAML) builds its head from each task's
prototypes, so one replica serves episodes of any number of ways with a shallow copy of
the algorithm per ``ways`` (meta-validation at 5-way after 10-way training, a step of
``data.ways_range``, a mixture source with its own ways). A head-based algorithm has one
``ways``-way head: any other number of ways is refused with an error that says so.

Usage::

    by_ways = ByWays(algorithm)
    by_ways(10).batch_grad(params, batch)   # the same object for every call with 10
"""
from __future__ import annotations

import copy

from distmeta.algorithms.base import Algorithm


class ByWays:
    """A per-ways cache of one algorithm: the algorithm itself for its own ways (and regression), copies otherwise.

    Args:
        algorithm: the replica's algorithm, built for ``algorithm.ways`` ways.
    """

    def __init__(self, algorithm: Algorithm) -> None:
        self.base = algorithm
        self._copies: dict[int, Algorithm] = {}

    def __call__(self, ways: int | None) -> Algorithm:
        """The algorithm for ``ways``-way episodes (``None``: tasks without ways, such as regression).

        Raises:
            ValueError: ``ways`` differs from a head-based algorithm's fixed head.
        """
        base = self.base
        if ways is None or ways == base.ways or base.kind == "regression":
            return base
        if not base.any_ways:
            raise ValueError(
                f"{base.name} has a {base.ways}-way head: it can only be evaluated on {base.ways}-way episodes, "
                f"not {ways}-way (ProtoNet and Proto-MAML have no such limit)"
            )
        if ways not in self._copies:
            alg = copy.copy(base)
            alg.ways = ways
            self._copies[ways] = alg
        return self._copies[ways]


__all__ = ["ByWays"]
