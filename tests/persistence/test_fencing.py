"""A writer paused past its lease lands nothing the run's readers see (issue 23 #1), against moto.

The paused writer is a real process that stops itself with SIGSTOP at a chosen request, after its
lease check passed; a second writer takes the run over with ``--resume`` and finishes it; then the
first gets SIGCONT. References are independent of the code under test: the same run trained straight
through in a local directory, and boto3's listing of the bucket.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import distmeta
from distmeta.cli import main
from distmeta.errors import RunDirError
from distmeta.persistence import identity as identity_mod
from distmeta.persistence import lease as lease_mod
from distmeta.persistence.lease import Lease, current_generation, list_claims
from distmeta.persistence.location import open_run
from distmeta.persistence.storage import open_store
from distmeta.training.metrics import read_metrics
from tests.helpers import QUIET, SINUSOID_TINY
from tests.persistence.s3server import plant_holder
from tests.persistence.test_storage import keys

ROOT = Path(__file__).resolve().parents[2]
ARGS = [*SINUSOID_TINY, *QUIET, "run.log_every=1", "run.checkpoint_every=2", "train.steps=6"]

# The paused writer: the CLI, with one storage request wrapped to SIGSTOP this process just before it is sent.
WRITER = r"""
import os, signal, sys
from distmeta.persistence import storage
from distmeta.cli import main

where, args = sys.argv[1], sys.argv[2:]
real_delete, real_upload = storage.Store.delete_file, storage.Store.upload
stopped = []

def pause():
    if not stopped:
        stopped.append(1)
        os.kill(os.getpid(), signal.SIGSTOP)

def delete_file(self, rel):
    if where == "install" and rel == "step_00000004/manifest.json":  # clearing step 4 for its commit
        pause()
    real_delete(self, rel)

def upload(self, src, rel):
    if where == "sync" and rel == "metrics.jsonl" and '"step": 5' in open(src).read():  # step 5's row
        pause()
    real_upload(self, src, rel)

