"""Run storage on an object store, against an S3 server started here (moto, the ``dev`` extra).

References are independent of the code under test: the bytes a local save wrote, a run
trained straight through on the local disk, boto3's own view of the bucket.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from distmeta.errors import CheckpointError, RunDirError
from distmeta.persistence.checkpoint import (
    MANIFEST_FILE,
    PARAMS_FILE,
    Checkpoint,
    CheckpointFallbackWarning,
    load_checkpoint,
    save_checkpoint,
)
from distmeta.persistence.checkpoint.remote import (
    fetch_checkpoint,
    publish_checkpoint,
    remote_steps,
    resume_candidates,
)
from distmeta.persistence.lease import Lease
from distmeta.persistence.storage import StorageError, is_remote, local_path, open_store
from tests.persistence.s3server import plant_holder


def ckpt(step: int) -> Checkpoint:
    g = torch.Generator().manual_seed(step)
    params = {"w": torch.randn(5, 3, generator=g), "b": torch.randn(3, generator=g, dtype=torch.float64)}
    return Checkpoint(step=step, meta_params=params, optimizer_state={"steps": step, "m": torch.zeros(3)},
                      state={"best": None}, rng={"torch": torch.get_rng_state()}, config={"seed": 0},
                      files={"split.json": b'{"train": []}'})


def keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    import boto3

    listing = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []) if not o["Key"].endswith("/"))  # not dir markers


def test_uri_kinds() -> None:
    assert is_remote("s3://b/run") and is_remote("gs://b/run")
    assert not is_remote("runs/a") and not is_remote("file:///data/run") and not is_remote(Path("/x"))
    assert local_path("file:///data/my%20run") == Path("/data/my run")


def test_missing_bucket_is_named_before_anything_runs(endpoint) -> None:
    with pytest.raises(StorageError, match=r"s3://no-such-bucket-x/run.*bucket 'no-such-bucket-x' does not exist"):
        open_store("s3://no-such-bucket-x/run")


@pytest.mark.parametrize("uri", ["s3://AKIAX:secret@bucket/run", "s3://bucket/run?secret_key=abc"])
def test_credentials_in_the_uri_are_refused_and_not_echoed(uri: str) -> None:
    with pytest.raises(StorageError, match="environment") as info:
        open_store(uri)
    assert "secret" not in str(info.value).replace("secret_key", "") and "AKIAX" not in str(info.value)


def test_published_checkpoint_is_the_local_one_byte_for_byte(endpoint, bucket, tmp_path) -> None:
    local = save_checkpoint(tmp_path / "run", ckpt(2))
    run = open_store(f"s3://{bucket}/run")
    uri = publish_checkpoint(run, local, keep=3)
    assert uri == f"s3://{bucket}/run/checkpoints/step_00000002"
    assert keys(endpoint, bucket) == sorted(f"run/checkpoints/step_00000002/{p.name}" for p in local.iterdir())
    for p in local.iterdir():
        assert run.read_bytes(f"checkpoints/step_00000002/{p.name}") == p.read_bytes()
    assert load_checkpoint(uri).step == 2  # one step prefix, as eval --checkpoint takes it
    back = load_checkpoint(f"s3://{bucket}/run")
    assert back.step == 2 and back.files == {"split.json": b'{"train": []}'}
    for n, t in ckpt(2).meta_params.items():
        assert torch.equal(back.meta_params[n], t) and back.meta_params[n].dtype == t.dtype


def test_step_without_manifest_is_skipped_and_damaged_one_falls_back(endpoint, bucket, tmp_path, monkeypatch) -> None:
    run = open_store(f"s3://{bucket}/run")
    for step in (2, 4):
        publish_checkpoint(run, save_checkpoint(tmp_path / "run", ckpt(step)), keep=3)
    # A writer that died mid-upload: data files of step 6 but no manifest.
    run.write_bytes("checkpoints/step_00000006/meta_params.safetensors", b"half")
    with pytest.warns(CheckpointFallbackWarning, match="step_00000006"):
        assert load_checkpoint(f"s3://{bucket}/run").step == 4
    # Same size, one byte flipped: the checksum catches it at download (on a host without a cached
    # copy of step 4), and the previous one is used.
    monkeypatch.setenv("DISTMETA_CACHE_DIR", str(tmp_path / "other-host-cache"))
    raw = bytearray(run.read_bytes(f"checkpoints/step_00000004/{PARAMS_FILE}"))
    raw[-2] ^= 0x01
    run.write_bytes(f"checkpoints/step_00000004/{PARAMS_FILE}", bytes(raw))
    with pytest.warns(CheckpointFallbackWarning) as caught:
        assert load_checkpoint(f"s3://{bucket}/run").step == 2
    assert [("step_00000006" in str(w.message), "sha256" in str(w.message)) for w in caught] == \
        [(True, False), (False, True)]
    with pytest.raises(CheckpointError, match="no manifest.json"):
        load_checkpoint(f"s3://{bucket}/run/checkpoints/step_00000006")


def test_a_complete_unfinished_publication_is_a_resume_candidate_read_only(endpoint, bucket, tmp_path) -> None:
    run = open_store(f"s3://{bucket}/run")
    ck = run.child("checkpoints")
    local = save_checkpoint(tmp_path / "run", ckpt(3))
    # What a writer left when it died between steps 2 and 3: a complete temporary prefix, a cleared step.
    for p in local.iterdir():
        ck.upload(p, f".tmp-step_00000003-00000000dead/{p.name}")
    ck.write_bytes(".tmp-step_00000005-0000000000ff/meta_params.safetensors", b"x")  # torn before its manifest
    before = keys(endpoint, bucket)
    assert resume_candidates(ck) == [(".tmp-step_00000005-0000000000ff", "step_00000005"),
                                     (".tmp-step_00000003-00000000dead", "step_00000003")]
    assert keys(endpoint, bucket) == before, "looking for what to resume from changes nothing"


def test_resaving_a_step_replaces_it_and_prune_keeps_the_newest(endpoint, bucket, tmp_path) -> None:
    run = open_store(f"s3://{bucket}/run")
    for step in (1, 2, 3):
        publish_checkpoint(run, save_checkpoint(tmp_path / "run", ckpt(step), keep=5), keep=2)
    assert remote_steps(run.child("checkpoints")) == ["step_00000002", "step_00000003"]
    other = ckpt(3)
    other.meta_params = {"w": torch.full((5, 3), 7.0), "b": torch.zeros(3, dtype=torch.float64)}
    publish_checkpoint(run, save_checkpoint(tmp_path / "run2", other), keep=2)
    assert torch.equal(load_checkpoint(f"s3://{bucket}/run").meta_params["w"], torch.full((5, 3), 7.0))


def test_fetch_reuses_the_cached_copy(endpoint, bucket, tmp_path) -> None:
    run = open_store(f"s3://{bucket}/run")
    publish_checkpoint(run, save_checkpoint(tmp_path / "run", ckpt(2)), keep=3)
    first = fetch_checkpoint(f"s3://{bucket}/run")
    stamp = (first / PARAMS_FILE).stat().st_mtime_ns
    time.sleep(0.01)
    assert fetch_checkpoint(f"s3://{bucket}/run") == first
    assert (first / PARAMS_FILE).stat().st_mtime_ns == stamp and (first / MANIFEST_FILE).is_file()


def test_lease_refuses_a_second_writer_and_a_stalled_one_stops(endpoint, bucket) -> None:
    import json

    run = open_store(f"s3://{bucket}/run")
    first = Lease(run, ttl=60, settle=0.05)
    first.acquire()
    try:
        with pytest.raises(RunDirError, match=r"in use by another distmeta writer: pid \d+ on host"):
            Lease(run, ttl=60, settle=0.05).acquire()
        first.check()
    finally:
        first.release()
    beat = json.loads(run.read_bytes(f".distmeta-lease/{first.claim.name}.beat"))
    assert beat["released"] and beat["pid"] > 0
    stalled = Lease(run, ttl=1, settle=0.05)
    stalled.acquire()  # a released lease is taken at once
    stalled._stop.set()  # it stops renewing (a stalled process)...
    time.sleep(3.2)  # ...past its ttl and the store's one-second clock
    taker = Lease(run, ttl=60, settle=0.05)
    taker.acquire()  # ...so its heartbeat is stale and a new writer takes the run
    assert taker.claim.epoch == stalled.claim.epoch + 1 == 3
    with pytest.raises(RunDirError, match="lease was taken over"):
        stalled.check()
    taker.release()


def test_a_lease_left_by_a_dead_process_on_this_host_is_taken_at_once(endpoint, bucket) -> None:
    import subprocess
    import sys

    from distmeta.persistence.identity import identity

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    run = open_store(f"s3://{bucket}/run")
    me = identity()
    holder = {**me, "pid": int(dead.stdout), "token": "0000000000aa", "ttl": 3600}
    plant_holder(run, holder)
    lease = Lease(run, ttl=60, settle=0.05)
    lease.acquire()
    assert lease.claim.epoch == 2
    lease.release()


@pytest.mark.slow
def test_unreachable_endpoint_is_named(monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(StorageError, match=r"s3://some-bucket/run: it is unreachable"):
        open_store("s3://some-bucket/run")


def test_objects_past_the_server_copy_limit_are_streamed(endpoint, bucket, monkeypatch) -> None:
    import os

    from distmeta.persistence import storage

    store = open_store(f"s3://{bucket}/x")
    data = os.urandom((8 << 20) + 123)  # more than one read chunk
    store.write_bytes("a.bin", data)
    monkeypatch.setattr(storage, "_SERVER_COPY_MAX", 1)
    store.copy("a.bin", "b.bin")
    assert store.read_bytes("b.bin") == data


def test_stray_temporary_names_are_ignored_and_never_become_paths(endpoint, bucket, tmp_path) -> None:
    from distmeta.persistence.location import open_run

    uri = f"s3://{bucket}/run"
    run = open_store(uri)
    for step in (1, 2, 3):
        publish_checkpoint(run, save_checkpoint(tmp_path / "run", ckpt(step), keep=5), keep=5)
    ck = run.child("checkpoints")
    for stray in (".tmp--abc", ".tmp-..-abc", ".tmp-step_00000009-../x"):  # each holds a valid checkpoint
        for name in ck.listdir("step_00000003"):
            ck.copy(f"step_00000003/{name}", f"{stray}/{name}")
    before = keys(endpoint, bucket)
    with pytest.warns(UserWarning) as caught:
        resumed = open_run(uri, resume=True)
    try:
        assert [p.name for p in (resumed.local / "checkpoints").iterdir()] == ["step_00000003"]
    finally:
        resumed.close()
    said = " ".join(str(w.message) for w in caught)
    assert all(f"'{stray}'" in said for stray in (".tmp--abc", ".tmp-..-abc", ".tmp-step_00000009-..")), said
    after = keys(endpoint, bucket)
    assert set(before) <= set(after), "nothing was deleted"
    added = [k for k in after if k not in before]
    assert added and all(k.startswith(("run/.distmeta-lease/", "run/gen-")) for k in added), added


@pytest.mark.parametrize("name, final", [
    (".tmp-step_00000003-0123456789ab", "step_00000003"), (".tmp-step_123456789012-0123456789ab", "step_123456789012"),
    (".tmp--abc", None), (".tmp-..-abc", None), (".tmp-step_00000003-..", None), (".tmp-step_3-0123456789ab", None),
    (".tmp-step_00000003-0123456789AB", None), (".tmp-step_00000003-0123456789ab/..", None), ("step_00000003", None),
])
def test_temporary_names_are_parsed_strictly(name: str, final: str | None) -> None:
    import warnings

    from distmeta.persistence.checkpoint.remote import StrayTempWarning, tmp_final

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert tmp_final(name) == final
    assert [w.category for w in caught] == ([StrayTempWarning] if final is None and name.startswith(".tmp-") else [])
