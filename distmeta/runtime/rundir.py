"""The run directory: refuse to clobber a run by accident, never delete one on purpose.

A directory "holds a run" when it has a ``config.yaml`` or a non-empty
``checkpoints/``. Starting a new run there needs ``--overwrite`` (the old run is
moved aside to ``<dir>.replaced-<UTC timestamp>``, not deleted); continuing it needs
``--resume`` and a valid checkpoint.

One writer at a time: a writer holds an exclusive ``flock`` on ``RUN_DIR/.distmeta.lock``
(:func:`lock_run_dir`) for as long as it runs, so a second writer (a duplicate
``--resume``, a restarted Tune trial whose old process still runs) is refused with an
error naming the holder. The lock, not the PID written next to it, decides: PIDs
repeat across PID namespaces, and the kernel drops the lock when its holder dies.

:func:`open_run` is the trainer's entry: a local path (or ``file://`` URI) gives a
:class:`LocalRun` (the above); any other ``pyarrow.fs`` URI (``s3://bucket/run``) a
:class:`~distmeta.runtime.remote_run.RemoteRun`, which keeps the same rules with a lease in
place of the flock (:mod:`distmeta.runtime.lease`) and works through a local cache.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import weakref
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from distmeta.errors import RunDirError
from distmeta.files import CHECKPOINTS_DIR, CONFIG_FILE, LOCK_FILE
from distmeta.runtime.checkpoint import fsync_dir, latest_checkpoint, list_checkpoints

if TYPE_CHECKING:
    from distmeta.runtime.remote_run import RemoteRun

_held: dict[str, int] = {}  # run directories this process holds the lock of -> descriptor

log = logging.getLogger(__name__)


def holds_run(path: Path) -> bool:
    """True when ``path`` has a ``config.yaml`` or anything in ``checkpoints/``."""
    ckdir = path / CHECKPOINTS_DIR
    return (path / CONFIG_FILE).exists() or (ckdir.is_dir() and any(ckdir.iterdir()))


def _aside_path(path: Path) -> Path:
    """``<path>.replaced-20250101T120000Z`` (with ``-1``, ``-2``... if that name is taken)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = path.with_name(f"{path.name}.replaced-{stamp}")
    aside, n = base, 0
    while aside.exists():
        n += 1
        aside = base.with_name(f"{base.name}-{n}")
    return aside


def move_aside(path: Path) -> Path:
    """Rename an existing run out of the way (same filesystem, so nothing is copied or lost); returns where."""
    aside = _aside_path(path)
    try:
        os.rename(path, aside)
    except OSError as e:
        raise RunDirError(f"cannot move the existing run {path} aside to {aside}: {e}") from e
    fsync_dir(path.parent)
    log.warning("--overwrite: moved the existing run %s aside to %s (nothing was deleted)", path, aside)
    return aside


def prepare_run_dir(path: str | Path, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Create (or, with ``resume``, reopen) the run directory; returns its absolute path.

    Raises RunDirError for: both flags; ``resume`` without a run or without a valid
    checkpoint; an existing run with neither flag. ``overwrite`` moves the old run
    to ``<path>.replaced-<UTC timestamp>`` and starts a fresh, empty directory.
    """
    path = Path(path).expanduser().absolute()
    if resume and overwrite:
        raise RunDirError(f"{path}: --resume and --overwrite contradict each other; pass one of them")
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run directory {path} exists and is not a directory")
    has_run = path.is_dir() and holds_run(path)
    holder = run_dir_in_use(path) if path.is_dir() else None
    if holder is not None:
        raise RunDirError(f"run directory {path} is in use by another distmeta writer: {holder}; "
                          f"wait for it to finish or stop it")
    if resume:
        if not has_run:
            raise RunDirError(f"nothing to resume in {path}: it has no {CONFIG_FILE} and no checkpoints")
        if latest_checkpoint(path) is None:
            found = ", ".join(p.name for p in list_checkpoints(path)) or "none"
            raise RunDirError(
                f"cannot resume {path}: it has no valid checkpoint (step directories found: {found}); "
                f"pass --overwrite to move it aside and start over"
            )
        return path
    if has_run:
        if not overwrite:
            raise RunDirError(
                f"run directory {path} already holds a run ({CONFIG_FILE} or checkpoints/); "
                f"pass --resume to continue it or --overwrite to move it aside and start fresh"
            )
        move_aside(path)
    path.mkdir(mode=0o750, parents=True, exist_ok=True)  # like checkpoints: your group reads, nobody else writes
    return path


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (temp file in the same dir, fsync, os.replace).

    Readers see the old content or the new one, never half a file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)  # as checkpoint files (umask tightens)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _holder(fd: int) -> str:
    """Who holds a run directory's lock, from what it wrote into the lock file."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
        return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')} (uid {info.get('uid', '?')}), "
                f"started {info.get('since', '?')}: {info.get('command', '?')}")
    except (OSError, ValueError):
        return "another process (its lock file is unreadable)"


