"""Damaged, unwritable and malicious checkpoints, end to end through ``distmeta train --resume`` and ``distmeta eval``.

Reference: the same 6-step run written once without trouble. A resumed run must end
on its parameters bit for bit; a run that cannot resume must say why and change nothing.
"""
from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path

import pytest
import torch

import distmeta
from distmeta.cli import main
from distmeta.persistence import checkpoint as ck
from distmeta.persistence.checkpoint import CheckpointFallbackWarning, list_checkpoints
from distmeta.persistence.checkpoint import save as ck_save
from tests.faults.conftest import assert_bit_identical
from tests.helpers import QUIET, SINUSOID_TINY

ARGS = [*SINUSOID_TINY, *QUIET, "run.log_every=1", "run.checkpoint_every=2", "train.steps=6"]


def train(run: Path, *extra: str) -> int:
    return main(["train", *ARGS, *extra, f"run.dir={run}"])


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict[str, torch.Tensor]:
    """Final parameters of the 6-step run, uninterrupted."""
    run = tmp_path_factory.mktemp("straight") / "run"
    assert train(run) == 0
    return distmeta.load_checkpoint(run).meta_params


@pytest.fixture
def four_steps(tmp_path) -> Path:
    """A run stopped after 4 steps: checkpoints step_2 and step_4."""
    run = tmp_path / "run"
    assert train(run, "train.steps=4") == 0
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002", "step_00000004"]
    return run


