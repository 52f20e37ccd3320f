"""Item 4: /dev/shm slabs are private, their liveness is a flock, the sweep survives hostile entries, no SIGBUS."""
from __future__ import annotations

import errno
import fcntl
import os
import stat

import numpy as np
import pytest

from distmeta.distributed import shm

OTHER_UID = 54321  # a user that is not us (we may be root: chown makes the "other user" files)


@pytest.fixture
def shm_root(tmp_path, monkeypatch):
    """A private stand-in for /dev/shm (tmp_path): the tests plant what another user would."""
    monkeypatch.setattr(shm, "SHM_DIR", tmp_path)
    monkeypatch.setattr(shm, "_swept", set())
    return tmp_path


def test_slabs_are_0600_in_a_private_0700_dir(shm_root):
    slab = shm.Slab("t")
    try:
        slab.ensure(10)
        d = shm_root / f"distmeta-{os.getuid()}"
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700 and os.path.dirname(slab.path) == str(d)
        assert stat.S_IMODE(os.stat(slab.path).st_mode) == 0o600
    finally:
        slab.close()


@pytest.mark.parametrize("plant", ["other_users_dir", "symlink", "file"])
def test_a_planted_slab_dir_is_refused_and_shared_memory_falls_back(shm_root, tmp_path_factory, plant):
    d = shm_root / f"distmeta-{os.getuid()}"
    if plant == "other_users_dir":
        d.mkdir(mode=0o777)
        os.chown(d, OTHER_UID, OTHER_UID)
    elif plant == "symlink":
        d.symlink_to(tmp_path_factory.mktemp("elsewhere"))
    else:
        d.write_bytes(b"")
    with pytest.warns(shm.ShmWarning, match="shared memory disabled"):
        assert shm.shared_memory_available() is False
    with pytest.raises(shm.ShmUnavailable):
        shm.Slab("t").ensure(10)
    assert not any(p.name.endswith("-t") for p in shm_root.rglob("*")), "nothing written into the planted place"


def test_sweep_removes_only_unlocked_own_files_and_survives_everything_else(shm_root, tmp_path_factory):
    d = shm.slab_dir()
    orphan = d / "dead-driver-out0"
    orphan.write_bytes(b"x")
    theirs = d / "other-user-out0"
    theirs.write_bytes(b"x")
    os.chown(theirs, OTHER_UID, OTHER_UID)
    (d / "a-directory").mkdir()
    (d / "dangling").symlink_to(d / "nowhere")
    target = tmp_path_factory.mktemp("victim") / "precious"
    target.write_bytes(b"keep me")
    (d / "link-to-victim").symlink_to(target)
    live = d / "live-driver-out0"  # another driver (another open file) holds its lock
    live.write_bytes(b"x")
    holder = os.open(live, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with pytest.warns(shm.ShmWarning) as caught:
            removed = shm.sweep_orphans()
        assert removed == [str(orphan)]
        assert theirs.exists() and live.exists() and (d / "a-directory").is_dir() and target.read_bytes() == b"keep me"
        said = " ".join(str(w.message) for w in caught)
        for name in ("other-user-out0", "a-directory", "dangling", "link-to-victim"):
            assert name in said, name
    finally:
        os.close(holder)


def test_a_full_shm_is_an_error_at_creation_never_a_sigbus(shm_root, monkeypatch):
    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    slab = shm.Slab("t")
    with pytest.raises(shm.ShmUnavailable, match="No space left"):
        slab.ensure(4 << 20)
    assert slab.path is None and list(shm.slab_dir().iterdir()) == [], "nothing left behind"


def test_actor_maps_only_this_users_slab_files(shm_root, tmp_path_factory):
    outside = tmp_path_factory.mktemp("out") / "f"
    outside.write_bytes(b"\0" * 64)
    with pytest.raises(shm.ShmUnavailable):
        shm.SlabMaps().get(str(outside))
    slab = shm.Slab("t")
    try:
        slab.ensure(10)[:2] = [7, 8]
        assert np.asarray(shm.SlabMaps().get(slab.path)[:2]).tolist() == [7, 8]
    finally:
        slab.close()
