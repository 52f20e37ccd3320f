"""Checkpoints: bit-exact round trips, atomic writes, verified loads, safe unpickling, disk-full handling."""
from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

import distmeta
from distmeta.errors import CheckpointError
from distmeta.persistence import checkpoint as ck
from distmeta.persistence.checkpoint import (
    Checkpoint,
    CheckpointFallbackWarning,
    UnsafeCheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from distmeta.persistence.checkpoint import save as ck_save


def _adam_state(params: dict[str, torch.Tensor]) -> dict:
    """A real Adam state_dict with momentum tensors (two steps taken)."""
    ps = [torch.nn.Parameter(p.clone()) for p in params.values()]
    opt = torch.optim.Adam(ps, lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        sum((p.double() ** 2).sum() for p in ps).backward()
        opt.step()
    return opt.state_dict()


def make_ckpt(step: int, seed: int = 0) -> Checkpoint:
    g = torch.Generator().manual_seed(seed + step)
    params = {
        "body.weight": torch.randn(4, 3, generator=g),
        "body.bias": torch.randn(4, generator=g, dtype=torch.float64),
        "head.weight": torch.randn(2, 4, generator=g) * 1e-30,  # tiny values: bit-exactness, not closeness
    }
    return Checkpoint(
        step=step,
        meta_params=params,
        optimizer_state={"optimizer": _adam_state(params), "steps": step},
        state={"sampler": {"seed": seed, "next_step": step}, "history": [1.5, float(step)]},
        rng={"torch": torch.get_rng_state()},
        config={"seed": seed, "run": {"dir": "x"}},
    )


def same_nested(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_nested(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_nested(x, y) for x, y in zip(a, b))
    return a == b


def rewrite_manifest(step_dir: Path) -> None:
    """What an attacker with write access would do: make the manifest match planted files."""
    manifest = json.loads((step_dir / ck.MANIFEST_FILE).read_text())
    for name in ck.DATA_FILES:
        data = (step_dir / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (step_dir / ck.MANIFEST_FILE).write_text(json.dumps(manifest))


def visible_entries(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


# ---------------------------------------------------------------------- round trip
def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    torch.manual_seed(123)
    original = make_ckpt(100)
    expected_rand = torch.rand(5)  # what the saved RNG state produces next
    path = save_checkpoint(tmp_path, original)
    assert path == tmp_path / "checkpoints" / "step_00000100"
    assert sorted(p.name for p in path.iterdir()) == sorted([*ck.DATA_FILES, ck.MANIFEST_FILE])

    for where in (tmp_path, tmp_path / "checkpoints", path, str(path)):
        got = load_checkpoint(where)
        assert got.step == 100 and got.path == path
        assert same_nested(got.meta_params, original.meta_params)
        assert got.meta_params["body.bias"].dtype == torch.float64
        assert same_nested(got.optimizer_state, original.optimizer_state)
        assert got.state == original.state and got.config == original.config
        assert got.rng["torch"].dtype == torch.uint8

    torch.manual_seed(999)
    torch.set_rng_state(got.rng["torch"])
    assert torch.equal(torch.rand(5), expected_rand)
    assert distmeta.load_checkpoint(str(tmp_path)).step == 100


def test_restored_adam_continues_identically(tmp_path: Path) -> None:
    ckpt = make_ckpt(3)
    save_checkpoint(tmp_path, ckpt)
    got = load_checkpoint(tmp_path)

    def one_step(params, state):
        ps = [torch.nn.Parameter(p.clone()) for p in params.values()]
        opt = torch.optim.Adam(ps, lr=1e-2)
        opt.load_state_dict(state["optimizer"])
        sum((p.double() ** 2).sum() for p in ps).backward()
        opt.step()
        return [p.detach() for p in ps]

    a, b = one_step(ckpt.meta_params, ckpt.optimizer_state), one_step(got.meta_params, got.optimizer_state)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_keep_prunes_to_newest_valid(tmp_path: Path) -> None:
    for step in range(1, 6):
        save_checkpoint(tmp_path, make_ckpt(step), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004", "step_00000005"]
    assert load_checkpoint(tmp_path).step == 5


def test_prune_skips_corrupt_when_counting(tmp_path: Path) -> None:
    for step in (1, 2):
        save_checkpoint(tmp_path, make_ckpt(step), keep=5)
    (list_checkpoints(tmp_path)[1] / ck.STATE_FILE).write_text("{}")  # step 2 now corrupt
    save_checkpoint(tmp_path, make_ckpt(3), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001", "step_00000003"]


def test_same_step_is_replaced(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, make_ckpt(7, seed=0))
    new = make_ckpt(7, seed=1)
    save_checkpoint(tmp_path, new)
    assert visible_entries(tmp_path) == ["step_00000007"]
    assert same_nested(load_checkpoint(tmp_path).meta_params, new.meta_params)


# ---------------------------------------------------------------------- crashes and leftovers
def test_crash_mid_write_leaves_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(tmp_path, make_ckpt(1))
    real, calls = ck_save._write_file, []

    def flaky(path: Path, data: bytes) -> None:
        calls.append(path.name)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        real(path, data)

    monkeypatch.setattr(ck_save, "_write_file", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        save_checkpoint(tmp_path, make_ckpt(2))
    assert visible_entries(tmp_path) == ["step_00000001"]  # no partial step_2, no temp dir
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_00000001"
    assert load_checkpoint(tmp_path).step == 1


def test_leftover_temp_dirs_are_ignored_then_removed(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, make_ckpt(1))
    stale = tmp_path / "checkpoints" / ".tmp-step_00000002-99999"
    stale.mkdir()
    (stale / ck.PARAMS_FILE).write_bytes(b"half")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001"]
    assert load_checkpoint(tmp_path).step == 1
    save_checkpoint(tmp_path, make_ckpt(2))
    assert visible_entries(tmp_path) == ["step_00000001", "step_00000002"]


def test_interrupted_replace_is_recovered(tmp_path: Path) -> None:
    """A crash between moving the old step dir aside and renaming the new one in loses nothing."""
    final = save_checkpoint(tmp_path, make_ckpt(4))
    os.rename(final, final.with_name(".old-step_00000004-4242"))
    save_checkpoint(tmp_path, make_ckpt(5))
    assert visible_entries(tmp_path) == ["step_00000004", "step_00000005"]
    verify_checkpoint(final)


def test_disk_full_raises_checkpoint_error_and_keeps_earlier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(tmp_path, make_ckpt(1))
    real_write, budget = os.write, [6000]  # meta_params and rng land, optimizer.pt runs out

    def full_disk(fd: int, data) -> int:
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real_write(fd, bytes(data[: budget[0]]))
        budget[0] -= n
        return n

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(CheckpointError, match="disk full") as info:
        save_checkpoint(tmp_path, make_ckpt(2))
    monkeypatch.undo()
    assert "step_00000002" in str(info.value)
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert visible_entries(tmp_path) == ["step_00000001"]
    verify_checkpoint(tmp_path / "checkpoints" / "step_00000001")
    assert load_checkpoint(tmp_path).step == 1


def test_bad_inputs_fail_before_touching_disk(tmp_path: Path) -> None:
    bad = make_ckpt(1)
    bad.optimizer_state = {"thing": object()}
    with pytest.raises(CheckpointError, match="weights_only"):
        save_checkpoint(tmp_path, bad)
    bad = make_ckpt(1)
    bad.state = {"x": {1, 2}}
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path, bad)
    assert not (tmp_path / "checkpoints").exists()


# ---------------------------------------------------------------------- damaged checkpoints
def test_truncated_newest_warns_and_falls_back(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, make_ckpt(1))
    newest = save_checkpoint(tmp_path, make_ckpt(2))
    f = newest / ck.PARAMS_FILE
    f.write_bytes(f.read_bytes()[:40])
    with pytest.warns(CheckpointFallbackWarning, match=r"step_00000002.*truncated"):
        got = load_checkpoint(tmp_path)
    assert got.step == 1
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_00000001"


@pytest.mark.parametrize("damage", ["missing_manifest", "missing_file", "flipped_byte"])
def test_other_damage_falls_back(tmp_path: Path, damage: str) -> None:
    save_checkpoint(tmp_path, make_ckpt(1))
    newest = save_checkpoint(tmp_path, make_ckpt(2))
    if damage == "missing_manifest":
        (newest / ck.MANIFEST_FILE).unlink()
    elif damage == "missing_file":
        (newest / ck.OPTIMIZER_FILE).unlink()
    else:
        data = bytearray((newest / ck.RNG_FILE).read_bytes())
        data[-1] ^= 1
        (newest / ck.RNG_FILE).write_bytes(bytes(data))
    with pytest.warns(CheckpointFallbackWarning, match="step_00000002"):
        assert load_checkpoint(tmp_path).step == 1
    with pytest.raises(CheckpointError, match="step_00000002"):
        load_checkpoint(newest)  # a specific step dir: no fallback


def test_all_corrupt_raises_listing_each(tmp_path: Path) -> None:
    for p in [save_checkpoint(tmp_path, make_ckpt(step)) for step in (1, 2)]:
        (p / ck.PARAMS_FILE).write_bytes(b"")
    with pytest.warns(CheckpointFallbackWarning), pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path)
    assert "step_00000001" in str(info.value) and "step_00000002" in str(info.value)
    assert latest_checkpoint(tmp_path) is None


def test_missing_and_empty_paths_raise(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no checkpoints"):
        load_checkpoint(tmp_path)
    assert list_checkpoints(tmp_path) == [] and latest_checkpoint(tmp_path) is None


def test_garbage_safetensors_with_matching_manifest(tmp_path: Path) -> None:
    p = save_checkpoint(tmp_path, make_ckpt(1))
    (p / ck.PARAMS_FILE).write_bytes(b"\xff" * 64)
    rewrite_manifest(p)
    with pytest.raises(CheckpointError, match=ck.PARAMS_FILE):
        load_checkpoint(p)


# ---------------------------------------------------------------------- malicious pickles
class _Payload:
    def __init__(self, marker: Path, via: str) -> None:
        self.marker, self.via = marker, via

    def __reduce__(self):
        if self.via == "system":
            return (os.system, (f"touch {self.marker}",))
        return (builtins.open, (str(self.marker), "w"))


@pytest.mark.parametrize("fmt", ["torch_zip", "raw_pickle"])
@pytest.mark.parametrize("via", ["system", "open"])
def test_malicious_pickle_is_refused(tmp_path: Path, fmt: str, via: str) -> None:
    run = tmp_path / "run"
    save_checkpoint(run, make_ckpt(1))
    newest = save_checkpoint(run, make_ckpt(2))
    marker = tmp_path / "pwned"
    payload = {"optimizer": _Payload(marker, via), "steps": 2}
    if fmt == "torch_zip":
        buf = io.BytesIO()
        torch.save(payload, buf)
        data = buf.getvalue()
    else:
        data = pickle.dumps(payload)
    (newest / ck.OPTIMIZER_FILE).write_bytes(data)

    with pytest.raises(CheckpointError, match="manifest|sha256"):  # tampered after the fact: the checksum catches it
        load_checkpoint(newest)
    rewrite_manifest(newest)
    verify_checkpoint(newest)  # the manifest now matches; weights_only must hold the line
    with pytest.raises(UnsafeCheckpointError, match="refusing to unpickle"):
        load_checkpoint(newest)
    with pytest.raises(UnsafeCheckpointError, match="refusing to unpickle"):
        load_checkpoint(run)  # no silent fallback past a planted payload
    assert not marker.exists()


# ---------------------------------------------------------------------- self-contained step directories
def test_a_step_directory_carries_the_runs_split_and_tokenizer(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    files = {"split.json": b'{"train": [1]}', "split_0.json": b'{"train": [2]}', "tokenizer.json": b'{"v": 1}'}
    for name, blob in files.items():
        (run / name).write_bytes(blob)
    (run / "notes.txt").write_text("not a run file")
    path = save_checkpoint(run, make_ckpt(5))
    assert sorted(p.name for p in path.iterdir() if p.name in files) == sorted(files)
    listed = json.loads((path / "manifest.json").read_text())["files"]
    assert {n: listed[n]["sha256"] for n in files} == {n: hashlib.sha256(b).hexdigest() for n, b in files.items()}
    assert "notes.txt" not in listed and not (path / "notes.txt").exists()

    moved = tmp_path / "elsewhere" / path.name  # moved away from its run: still a whole checkpoint
    moved.parent.mkdir()
    os.rename(path, moved)
    ckpt = load_checkpoint(moved)
    assert ckpt.files == files and ckpt.step == 5
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    written = ck.write_run_files(ckpt, fresh)
    assert {p.name: p.read_bytes() for p in written} == files


def test_a_carried_file_is_verified_like_the_weights(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "tokenizer.json").write_text('{"v": 1}')
    path = save_checkpoint(run, make_ckpt(1))
    (path / "tokenizer.json").write_text('{"v": 2}')
    with pytest.raises(CheckpointError, match="tokenizer.json is 8 bytes|tokenizer.json fails its sha256"):
        verify_checkpoint(path)


def test_a_manifest_naming_a_foreign_file_is_refused(tmp_path):
    path = save_checkpoint(tmp_path, make_ckpt(1), keep=1)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["../../escape.json"] = {"sha256": "0" * 64, "size": 1}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="lists '../../escape.json', which is no checkpoint file"):
        load_checkpoint(path)


def test_explicit_files_replace_the_run_dirs_and_bad_names_are_refused(tmp_path):
    (tmp_path / "split.json").write_text("{}")
    path = save_checkpoint(tmp_path, Checkpoint(**{**make_ckpt(1).__dict__, "files": {}}))
    assert load_checkpoint(path).files == {}, "an explicit empty set carries nothing"
    with pytest.raises(CheckpointError, match="carries only"):
        save_checkpoint(tmp_path, Checkpoint(**{**make_ckpt(2).__dict__, "files": {"config.yaml": b"x"}}))
