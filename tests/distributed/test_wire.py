"""Specs and results survive the trip through distmeta.distributed.wire unchanged, arrays zero-copy."""
from __future__ import annotations

import numpy as np

from distmeta.distributed.wire import ALIGN, pack, unpack
from distmeta.worker import GroupResult


def test_group_results_round_trip_exactly_with_aligned_read_only_views():
    rng = np.random.default_rng(0)
    results = [
        GroupResult(grad={"w": rng.standard_normal((3, 5)).astype(np.float32), "b": rng.standard_normal(7)},
                    metrics={"loss": [0.5, float("nan")]}, tasks=[(4, 0), (4, 1)], version=4, bad_tasks=[(4, 1)]),
        GroupResult(grad={"w": np.zeros((0, 5), np.float32), "b": np.arange(3, dtype=np.int64)},
                    metrics={"loss": [1.0]}, tasks=[(4, 2)], version=4),
    ]
    header, blob = pack(results)
    blob.setflags(write=False)  # as it arrives from Ray's object store
    got = unpack((header, blob))
    for want, have in zip(results, got):
        assert have.tasks == want.tasks and have.version == want.version and have.bad_tasks == want.bad_tasks
        np.testing.assert_equal(have.metrics["loss"], want.metrics["loss"])
        for name, array in want.grad.items():
            assert have.grad[name].dtype == array.dtype and have.grad[name].shape == array.shape
            np.testing.assert_array_equal(have.grad[name], array)
            if have.grad[name].size:  # a view of the received blob, not a copy; aligned for any dtype
                assert np.shares_memory(have.grad[name], blob)
                assert have.grad[name].ctypes.data % ALIGN == blob.ctypes.data % ALIGN


def test_objects_without_arrays_pack_to_an_empty_blob():
    header, blob = pack({"loss": [1.0, 2.0], "key": "val-3"})
    assert blob.size == 0
    assert unpack((header, blob)) == {"loss": [1.0, 2.0], "key": "val-3"}
