"""Durable, verified checkpoints: ``RUN_DIR/checkpoints/step_00000100/``.

Each checkpoint directory holds

* ``meta_params.safetensors`` - the meta-parameters (no pickle involved),
* ``rng.safetensors``         - RNG states as uint8 tensors,
* ``optimizer.pt``            - ``torch.save`` of the optimiser state, read back ONLY
  with ``torch.load(weights_only=True)`` so a planted pickle cannot run code,
* ``state.json``              - step, trainer state and the resolved config,
* ``split.json``, ``tokenizer.json`` (``split_<c>.json`` per mixture source) - the run's
  class split and tokenizer (:data:`distmeta.files.RUN_FILE_PATTERN`), when it has them,
* ``manifest.json``           - sha256 and size of every file above, written last.

So a step directory is a complete record of the run at that step: it can be moved, or
reported to Ray Tune as the trial checkpoint as it is, and a run resumes from it alone
(``Trainer(cfg, resume_from=step_dir)``: :func:`write_run_files` puts the split and
tokenizer back into the new run directory).

Use::

    path = save_checkpoint(run_dir, Checkpoint(step, params, opt_state, state, rng, config))
    ckpt = load_checkpoint(run_dir)      # the newest valid one; or a checkpoints/ or step_* directory

Writes are atomic: everything goes into ``checkpoints/.tmp-step_XXXXXXXX-<pid>``, is
fsynced, and the directory is renamed into place, so a reader sees a whole checkpoint
or none. Readers check the manifest before deserialising anything and fall back from
a damaged newest checkpoint to the previous valid one, loudly.

Files are written with mode 0640 and directories 0750 (less with a stricter umask):
readable by the owner's group, by nobody else. A writer holds a ``flock`` on its
temporary directory while it fills it, and the leftover clean-up skips any temporary
directory whose lock is held: it only removes those of writers that are gone. A
checkpoint that fails its checksum is never deleted: it is renamed aside to
``step_XXXXXXXX.corrupt-<UTC time>`` (ignored by readers) with a warning, for a look.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from distmeta.errors import CheckpointError
from distmeta.files import CHECKPOINTS_DIR, RUN_FILE_PATTERN, run_files

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


def _step_of(path: Path) -> int | None:
    """The step a ``step_*`` directory name encodes, or None for anything else (tmp, old, files)."""
    m = _STEP_RE.fullmatch(path.name)
    return int(m.group(1)) if m else None


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


# ---------------------------------------------------------------------- verification
def _read_manifest(path: Path) -> dict[str, Any]:
    """The parsed manifest, checked for format, version and an entry per data file."""
    mpath = path / MANIFEST_FILE
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a directory")
    if not mpath.is_file():
        raise CheckpointError(f"checkpoint {path} has no {MANIFEST_FILE} (incomplete write or not a checkpoint)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path}: unreadable {MANIFEST_FILE}: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST_FILE} is not a {FORMAT} manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path}: format_version {version!r} is not supported (this distmeta reads <= {FORMAT_VERSION})"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise CheckpointError(f"checkpoint {path}: {MANIFEST_FILE} has no 'files' table")
    for name in DATA_FILES:
        entry = files.get(name)
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and isinstance(entry.get("size"), int)):
            raise CheckpointError(f"checkpoint {path}: {MANIFEST_FILE} has no valid entry for {name}")
    for name, entry in files.items():
        if name in DATA_FILES:
            continue
        if not (isinstance(name, str) and RUN_FILE_PATTERN.fullmatch(name)):
            raise CheckpointError(f"checkpoint {path}: {MANIFEST_FILE} lists {name!r}, which is no checkpoint file")
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and isinstance(entry.get("size"), int)):
            raise CheckpointError(f"checkpoint {path}: {MANIFEST_FILE} has no valid entry for {name}")
    return manifest


def _verified_files(path: Path, keep_bytes: bool) -> dict[str, bytes]:
    """Check every data file's size and sha256 against the manifest; optionally return the bytes checked.

    Loading deserialises exactly the bytes that were hashed, so a file swapped after
    the check cannot slip through.
    """
    files = _read_manifest(path)["files"]
    out: dict[str, bytes] = {}
    for name in [*DATA_FILES, *sorted(set(files) - set(DATA_FILES))]:
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


# ---------------------------------------------------------------------- loading
def _load_safetensors(data: bytes, name: str, path: Path) -> dict[str, torch.Tensor]:
    """Deserialise a safetensors blob; any parse error becomes a CheckpointError naming the file."""
    from safetensors.torch import load

    try:
        tensors = dict(load(data))
    except Exception as e:  # SafetensorError and friends: never let a bad file escape untyped
        raise CheckpointError(f"checkpoint {path}: cannot read {name}: {e}") from e
    order = _saved_order(data)
    if order is not None and sorted(order) == sorted(tensors):
        tensors = {k: tensors[k] for k in order}
    return tensors


def _saved_order(data: bytes) -> list[str] | None:
    """The key order recorded at save time (safetensors itself sorts keys), or None."""
    try:
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
        order = json.loads(meta["order"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return order if isinstance(order, list) and all(isinstance(k, str) for k in order) else None


def _load_optimizer(data: bytes, path: Path, map_location: str) -> dict:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary pickles."""
    try:
        with warnings.catch_warnings():  # a foreign pickle protocol is reported below, not as noise
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"refusing to unpickle {path / OPTIMIZER_FILE}: it is not a plain weights-only optimizer state "
            f"(it may contain code to execute); the checkpoint was not written by distmeta or was tampered with. "
            f"Detail: {str(e).splitlines()[0]}"
        ) from e
    except Exception as e:
        raise CheckpointError(f"checkpoint {path}: cannot read {OPTIMIZER_FILE}: {e}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: {OPTIMIZER_FILE} holds a {type(state).__name__}, expected a dict")
    return state