def lock_run_dir(path: str | Path, owner: object | None = None) -> int:
    """Take the run directory's writer lock for this process, or raise RunDirError naming the holder.

    The lock file is opened with ``O_NOFOLLOW`` and mode 0600. Held until the process
    exits or :func:`unlock_run_dir`; with ``owner`` (a Trainer), also released when
    ``owner`` is garbage-collected. Taking it again in the process that holds it is a no-op.
    """
    path = Path(path).absolute()
    key = str(path)
    if key in _held:
        return _held[key]
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise RunDirError(f"run directory {path} is in use by another distmeta writer: {holder}. Two writers would "
                          f"corrupt its checkpoints; wait for it to finish or stop it") from None
    info = {"pid": os.getpid(), "host": socket.gethostname(), "uid": os.getuid(),
            "since": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "command": " ".join(sys.argv)[:500]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
    _held[key] = fd
    if owner is not None:
        weakref.finalize(owner, unlock_run_dir, key)
    return fd


def unlock_run_dir(path: str | Path) -> None:
    """Release this process's lock on a run directory (nothing if it holds none)."""
    fd = _held.pop(str(Path(path).absolute()), None)
    if fd is not None:
        os.close(fd)


def run_dir_in_use(path: str | Path) -> str | None:
    """The holder of a run directory's lock when another process holds it, else None (no lock file, or free)."""
    path = Path(path).absolute()
    if str(path) in _held:
        return None
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    finally:
        os.close(fd)
    return None


class LocalRun:
    """A run directory on a local (or shared POSIX) filesystem: :func:`prepare_run_dir` + :func:`lock_run_dir`.

    Args:
        path: the run directory (a path or a ``file://`` URI).
        resume: continue the run there.
        overwrite: move an existing run aside and start afresh.
        owner: an object (the Trainer) whose garbage collection releases the lock.
    """

    def __init__(self, path: str | Path, *, resume: bool = False, overwrite: bool = False,
                 owner: object | None = None) -> None:
        from distmeta.runtime.storage import local_path

        self.local = prepare_run_dir(local_path(path), resume=resume, overwrite=overwrite)
        self.display = str(self.local)
        lock_run_dir(self.local, owner=owner)

    def save_checkpoint(self, ckpt: Any, keep: int) -> Path:
        """:func:`~distmeta.runtime.checkpoint.save_checkpoint` into this run directory."""
        from distmeta.runtime.checkpoint import save_checkpoint

        return save_checkpoint(self.local, ckpt, keep=keep)

    def sync(self, force: bool = False) -> None:
        """Nothing to upload: the files are where they belong."""

    def close(self) -> None:
        """Release the writer lock; safe to call twice."""
        unlock_run_dir(self.local)


RunLocation = Union[LocalRun, "RemoteRun"]


def open_run(path: str | Path, *, resume: bool = False, overwrite: bool = False,
             owner: object | None = None) -> RunLocation:
    """Prepare and lock a run directory, local or remote; the trainer works in ``.local`` either way.

    Args:
        path: ``run.dir``: a local path, a ``file://`` URI, or a ``pyarrow.fs`` URI (``s3://bucket/run``).
        resume: continue the run there from its newest valid checkpoint.
        overwrite: move an existing run aside and start afresh.
        owner: an object whose garbage collection releases the lock (the Trainer).

    Returns:
        A :class:`LocalRun` or :class:`~distmeta.runtime.remote_run.RemoteRun`, both with ``local``,
        ``display``, ``save_checkpoint(ckpt, keep)``, ``sync(force)`` and ``close()``.

    Raises:
        RunDirError: the rules of :func:`prepare_run_dir`, or another writer holds the run.
        StorageError: a remote URI whose bucket is missing or unreachable.
    """
    from distmeta.runtime.storage import is_remote

    if is_remote(path):
        from distmeta.runtime.remote_run import RemoteRun

        return RemoteRun(str(path), resume=resume, overwrite=overwrite, owner=owner)
    return LocalRun(path, resume=resume, overwrite=overwrite, owner=owner)


def run_dir_of(path: Path) -> Path:
    """The run directory of a run dir, its ``checkpoints/`` dir or one ``step_*`` dir."""
    path = path.resolve()
    if path.name.startswith("step_"):
        return path.parent.parent
    if path.name == "checkpoints":
        return path.parent
    return path


def save_to(location: RunLocation | None, run_dir: Path, ckpt: Any, keep: int) -> Path:
    """Save ``ckpt`` in the run (``location``; None: ``run_dir`` as it is, for a trainer made from a checkpoint).

    A failed save says which intact checkpoint is kept and how to resume from it.

    Returns:
        The local step directory.
    """
    from distmeta.errors import CheckpointError
    from distmeta.runtime.checkpoint import save_checkpoint

    try:
        if location is None:
            return save_checkpoint(run_dir, ckpt, keep=keep)
        return location.save_checkpoint(ckpt, keep=keep)
    except CheckpointError as e:
        kept = latest_checkpoint(run_dir)
        from distmeta.runtime.storage import redact_uri

        where = redact_uri(str(location.display)) if location is not None else run_dir
        raise CheckpointError(
            f"{e}; training stopped at step {ckpt.step}. The newest intact checkpoint is "
            f"{kept if kept is not None else 'none'}; fix the cause, then `distmeta train --resume {where}`"
        ) from e