storage.Store.delete_file, storage.Store.upload = delete_file, upload
sys.exit(main(["train", *args]))
"""


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict[str, torch.Tensor]:
    run = tmp_path_factory.mktemp("straight") / "run"
    assert main(["train", *ARGS, f"run.dir={run}"]) == 0
    return distmeta.load_checkpoint(run).meta_params


def _wait_stopped(proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "T":
            return
        if proc.poll() is not None:
            raise AssertionError(f"the writer exited ({proc.returncode}) before pausing: {proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError("the writer never paused")


def _shift_clock(monkeypatch, seconds: float) -> None:
    real = time.time
    monkeypatch.setattr(lease_mod.time, "time", lambda: real() + seconds)


@pytest.mark.parametrize("where", ["install", "sync"])
def test_writer_paused_past_its_ttl_lands_nothing_after_a_takeover(where, endpoint, bucket, straight, tmp_path,
                                                                   monkeypatch, capsys) -> None:
    uri = f"s3://{bucket}/runs/a"
    env = {**os.environ, "DISTMETA_CACHE_DIR": str(tmp_path / "host-a"), "DISTMETA_LEASE_TTL": "2",
           "DISTMETA_SYNC_EVERY": "0"}
    first = subprocess.Popen([sys.executable, "-c", WRITER, where, *ARGS, f"run.dir={uri}"], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_stopped(first)
        store = open_store(uri)
        paused_token = list_claims(store)[0].token

        monkeypatch.setenv("DISTMETA_CACHE_DIR", str(tmp_path / "host-b"))
        with monkeypatch.context() as m:  # a taker whose clock runs 150 s ahead still sees a live lease
            _shift_clock(m, 150)
            assert main(["train", "--resume", uri, *ARGS]) == 2
        assert "in use by another distmeta writer" in capsys.readouterr().err
        time.sleep(4.5)  # past the paused writer's ttl (2 s) and the store's one-second clock
        assert main(["train", "--resume", uri, *ARGS]) == 0
    finally:
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=120)

    final = distmeta.load_checkpoint(uri)
    assert final.step == 6
    for n, t in straight.items():
        assert torch.equal(final.meta_params[n], t), n
    assert [r["step"] for r in read_metrics(uri) if "train/loss" in r] == [1, 2, 3, 4, 5, 6]
    ck = current_generation(store).child("checkpoints")
    assert sorted(ck.listdir()) == ["step_00000004", "step_00000006"], "the checkpoint resumed from is intact"
    assert distmeta.load_checkpoint(ck.uri_of("step_00000004")).step == 4
    assert first.returncode == 2 and "lease was taken over" in err, err[-3000:]  # it stopped, saying why

    monkeypatch.setenv("DISTMETA_CACHE_DIR", str(tmp_path / "host-c"))
    open_run(uri, resume=True).close()  # the next writer sweeps what the paused one may have added since
    assert not [k for k in keys(endpoint, bucket) if paused_token in k]
    assert distmeta.load_checkpoint(uri).step == 6


def _holder(uri: str, ttl: float) -> subprocess.Popen:
    code = ("import sys; from distmeta.persistence.lease import Lease; from distmeta.persistence.storage import open_store; "
            f"lease = Lease(open_store({uri!r}), ttl={ttl}, settle=0.1); lease.acquire(); print('HELD', flush=True); "
            "sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "HELD"
    return proc


def test_skewed_clocks_neither_take_a_live_lease_nor_keep_a_dead_one(endpoint, bucket, monkeypatch) -> None:
    uri = f"s3://{bucket}/run"
    holder = _holder(uri, ttl=2)
    try:
        with monkeypatch.context() as m:
            _shift_clock(m, 150)
            with pytest.raises(RunDirError, match="in use by another distmeta writer"):
                Lease(open_store(uri), ttl=60, settle=0.05).acquire()
        holder.send_signal(signal.SIGSTOP)  # now it is dead to the world, though its pid lives on
        time.sleep(4.5)
        with monkeypatch.context() as m:
            _shift_clock(m, -150)
            taker = Lease(open_store(uri), ttl=60, settle=0.05)
            taker.acquire()
            taker.release()
    finally:
        holder.kill()
        holder.wait()


def test_a_live_holder_on_another_machine_with_the_same_hostname_is_not_taken_for_gone(endpoint, bucket,
                                                                                       monkeypatch) -> None:
    uri = f"s3://{bucket}/run"
    holder = _holder(uri, ttl=30)
    try:
        # Seen from another machine that has the same hostname: the holder's pid does not exist there.
        real_kill, real_read = os.kill, identity_mod._read

        def kill(pid: int, sig: int) -> None:
            if pid == holder.pid:
                raise ProcessLookupError(pid)
            real_kill(pid, sig)

        with monkeypatch.context() as m:  # undone before the holder is killed below
            m.setattr(os, "kill", kill)
            m.setattr(identity_mod, "_read", lambda p: "another-boot" if "boot_id" in p else real_read(p))
            with pytest.raises(RunDirError, match="in use by another distmeta writer"):
                Lease(open_store(uri), ttl=60, settle=0.05).acquire()
    finally:
        holder.kill()
        holder.wait()


def test_a_pid_reused_on_this_boot_frees_the_lease_at_once(endpoint, bucket) -> None:
    run = open_store(f"s3://{bucket}/run")
    me = identity_mod.identity()
    holder = {**me, "start": "1", "token": "0000000000bb", "ttl": 3600}  # this pid, but a process started long ago
    plant_holder(run, holder)
    lease = Lease(run, ttl=60, settle=0.05)
    lease.acquire()
    assert lease.claim.epoch == 2
    lease.release()


@pytest.mark.parametrize("ttl", [0, -5, float("nan"), float("inf")])
def test_a_lease_that_never_lives_is_refused(ttl, endpoint, bucket) -> None:
    with pytest.raises(RunDirError, match="lease ttl must be a positive number of seconds"):
        Lease(open_store(f"s3://{bucket}/run"), ttl=ttl, settle=0.05)


def test_a_ttl_of_zero_from_the_environment_is_refused(endpoint, bucket, monkeypatch) -> None:
    monkeypatch.setenv("DISTMETA_LEASE_TTL", "0")
    with pytest.raises(RunDirError, match="DISTMETA_LEASE_TTL"):
        open_run(f"s3://{bucket}/run")
