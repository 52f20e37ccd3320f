"""The checkpoint format: file names, the manifest, and verification of a local step directory.

A step directory ``step_00000100/`` holds the data files (:data:`DATA_FILES`), the run files
(:data:`distmeta.files.RUN_FILE_PATTERN`) and ``manifest.json`` - the sha256 and size of every
other file, written last. A directory without a valid manifest is not a checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from distmeta.errors import CheckpointError
from distmeta.files import CHECKPOINTS_DIR, RUN_FILE_PATTERN

FORMAT = "distmeta-checkpoint"
FORMAT_VERSION = 1

PARAMS_FILE = "meta_params.safetensors"
RNG_FILE = "rng.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
DATA_FILES = (PARAMS_FILE, RNG_FILE, OPTIMIZER_FILE, STATE_FILE)

TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"
CORRUPT_TAG = ".corrupt-"
FILE_MODE = 0o640
DIR_MODE = 0o750
_STEP_RE = re.compile(r"step_(\d+)")
_CHUNK = 1 << 20


class UnsafeCheckpointError(CheckpointError):
    """``optimizer.pt`` holds something other than plain tensors and containers.

    Raised instead of unpickling it. Never answered by silently falling back to an
    older checkpoint: a file that passes its checksum yet is not weights-only was
    written or re-manifested by someone else, and the run directory needs a look.
    """


class CheckpointFallbackWarning(UserWarning):
    """The newest checkpoint was unusable and an older one was loaded instead."""


class CorruptCheckpointWarning(UserWarning):
    """A checkpoint that failed verification was renamed aside (``step_*.corrupt-<time>``), not deleted."""


@dataclass
class Checkpoint:
    """One saved training state. ``path`` is set by :func:`load_checkpoint` (where it came from).

    ``files``: the run files it carries (name -> bytes: split, tokenizer). ``None`` when
    saving means "those of the run directory saved into" (:func:`save_checkpoint`).
    """

    step: int
    meta_params: dict[str, torch.Tensor]
    optimizer_state: dict
    state: dict
    rng: dict[str, torch.Tensor]
    config: dict
    path: Path | None = field(default=None, compare=False)
    files: dict[str, bytes] | None = field(default=None, compare=False)


# ---------------------------------------------------------------------- names and listing
def step_dirname(step: int) -> str:
    """``step_00000100``: zero-padded so names sort like steps (up to 10^8)."""
    return f"step_{step:08d}"


def step_of(name: str) -> int | None:
    """The step a ``step_*`` name encodes, or None for anything else (tmp, old, corrupt, files)."""
    m = _STEP_RE.fullmatch(name)
    return int(m.group(1)) if m else None


def _step_of(path: Path) -> int | None:
    return step_of(path.name)


def _checkpoints_dir(path: str | Path) -> Path:
    """``path/checkpoints`` for a run dir; ``path`` itself when it already is the checkpoints dir."""
    path = Path(path)
    if (path / CHECKPOINTS_DIR).is_dir() or path.name != CHECKPOINTS_DIR:
        return path / CHECKPOINTS_DIR
    return path


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Every ``step_*`` directory of a run (valid or not), sorted by step; temp dirs are ignored."""
    ckdir = _checkpoints_dir(run_dir)
    if not ckdir.is_dir():
        return []
    found = [(s, p) for p in ckdir.iterdir() if p.is_dir() and (s := _step_of(p)) is not None]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint whose manifest verifies, or None; damaged newer ones are skipped."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(path)
        except CheckpointError:
            continue
        return path
    return None


# ---------------------------------------------------------------------- the manifest
def manifest_bytes(step: int, blobs: dict[str, bytes]) -> bytes:
    """The manifest of ``blobs`` (name -> bytes) for ``step``."""
    files = {n: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for n, b in blobs.items()}
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "step": step, "files": files}
    return json.dumps(doc, indent=1, sort_keys=True).encode("utf-8")


def _valid_entry(entry: Any) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and isinstance(entry.get("size"), int)


def parse_manifest(raw: bytes, where: str) -> dict[str, Any]:
    """Parse a manifest and check its format, version and an entry per data file.

    Args:
        raw: the bytes of ``manifest.json``.
        where: the checkpoint's path or URI, for messages.

    Returns:
        The manifest; ``["files"]`` maps each file name to its ``sha256`` and ``size``.
    """
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {where}: unreadable {MANIFEST_FILE}: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {where}: {MANIFEST_FILE} is not a {FORMAT} manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {where}: format_version {version!r} is not supported (this distmeta reads <= {FORMAT_VERSION})"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise CheckpointError(f"checkpoint {where}: {MANIFEST_FILE} has no 'files' table")
    for name in DATA_FILES:
        if not _valid_entry(files.get(name)):
            raise CheckpointError(f"checkpoint {where}: {MANIFEST_FILE} has no valid entry for {name}")
    for name, entry in files.items():
        if name in DATA_FILES:
            continue
        if not (isinstance(name, str) and RUN_FILE_PATTERN.fullmatch(name)):
            raise CheckpointError(f"checkpoint {where}: {MANIFEST_FILE} lists {name!r}, which is no checkpoint file")
        if not _valid_entry(entry):
            raise CheckpointError(f"checkpoint {where}: {MANIFEST_FILE} has no valid entry for {name}")
    return manifest


def manifest_order(files: dict[str, Any]) -> list[str]:
    """The manifest's file names, data files first (the order files are checked and written in)."""
    return [*DATA_FILES, *sorted(set(files) - set(DATA_FILES))]


def _read_manifest(path: Path) -> dict[str, Any]:
    """The parsed manifest of a local step directory."""
    mpath = path / MANIFEST_FILE
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a directory")
    if not mpath.is_file():
        raise CheckpointError(f"checkpoint {path} has no {MANIFEST_FILE} (incomplete write or not a checkpoint)")
    try:
        raw = mpath.read_bytes()
    except OSError as e:
        raise CheckpointError(f"checkpoint {path}: unreadable {MANIFEST_FILE}: {e}") from e
    return parse_manifest(raw, str(path))


def _verified_files(path: Path, keep_bytes: bool) -> dict[str, bytes]:
    """Check every data file's size and sha256 against the manifest; optionally return the bytes checked.

    Loading deserialises exactly the bytes that were hashed, so a file swapped after
    the check cannot slip through.
    """
    files = _read_manifest(path)["files"]
    out: dict[str, bytes] = {}
    for name in manifest_order(files):
        fpath = path / name
        want_size, want_sha = files[name]["size"], files[name]["sha256"]
        if not fpath.is_file():
            raise CheckpointError(f"checkpoint {path}: missing file {name}")
        h, size, chunks = hashlib.sha256(), 0, []
        try:
            with open(fpath, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    if keep_bytes:
                        chunks.append(chunk)
        except OSError as e:
            raise CheckpointError(f"checkpoint {path}: cannot read {name}: {e}") from e
        if size != want_size:
            raise CheckpointError(
                f"checkpoint {path}: {name} is {size} bytes but the manifest says {want_size} (truncated or overwritten)"
            )
        if h.hexdigest() != want_sha:
            raise CheckpointError(f"checkpoint {path}: {name} fails its sha256 checksum (corrupted or modified)")
        if keep_bytes:
            out[name] = b"".join(chunks)
    return out


def verify_checkpoint(path: Path) -> None:
    """Raise CheckpointError unless ``path`` has a manifest and every file matches its size and sha256."""
    _verified_files(Path(path), keep_bytes=False)
