"""Samplers: stateless task specs, variable-way / variable-shot episodes (``data.ways_range`` / ``data.shots_range``)."""
from __future__ import annotations

import numpy as np
import pytest

from distmeta.errors import DataError
from distmeta.tasks.sampler import EpisodeSampler

ROWS = {c: np.arange(c * 100, c * 100 + 12) for c in range(10)}  # 10 classes, 12 rows each


def make(ways=5, shots=1, queries=3, seed=0, stream="train", ways_range=None, shots_range=None, classes=range(10)):
    return EpisodeSampler(ROWS, list(classes), ways, shots, queries, seed, stream,
                          ways_range=ways_range, shots_range=shots_range)


def test_specs_are_a_pure_function_of_seed_step_index():
    a, b = make(ways_range=(2, 6), shots_range=(1, 4)), make(ways_range=(2, 6), shots_range=(1, 4))
    for step in (0, 1, 7, 123):
        assert a.batch(step, 6) == b.batch(step, 6)
        # any worker count / order: one task alone is the same as in its meta-batch
        assert [a.sample(step, i) for i in reversed(range(6))] == list(reversed(b.batch(step, 6)))
    assert make(seed=1, ways_range=(2, 6), shots_range=(1, 4)).batch(3, 6) != a.batch(3, 6)


def test_every_task_of_a_step_shares_its_shape_and_shapes_vary_over_steps():
    s = make(ways_range=(2, 6), shots_range=(1, 4))
    shapes = []
    for step in range(200):
        specs = s.batch(step, 5)
        assert {(t.ways, t.shots, t.queries) for t in specs} == {(*s.shape(step), 3)}
        assert all(len(set(t.classes)) == t.ways for t in specs)
        assert all(len(q) == 3 for t in specs for q in t.query)
        shapes.append(s.shape(step))
    ways, shots = {w for w, _ in shapes}, {k for _, k in shapes}
    assert ways == set(range(2, 7)) and shots == set(range(1, 5))  # bounds respected, every value drawn
    assert len(set(shapes)) > 10


def test_one_range_leaves_the_other_fixed_and_no_range_is_the_fixed_sampler():
    assert {make(ways=4, shots_range=(1, 3)).shape(s)[0] for s in range(50)} == {4}
    assert {make(shots=2, ways_range=(2, 3)).shape(s)[1] for s in range(50)} == {2}
    fixed = make(ways=3, shots=2)
    assert {fixed.shape(s) for s in range(20)} == {(3, 2)}
    # a degenerate range draws the fixed shape, and the same tasks as the fixed sampler
    assert make(ways=3, shots=2, ways_range=(3, 3), shots_range=(2, 2)).batch(5, 4) == fixed.batch(5, 4)


def test_streams_differ_and_validation_keeps_its_fixed_shape():
    train, val = make(stream="train"), make(stream="val")
    assert train.batch(0, 4) != val.batch(0, 4)


def test_class_checks_use_the_largest_ways_and_shots():
    make(ways=2, ways_range=(2, 10))  # exactly 10 classes: fine
    with pytest.raises(DataError, match=r"fewer than the largest ways=11"):
        make(ways=2, ways_range=(2, 11))
    make(shots=1, queries=3, shots_range=(1, 9))  # 9 + 3 = 12 rows: fine
    with pytest.raises(DataError, match=r"largest shots\+queries=13"):
        make(shots=1, queries=3, shots_range=(1, 10))


@pytest.mark.parametrize("kw", [{"ways_range": (1, 3)}, {"ways_range": (4, 3)}, {"shots_range": (0, 2)},
                                {"shots_range": (3, 2)}])
def test_bad_ranges_are_refused(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        make(**kw)