def _load_state(data: bytes, path: Path) -> dict[str, Any]:
    """Parse ``state.json`` and check it agrees with the directory name."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path}: unreadable {STATE_FILE}: {e}") from e
    if not (isinstance(doc, dict) and isinstance(doc.get("step"), int)
            and isinstance(doc.get("state"), dict) and isinstance(doc.get("config"), dict)):
        raise CheckpointError(f"checkpoint {path}: {STATE_FILE} lacks step/state/config")
    dir_step = _step_of(path)
    if dir_step is not None and dir_step != doc["step"]:
        raise CheckpointError(f"checkpoint {path}: {STATE_FILE} says step {doc['step']} but the directory is step {dir_step}")
    return doc


def _load_one(path: Path, map_location: str) -> Checkpoint:
    """Verify, then deserialise, one ``step_*`` directory."""
    data = _verified_files(path, keep_bytes=True)
    doc = _load_state(data[STATE_FILE], path)
    params = _load_safetensors(data[PARAMS_FILE], PARAMS_FILE, path)
    if map_location != "cpu":
        params = {k: v.to(map_location) for k, v in params.items()}
    rng = _load_safetensors(data[RNG_FILE], RNG_FILE, path)  # RNG states stay on the CPU
    optimizer_state = _load_optimizer(data[OPTIMIZER_FILE], path, map_location)
    extra = {name: blob for name, blob in data.items() if name not in DATA_FILES}
    return Checkpoint(step=doc["step"], meta_params=params, optimizer_state=optimizer_state,
                      state=doc["state"], rng=rng, config=doc["config"], path=path, files=extra)


def _is_single_checkpoint(path: Path) -> bool:
    """A ``step_*`` directory (or anything with a manifest), as opposed to a run or checkpoints dir."""
    return (path / MANIFEST_FILE).exists() or (_step_of(path) is not None and not (path / CHECKPOINTS_DIR).is_dir())


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> Checkpoint:
    """Load a run dir's newest valid checkpoint (or a ``checkpoints/`` dir's, or one ``step_*`` dir).

    A damaged newest checkpoint is reported with a :class:`CheckpointFallbackWarning`
    and the previous one is tried; if none is usable, CheckpointError lists each one
    tried and why. A specific ``step_*`` directory is loaded as-is or not at all.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: the path does not exist")
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint at {path}: expected a run directory, its checkpoints/ or a step_* directory")
    if _is_single_checkpoint(path):
        return _load_one(path, map_location)
    candidates = list(reversed(list_checkpoints(path)))
    if not candidates:
        raise CheckpointError(f"no checkpoints under {_checkpoints_dir(path)} (expected step_* directories)")
    tried: list[str] = []
    for cand in candidates:
        try:
            ckpt = _load_one(cand, map_location)
        except UnsafeCheckpointError:
            raise
        except CheckpointError as e:
            tried.append(f"  {cand}: {e}")
            warnings.warn(f"skipping unusable checkpoint {cand}: {e}; trying the previous one",
                          CheckpointFallbackWarning, stacklevel=2)
            continue
        return ckpt
    raise CheckpointError(f"no valid checkpoint under {_checkpoints_dir(path)}; tried:\n" + "\n".join(tried))


# ---------------------------------------------------------------------- saving
_PLAIN = (bool, int, float, complex, str, bytes, type(None), torch.Tensor, torch.dtype, torch.device)


