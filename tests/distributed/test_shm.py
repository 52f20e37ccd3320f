"""Shared-memory slabs: what the driver writes an actor's map reads, sizes grow under new paths, files are removed."""
from __future__ import annotations

import os

import numpy as np
import pytest

from distmeta.distributed.shm import (
    Slab,
    SlabMaps,
    shared_memory_available,
    sweep_orphans,
)
from distmeta.distributed.wire import pack, pack_into, unpack
from distmeta.worker import GroupResult

pytestmark = pytest.mark.skipif(not shared_memory_available(), reason="needs a writable /dev/shm")


def test_a_map_by_path_sees_the_drivers_writes_both_ways():
    slab = Slab("t")
    try:
        array = slab.ensure(1000)
        assert array.nbytes >= 1000 and os.path.exists(slab.path)
        actor_view = SlabMaps().get(slab.path)  # as an actor maps it
        array[:4] = [1, 2, 3, 4]
        assert actor_view[:4].tolist() == [1, 2, 3, 4]
        actor_view[10] = 9
        assert array[10] == 9
    finally:
        slab.close()


def test_growing_moves_to_a_new_path_and_removes_the_old_file():
    slab = Slab("t")
    first = slab.ensure(10).nbytes
    old = slab.path
    assert slab.ensure(first) is slab.array and slab.path == old, "no new file while it fits"
    slab.ensure(first + 1)
    assert slab.path != old and not os.path.exists(old) and slab.array.nbytes > first
    new = slab.path
    slab.close()
    assert not os.path.exists(new)


def test_maps_keep_the_most_recent_paths():
    slabs = [Slab(f"t{i}") for i in range(3)]
    try:
        maps = SlabMaps(keep=2)
        for s in slabs:
            s.ensure(10)
            maps.get(s.path)
        assert list(maps._maps) == [slabs[1].path, slabs[2].path]
        maps.get(slabs[1].path)  # used again: now the most recent
        assert list(maps._maps) == [slabs[2].path, slabs[1].path]
    finally:
        for s in slabs:
            s.close()


def test_results_packed_into_a_slab_region_unpack_exactly():
    rng = np.random.default_rng(1)
    results = [GroupResult(grad={"w": rng.standard_normal((40, 8)).astype(np.float32), "b": rng.standard_normal(8)},
                           metrics={"loss": [0.25]}, tasks=[(2, 0)], version=2)]
    slab = Slab("t")
    try:
        slab.ensure(1 << 16)
        region = SlabMaps().get(slab.path)[128: 128 + 4096]  # an actor's block region
        header, nbytes = pack_into(results, region)
        assert nbytes == pack(results)[1].nbytes
        got = unpack((header, np.array(slab.array[128: 128 + nbytes])))  # what the driver reads back
        assert got[0].tasks == [(2, 0)] and got[0].version == 2
        for name, want in results[0].grad.items():
            assert got[0].grad[name].dtype == want.dtype
            np.testing.assert_array_equal(got[0].grad[name], want)
        assert pack_into(results, region[:100]) is None, "too small: nothing written, the caller falls back"
    finally:
        slab.close()


def test_files_of_dead_drivers_are_swept_and_live_ones_kept():
    import subprocess
    import sys

    from distmeta.distributed.shm import slab_dir

    # A driver that made a slab and was killed before unlinking it: its flock died with it.
    code = "from distmeta.distributed.shm import Slab; s = Slab('out0'); s.ensure(10); s._finalizer.detach(); print(s.path)"
    dead = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    orphan = slab_dir() / os.path.basename(dead.stdout.strip())
    assert orphan.exists()
    live = Slab("t")
    live.ensure(10)
    try:
        removed = sweep_orphans()
        assert str(orphan) in removed and not orphan.exists()
        assert os.path.exists(live.path), "a running driver's file (its flock held) is left alone"
    finally:
        live.close()
        orphan.unlink(missing_ok=True)
