"""Item 6: one writer per run directory; live writers' temp dirs survive clean-up; 0640 files; corrupt kept aside."""
from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distmeta.cli import main
from distmeta.persistence import checkpoint as ck
from tests.helpers import QUIET, SINUSOID_TINY

ROOT = Path(__file__).resolve().parents[2]
HOLD = """
import sys, time
from distmeta.persistence.rundir import lock_run_dir
lock_run_dir(sys.argv[1])
print("held", flush=True)
sys.stdin.read()
"""


def tiny(step: int) -> ck.Checkpoint:
    return ck.Checkpoint(step=step, meta_params={"w": torch.ones(3) * step}, optimizer_state={"t": step},
                         state={}, rng={"torch": torch.get_rng_state()}, config={"seed": 0})


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, capsys):
    run = tmp_path / "run"
    args = [*SINUSOID_TINY, *QUIET, f"run.dir={run}"]
    assert main(["train", *args, "train.steps=2"]) == 0
    other = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], cwd=ROOT, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert other.stdout.readline().strip() == "held"
        before = sorted(p.name for p in (run / "checkpoints").iterdir())
        assert main(["train", "--resume", str(run), "train.steps=3"]) == 2
        err = capsys.readouterr().err
        assert "in use by another distmeta writer" in err and f"pid {other.pid}" in err, err
        assert main(["train", *args, "--overwrite"]) == 2, "nor moved aside under a live writer"
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    finally:
        other.communicate(input="", timeout=60)
    assert main(["train", "--resume", str(run), "train.steps=3"]) == 0, "free again once the holder is gone"


def test_cleanup_never_deletes_a_live_writers_temp_dir(tmp_path):
    ckdir = tmp_path / "checkpoints"
    ckdir.mkdir()
    live = ckdir / ".tmp-step_00000009-424242"  # another writer, mid-save
    live.mkdir()
    (live / "meta_params.safetensors").write_bytes(b"partial")
    dead = ckdir / ".tmp-step_00000008-434343"
    dead.mkdir()
    fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        ck.save_checkpoint(tmp_path, tiny(1))
        assert live.is_dir() and (live / "meta_params.safetensors").exists(), "a live writer's temp dir was deleted"
        assert not dead.exists(), "a dead writer's leftover is cleaned"
    finally:
        os.close(fd)


def test_checkpoint_files_are_not_world_readable(tmp_path):
    path = ck.save_checkpoint(tmp_path, tiny(1))
    for f in path.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) & 0o037 == 0, (f.name, oct(f.stat().st_mode))
    assert stat.S_IMODE(path.stat().st_mode) & 0o027 == 0


def test_a_corrupt_checkpoint_is_kept_aside_not_deleted(tmp_path):
    first = ck.save_checkpoint(tmp_path, tiny(1), keep=1)
    data = (first / ck.PARAMS_FILE).read_bytes()
    (first / ck.PARAMS_FILE).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.warns(ck.CorruptCheckpointWarning, match="kept aside"):
        ck.save_checkpoint(tmp_path, tiny(2), keep=1)
    aside = [p for p in (tmp_path / "checkpoints").iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].name.startswith("step_00000001.corrupt-")
    assert (aside[0] / ck.PARAMS_FILE).read_bytes()[:-1] == data[:-1], "the damaged files are all still there"
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step_00000002"]
    # The same for a damaged checkpoint that a new save of the same step would replace.
    final = ck.latest_checkpoint(tmp_path)
    (final / ck.STATE_FILE).write_text("{}")
    with pytest.warns(ck.CorruptCheckpointWarning):
        ck.save_checkpoint(tmp_path, tiny(2), keep=1)
    assert len([p for p in (tmp_path / "checkpoints").iterdir() if ".corrupt-" in p.name]) == 2
