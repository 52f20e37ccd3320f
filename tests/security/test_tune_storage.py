"""Item 8: Tune's storage_path (Tuner.restore unpickles from it) must not be writable by other users."""
from __future__ import annotations

import os

import pytest

from distmeta.distributed import session as ray_session
from distmeta.errors import DistmetaError
from distmeta.security import check_private_dir


@pytest.mark.parametrize("how", ["world_writable", "group_writable", "other_owner"])
def test_a_storage_path_others_can_write_is_refused_before_ray_starts(tmp_path, monkeypatch, how):
    from distmeta.sweeps import run_search

    storage = tmp_path / "tune"
    storage.mkdir()
    if how == "other_owner":
        os.chown(storage, 54321, 54321)
    else:
        storage.chmod(0o777 if how == "world_writable" else 0o775)
    monkeypatch.setattr(ray_session, "connect", lambda cfg: pytest.fail("Ray started for an unsafe storage_path"))
    with pytest.raises(DistmetaError, match=r"storage_path .*(writable by other users|belongs to uid 54321)"):
        run_search("configs/tune_sinusoid_asha.yaml", [f"storage_path={storage}", "name=x"], resume=True)


def test_ancestors_writable_by_others_without_sticky_bit_are_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(DistmetaError, match="its parent"):
        check_private_dir(shared / "mine", "Tune storage_path")
    shared.chmod(0o1777)  # like /tmp: others cannot replace what is ours
    check_private_dir(shared / "mine", "Tune storage_path")
