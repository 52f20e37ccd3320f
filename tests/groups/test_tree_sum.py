"""The summation tree: fixed by the group count, and the same bits however the groups are split among nodes."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from distmeta.groups import combine, cover, is_node, reduce_groups, split, tree_sum
from distmeta.worker import GroupResult
from tests.helpers import pairwise_tree_sum


def test_cover_tiles_any_range_with_few_whole_subtrees():
    for total in range(1, 20):
        for lo in range(total):
            for hi in range(lo + 1, total + 1):
                spans = cover(lo, hi, total)
                assert [i for a, b in spans for i in range(a, b)] == list(range(lo, hi))
                assert all(is_node(a, b, total) for a, b in spans)
                assert len(spans) <= 2 * max(1, (hi - lo).bit_length())
    assert cover(0, 8, 8) == [(0, 8)] and cover(4, 8, 8) == [(4, 8)] and cover(2, 5, 8) == [(2, 4), (4, 5)]
    assert split(0, 5) == 4 and split(0, 4) == 2 and split(4, 7) == 6


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_any_split_into_node_blocks_gives_the_bits_of_the_whole_tree(dtype):
    """Every way of cutting G groups into contiguous node blocks, each summed on its own, matches the tree sum."""
    rng = np.random.default_rng(0)
    add = lambda a, b: a + b  # noqa: E731
    for total in range(1, 10):
        leaves = [(rng.standard_normal(64) * 10.0 ** rng.integers(-3, 4)).astype(dtype) for _ in range(total)]
        want = pairwise_tree_sum([{"g": torch.from_numpy(x)} for x in leaves])["g"].numpy()
        assert np.array_equal(tree_sum(leaves, add), want)
        for cuts in itertools.chain.from_iterable(itertools.combinations(range(1, total), k) for k in range(total)):
            bounds = [0, *cuts, total]
            sums = {}
            for lo, hi in zip(bounds, bounds[1:]):  # a node sums the subtrees of its block, from its leaves
                for a, b in cover(lo, hi, total):
                    sums[(a, b)] = combine({(i, i + 1): leaves[i] for i in range(a, b)}, a, b, add)
            assert np.array_equal(combine(sums, 0, total, add), want), (total, bounds)


def test_the_tree_is_not_the_left_fold():
    """float32 makes the order visible: the documented tree, not ((g0 + g1) + g2) + g3."""
    leaves = [np.float32(1e8), np.float32(1.0), np.float32(-1e8), np.float32(1.0)]
    assert tree_sum(leaves, lambda a, b: a + b) == (leaves[0] + leaves[1]) + (leaves[2] + leaves[3])
    assert tree_sum(leaves, lambda a, b: a + b) != ((leaves[0] + leaves[1]) + leaves[2]) + leaves[3]


def test_reduce_groups_reads_subtree_sums_where_a_node_left_them():
    rng = np.random.default_rng(1)
    grads = [{"w": rng.standard_normal(5).astype(np.float32)} for _ in range(6)]
    flat = [GroupResult(grad=g, metrics={}, tasks=[]) for g in grads]
    want = reduce_groups(flat, ["w"], torch.float32)["w"]
    assert torch.equal(want, pairwise_tree_sum([{"w": torch.from_numpy(g["w"])} for g in grads])["w"])
    # A node summed groups 0..3 (one subtree) and left the others as they are.
    node_sum = tree_sum([g["w"] for g in grads[:4]], lambda a, b: a + b)
    reduced = [GroupResult(grad={"w": node_sum}, metrics={}, tasks=[], covers=4),
               *[GroupResult(grad={}, metrics={}, tasks=[], covers=0) for _ in range(3)],
               *flat[4:]]
    assert torch.equal(reduce_groups(reduced, ["w"], torch.float32)["w"], want)
