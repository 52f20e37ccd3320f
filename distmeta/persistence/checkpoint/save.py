"""Saving to a local run directory: write a temporary directory, fsync, rename into place, prune.

Everything goes into ``checkpoints/.tmp-step_XXXXXXXX-<pid>``, is fsynced, and the directory
is renamed into place, so a reader sees a whole checkpoint or none. Files are written with
mode 0640 and directories 0750 (less with a stricter umask). A writer holds a ``flock`` on
its temporary directory while it fills it, and the leftover clean-up skips any temporary
directory whose lock is held: it only removes those of writers that are gone. A checkpoint
that fails its checksum is never deleted: it is renamed aside to
``step_XXXXXXXX.corrupt-<UTC time>`` (ignored by readers) with a warning, for a look.
"""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
import warnings
from datetime import datetime, timezone
from pathlib import Path

from distmeta.errors import CheckpointError
from distmeta.files import CHECKPOINTS_DIR, fsync_dir
from distmeta.persistence.checkpoint.format import (
    CORRUPT_TAG,
    DIR_MODE,
    FILE_MODE,
    MANIFEST_FILE,
    OLD_PREFIX,
    TMP_PREFIX,
    Checkpoint,
    CorruptCheckpointWarning,
    _step_of,
    list_checkpoints,
    manifest_bytes,
    step_dirname,
    verify_checkpoint,
)
from distmeta.persistence.checkpoint.serialise import serialise


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
    blobs = serialise(ckpt, Path(run_dir))
    ckdir = Path(run_dir) / CHECKPOINTS_DIR
    final = ckdir / step_dirname(ckpt.step)
    tmp = ckdir / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    lock = None
    try:
        ckdir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        _clean_leftovers(ckdir)
        tmp.mkdir(mode=DIR_MODE)
        lock = _lock_dir(tmp)  # held until installed: no clean-up may remove a live writer's temp dir
        write = _write_file  # looked up at call time: fault drills replace it on this module
        for name, data in blobs.items():
            write(tmp / name, data)
        write(tmp / MANIFEST_FILE, manifest_bytes(ckpt.step, blobs))
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
