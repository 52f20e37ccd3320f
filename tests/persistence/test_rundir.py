"""Run directories: refuse to clobber a run, move it aside on --overwrite, resume only from a valid checkpoint."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from distmeta.errors import RunDirError
from distmeta.files import write_text_atomic
from distmeta.persistence.checkpoint import Checkpoint, save_checkpoint
from distmeta.persistence.rundir import prepare_run_dir


def tiny_ckpt(step: int) -> Checkpoint:
    return Checkpoint(step=step, meta_params={"w": torch.ones(2)}, optimizer_state={"steps": step},
                      state={}, rng={"torch": torch.get_rng_state()}, config={})


def test_fresh_dir_is_created(tmp_path: Path) -> None:
    run = prepare_run_dir(tmp_path / "a" / "b")
    assert run.is_dir() and run.is_absolute() and run == (tmp_path / "a" / "b")


def test_dir_without_a_run_is_reused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "checkpoints").mkdir()  # empty: not a run yet
    assert prepare_run_dir(tmp_path) == tmp_path
    assert (tmp_path / "notes.txt").read_text() == "hi"


@pytest.mark.parametrize("marker", ["config", "checkpoints"])
def test_existing_run_is_refused_without_a_flag(tmp_path: Path, marker: str) -> None:
    if marker == "config":
        (tmp_path / "config.yaml").write_text("seed: 0\n")
    else:
        save_checkpoint(tmp_path, tiny_ckpt(1))
    with pytest.raises(RunDirError, match="--resume") as info:
        prepare_run_dir(tmp_path)
    assert str(tmp_path) in str(info.value) and "--overwrite" in str(info.value)


def test_overwrite_moves_the_old_run_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("old\n")
    save_checkpoint(run, tiny_ckpt(5))
    with caplog.at_level(logging.WARNING, logger="distmeta.persistence.rundir"):
        assert prepare_run_dir(run, overwrite=True) == run
    assert list(run.iterdir()) == []
    [aside] = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert (aside / "config.yaml").read_text() == "old\n"
    assert (aside / "checkpoints" / "step_00000005" / "manifest.json").is_file()
    assert str(aside) in caplog.text and "nothing was deleted" in caplog.text

    (run / "config.yaml").write_text("second\n")  # again within the same second: a distinct name
    prepare_run_dir(run, overwrite=True)
    asides = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("run.replaced-"))
    assert len(asides) == 2


def test_overwrite_without_a_run_just_creates(tmp_path: Path) -> None:
    assert prepare_run_dir(tmp_path / "new", overwrite=True).is_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["new"]


def test_resume_and_overwrite_together_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="--resume and --overwrite"):
        prepare_run_dir(tmp_path, resume=True, overwrite=True)


def test_resume_needs_a_run(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="nothing to resume"):
        prepare_run_dir(tmp_path / "empty", resume=True)


def test_resume_needs_a_valid_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(RunDirError, match="no valid checkpoint"):
        prepare_run_dir(tmp_path, resume=True)
    ck = save_checkpoint(tmp_path, tiny_ckpt(3))
    (ck / "meta_params.safetensors").write_bytes(b"")
    with pytest.raises(RunDirError, match="step_00000003"):
        prepare_run_dir(tmp_path, resume=True)


def test_resume_keeps_everything(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    save_checkpoint(tmp_path, tiny_ckpt(3))
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    assert prepare_run_dir(tmp_path, resume=True) == tmp_path
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_a_file_in_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(RunDirError, match="not a directory"):
        prepare_run_dir(tmp_path / "f")


def test_write_text_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "config.yaml"
    write_text_atomic(target, "one\n")
    write_text_atomic(target, "two\n")
    assert target.read_text() == "two\n"

    def boom(*a, **k):
        raise OSError("replace failed")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="replace failed"):
        write_text_atomic(target, "three\n")
    monkeypatch.undo()
    assert target.read_text() == "two\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temp file left


def test_open_run_takes_a_file_uri_as_the_local_path(tmp_path: Path) -> None:
    from distmeta.persistence.location import open_run
    from distmeta.persistence.rundir import run_dir_in_use

    run = open_run(f"file://{tmp_path}/r")
    try:
        assert run.local == tmp_path / "r" and run.local.is_dir()
        path = run.save_checkpoint(tiny_ckpt(1), keep=2)
        assert path == tmp_path / "r" / "checkpoints" / "step_00000001"
    finally:
        run.close()
    assert run_dir_in_use(tmp_path / "r") is None