def damage(step_dir: Path, how: str) -> None:
    params = step_dir / ck.PARAMS_FILE
    if how == "truncated":
        params.write_bytes(params.read_bytes()[: params.stat().st_size // 2])
    elif how == "bit_flip":
        data = bytearray(params.read_bytes())
        data[-3] ^= 0x10
        params.write_bytes(bytes(data))
    elif how == "no_manifest":
        (step_dir / ck.MANIFEST_FILE).unlink()
    elif how == "garbage_manifest":
        (step_dir / ck.MANIFEST_FILE).write_text("{not json")


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------- corrupt or truncated latest checkpoint


@pytest.mark.parametrize("how", ["truncated", "bit_flip", "no_manifest", "garbage_manifest"])
def test_damaged_latest_checkpoint_falls_back_loudly_and_resumes_bit_identical(four_steps, straight, tmp_path, how):
    run = four_steps
    bad = run / "checkpoints" / "step_00000004"
    damage(bad, how)

    out = tmp_path / "eval.json"
    with pytest.warns(CheckpointFallbackWarning, match=r"step_00000004"):
        assert main(["eval", "--checkpoint", str(run), "--episodes", "4", "--no-baseline", "--output", str(out)]) == 0
    assert json.loads(out.read_text())["step"] == 2, "eval used the previous valid checkpoint"

    with pytest.warns(CheckpointFallbackWarning, match=r"step_00000004"):
        assert main(["train", "--resume", str(run), *ARGS, "train.steps=6"]) == 0
    final = distmeta.load_checkpoint(run)
    assert final.step == 6
    assert_bit_identical(straight, final.meta_params, f"resumed past a {how} checkpoint vs uninterrupted")
    train_steps = [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines() if "train/loss" in ln]
    assert train_steps == [1, 2, 3, 4, 5, 6], "rows of the lost steps 3-4 replaced, not duplicated"


def test_no_valid_checkpoint_is_a_clear_error_never_a_fresh_start(four_steps, capsys):
    run = four_steps
    damage(run / "checkpoints" / "step_00000002", "bit_flip")
    damage(run / "checkpoints" / "step_00000004", "truncated")
    before = snapshot(run)

    assert main(["train", "--resume", str(run), *ARGS, "train.steps=6"]) == 2
    err = capsys.readouterr().err
    assert "no valid checkpoint" in err and "step_00000002" in err and "step_00000004" in err, err
    assert snapshot(run) == before, "the run directory was not touched"

    with pytest.warns(CheckpointFallbackWarning):  # each damaged one is named on the way
        assert main(["eval", "--checkpoint", str(run)]) == 2
    err = capsys.readouterr().err
    assert "no valid checkpoint" in err and "sha256" in err and "truncated" in err, err
    assert main(["eval", "--checkpoint", str(run / "checkpoints" / "step_00000004")]) == 2
    assert "step_00000004" in capsys.readouterr().err
    assert snapshot(run) == before


# ---------------------------------------------------------------------- disk full while checkpointing


def test_disk_full_stops_training_keeps_the_previous_checkpoint_then_resumes(tmp_path, straight, monkeypatch, capsys):
    run = tmp_path / "run"
    real = ck_save._write_file

    def full_disk(path: Path, data: bytes) -> None:
        if path.parent.name.startswith(".tmp-step_00000004") and path.name == ck.OPTIMIZER_FILE:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, data[: len(data) // 3])
            os.close(fd)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(ck_save, "_write_file", full_disk)
    assert train(run) == 2
    err = capsys.readouterr().err
    for needle in ("disk full (ENOSPC)", "step_00000004", "training stopped at step 4",
                   "newest intact checkpoint is", "step_00000002", "--resume"):
        assert needle in err, f"{needle!r} not in {err!r}"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000002"], "no partial or temp dir left"
    assert distmeta.load_checkpoint(run).step == 2
    steps = [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 4 and not (run / "results.json").exists(), "the Trainer stopped at the failed save"

    monkeypatch.undo()  # space freed
    assert main(["train", "--resume", str(run), *ARGS]) == 0
    assert_bit_identical(straight, distmeta.load_checkpoint(run).meta_params, "resumed after disk full")


# ---------------------------------------------------------------------- nothing loaded runs code


class Payload:
    """Unpickling this would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant_pickle(step_dir: Path, marker: Path) -> None:
    """What an attacker with write access would do: a code-running optimizer.pt and a manifest that matches it."""
    import hashlib

    buf = io.BytesIO()
    torch.save({"optimizer": Payload(marker), "steps": 4}, buf)
    (step_dir / ck.OPTIMIZER_FILE).write_bytes(buf.getvalue())
    manifest = json.loads((step_dir / ck.MANIFEST_FILE).read_text())
    for name in ck.DATA_FILES:
        data = (step_dir / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (step_dir / ck.MANIFEST_FILE).write_text(json.dumps(manifest))


def test_planted_pickle_is_refused_by_eval_and_resume_and_never_runs(four_steps, tmp_path, monkeypatch, capsys):
    from distmeta.training import trainer as driver

    run, marker = four_steps, tmp_path / "pwned"
    plant_pickle(run / "checkpoints" / "step_00000004", marker)
    ck.verify_checkpoint(run / "checkpoints" / "step_00000004")  # checksums pass: only weights_only stands in the way

    assert main(["eval", "--checkpoint", str(run)]) == 2
    assert "refusing to unpickle" in capsys.readouterr().err and not marker.exists()

    started = []
    monkeypatch.setattr(driver, "make_backend", lambda *a: started.append(a) or pytest.fail("a backend was started"))
    assert main(["train", "--resume", str(run), *ARGS, "train.steps=6", "resources.workers=2", "resources.cpus_per_worker=0.25"]) == 2
    err = capsys.readouterr().err
    assert "refusing to unpickle" in err and "step_00000004" in err and not marker.exists()
    assert started == [], "refused before any worker or actor started"


def test_yaml_with_python_tags_is_refused_and_never_runs(four_steps, tmp_path, capsys):
    run, marker = four_steps, tmp_path / "pwned"
    evil = f"!!python/object/apply:os.system ['touch {marker}']\n"
    (run / "config.yaml").write_text(evil)
    assert main(["train", "--resume", str(run), *ARGS]) == 2
    assert "not valid YAML" in capsys.readouterr().err and not marker.exists()
    (tmp_path / "evil.yaml").write_text(f"seed: !!python/object/apply:os.system ['touch {marker}']\n")
    assert main(["train", "--config", str(tmp_path / "evil.yaml"), f"run.dir={tmp_path / 'r2'}"]) == 2
    assert "not valid YAML" in capsys.readouterr().err and not marker.exists()