def _check_weights_only(obj: Any, where: str) -> None:
    """Refuse at save time what ``torch.load(weights_only=True)`` would refuse at load time."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_weights_only(k, where)
            _check_weights_only(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_weights_only(v, f"{where}[{i}]")
    elif not isinstance(obj, _PLAIN):
        raise CheckpointError(
            f"cannot checkpoint {where}: a {type(obj).__module__}.{type(obj).__qualname__} would not load back "
            f"with weights_only=True (use tensors, numbers, strings, lists and dicts)"
        )


def _tensor_blob(tensors: dict[str, torch.Tensor], what: str) -> bytes:
    """safetensors bytes of detached, contiguous CPU copies (copies: shared storage is not allowed).

    The key order goes into the header metadata so loading gives the dict back as saved.
    """
    from safetensors.torch import save

    for k, v in tensors.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"cannot checkpoint {what}[{k!r}]: a {type(v).__name__}, expected a torch.Tensor")
    try:
        return save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()},
                    metadata={"order": json.dumps(list(tensors))})
    except Exception as e:
        raise CheckpointError(f"cannot serialise {what}: {e}") from e


def _serialise(ckpt: Checkpoint, run_dir: Path) -> dict[str, bytes]:
    """Every file's bytes, built in memory first so bad input fails before the disk is touched.

    The run files are ``ckpt.files``, or (when None) those of ``run_dir``.
    """
    if not isinstance(ckpt.step, int) or ckpt.step < 0:
        raise CheckpointError(f"cannot checkpoint step {ckpt.step!r}: expected a non-negative int")
    _check_weights_only(ckpt.optimizer_state, "optimizer_state")
    buf = io.BytesIO()
    torch.save(ckpt.optimizer_state, buf)
    try:
        state = json.dumps({"step": ckpt.step, "state": ckpt.state, "config": ckpt.config}, indent=1, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot checkpoint step {ckpt.step}: state/config are not JSON-serialisable: {e}") from e
    extra = ckpt.files if ckpt.files is not None else {p.name: p.read_bytes() for p in run_files(run_dir)}
    bad = [name for name in extra if not RUN_FILE_PATTERN.fullmatch(name)]
    if bad:
        raise CheckpointError(f"cannot checkpoint files {bad}: a checkpoint carries only {RUN_FILE_PATTERN.pattern}")
    return {
        PARAMS_FILE: _tensor_blob(ckpt.meta_params, "meta_params"),
        RNG_FILE: _tensor_blob(ckpt.rng, "rng"),
        OPTIMIZER_FILE: buf.getvalue(),
        STATE_FILE: state.encode("utf-8"),
        **extra,
    }


def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file and fsync it (os.write loop: a short write is retried, ENOSPC raises)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """fsync a directory so the renames inside it survive a power cut (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _manifest(step: int, blobs: dict[str, bytes]) -> bytes:
    files = {n: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for n, b in blobs.items()}
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "step": step, "files": files}
    return json.dumps(doc, indent=1, sort_keys=True).encode("utf-8")


def keep_aside(path: Path, why: str) -> Path | None:
    """Rename a damaged checkpoint to ``<name>.corrupt-<UTC time>`` (readers ignore it) and warn; returns where.

    Never deleted: a checkpoint that fails its checksum is evidence (a disk fault, or
    someone writing into the run) and may still hold recoverable parameters.
    """
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    aside = path.with_name(f"{path.name.removeprefix(OLD_PREFIX)}{CORRUPT_TAG}{stamp}")
    try:
        os.rename(path, aside)
    except OSError as e:
        warnings.warn(f"checkpoint {path} failed verification ({why}) and could not be renamed aside: {e}",
                      CorruptCheckpointWarning, stacklevel=3)
        return None
    warnings.warn(f"checkpoint {path} failed verification ({why}); kept aside as {aside.name}, not deleted",
                  CorruptCheckpointWarning, stacklevel=3)
    return aside


def _lock_dir(path: Path) -> int:
    """An open descriptor of directory ``path`` with an exclusive flock: this writer is alive while it is open."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _writer_alive(path: Path) -> bool:
    """Whether a live writer holds the flock of temporary directory ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _clean_leftovers(ckdir: Path) -> None:
    """Remove temp dirs of writers that are gone; put back an ``.old-*`` dir whose replacement never landed.

    A temp dir whose writer still holds its flock is left alone, and a damaged
    ``.old-*`` dir is kept aside rather than deleted.
    """
    for p in ckdir.iterdir():
        if p.name.startswith(OLD_PREFIX) and p.is_dir() and not p.is_symlink():
            final = ckdir / p.name[len(OLD_PREFIX):].rsplit("-", 1)[0]
            try:
                verify_checkpoint(p)
            except CheckpointError as e:
                keep_aside(p, str(e))
                continue
            if not final.exists():
                try:
                    os.rename(p, final)
                    continue
                except OSError:
                    pass
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(TMP_PREFIX) and p.is_dir() and not p.is_symlink() and not _writer_alive(p):
            shutil.rmtree(p, ignore_errors=True)


def _install(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` is moved aside first and deleted only afterwards.

    An existing ``final`` that fails verification is kept aside (:func:`keep_aside`) instead.
    """
    if final.exists():
        try:
            verify_checkpoint(final)
        except CheckpointError as e:
            keep_aside(final, str(e))
    if not final.exists():
        os.rename(tmp, final)
        return
    old = final.with_name(f"{OLD_PREFIX}{final.name}-{os.getpid()}")
    if old.exists():
        shutil.rmtree(old)
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except OSError:
        os.rename(old, final)  # put the previous checkpoint back before reporting
        raise
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def _prune(ckdir: Path, saved: Path, keep: int) -> None:
    """Keep the newest ``keep`` valid checkpoints up to ``saved``; delete older valid ones, keep damaged ones aside.

    Checkpoints with a higher step than ``saved`` are left alone: they are not this
    save's history to judge.
    """
    saved_step = _step_of(saved)
    assert saved_step is not None
    older = [p for p in list_checkpoints(ckdir) if (_step_of(p) or 0) < saved_step]
    kept = 1
    for p in reversed(older):
        try:
            verify_checkpoint(p)
        except CheckpointError as e:  # damaged: never deleted, kept aside for a look
            keep_aside(p, str(e))
            continue
        if kept < keep:
            kept += 1
        else:
            shutil.rmtree(p, ignore_errors=True)


def _describe_oserror(e: OSError, step: int, where: Path) -> str:
    if e.errno == errno.ENOSPC:
        return f"disk full (ENOSPC) while writing checkpoint step {step} to {where}: {e}"
    if e.errno == getattr(errno, "EDQUOT", None):
        return f"disk quota exceeded (EDQUOT) while writing checkpoint step {step} to {where}: {e}"
    return f"could not write checkpoint step {step} to {where}: {e}"


def save_checkpoint(run_dir: str | Path, ckpt: Checkpoint, keep: int = 3) -> Path:
    """Atomically write ``ckpt`` to ``run_dir/checkpoints/step_XXXXXXXX`` and prune to ``keep``.

    The step directory also gets the run's split and tokenizer files (``ckpt.files``, or
    when that is None the run files in ``run_dir``), checksummed with the rest. On any
    failure the temp dir is removed and earlier checkpoints are untouched.

    Args:
        run_dir: the run directory.
        ckpt: what to save.
        keep: how many valid checkpoints to keep (older valid ones are deleted).

    Returns:
        The step directory written.

    Raises:
        CheckpointError: bad input, or an OS error (disk full, permissions) naming the path.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    blobs = _serialise(ckpt, Path(run_dir))
    ckdir = Path(run_dir) / CHECKPOINTS_DIR
    final = ckdir / step_dirname(ckpt.step)
    tmp = ckdir / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    lock = None
    try:
        ckdir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        _clean_leftovers(ckdir)
        tmp.mkdir(mode=DIR_MODE)
        lock = _lock_dir(tmp)  # held until installed: no clean-up may remove a live writer's temp dir
        for name, data in blobs.items():
            _write_file(tmp / name, data)
        _write_file(tmp / MANIFEST_FILE, _manifest(ckpt.step, blobs))
        fsync_dir(tmp)
        _install(tmp, final)
        fsync_dir(ckdir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise CheckpointError(_describe_oserror(e, ckpt.step, final)) from e
        raise
    finally:
        if lock is not None:
            os.close(lock)
    _prune(ckdir, final, keep)
    return final


def write_run_files(ckpt: Checkpoint, run_dir: str | Path) -> list[Path]:
    """Write the split and tokenizer files a loaded checkpoint carries into ``run_dir`` (atomically each).

    What a run resumed from a step directory outside its own run directory (a Ray Tune
    trial checkpoint) needs before :func:`~distmeta.experiment.prepare_experiment`.

    Args:
        ckpt: a checkpoint from :func:`load_checkpoint` (its files were verified).
        run_dir: the run directory to complete.

    Returns:
        The paths written (none for a run without split or tokenizer, e.g. sinusoid).
    """
    from distmeta.runtime.rundir import write_text_atomic

    out = []
    for name, blob in sorted((ckpt.files or {}).items()):
        write_text_atomic(Path(run_dir) / name, blob.decode("utf-8"))
        out.append(Path(run_dir) / name)
    return out
