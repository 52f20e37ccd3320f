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

:class:`LocalRun` is a run directory on a local (or shared POSIX) filesystem; the trainer
opens one through :func:`distmeta.persistence.location.open_run`, which gives a
:class:`~distmeta.persistence.remote_run.RemoteRun` for an object store instead.
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
from typing import Any

from distmeta.errors import RunDirError
from distmeta.files import CHECKPOINTS_DIR, CONFIG_FILE, LOCK_FILE, fsync_dir
from distmeta.persistence.checkpoint import latest_checkpoint, list_checkpoints

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
        from distmeta.persistence.storage import local_path

        self.local = prepare_run_dir(local_path(path), resume=resume, overwrite=overwrite)
        self.display = str(self.local)
        lock_run_dir(self.local, owner=owner)

    def save_checkpoint(self, ckpt: Any, keep: int) -> Path:
        """:func:`~distmeta.persistence.checkpoint.save_checkpoint` into this run directory."""
        from distmeta.persistence.checkpoint import save_checkpoint

        return save_checkpoint(self.local, ckpt, keep=keep)

    def sync(self, force: bool = False) -> None:
        """Nothing to upload: the files are where they belong."""

    def close(self) -> None:
        """Release the writer lock; safe to call twice."""
        unlock_run_dir(self.local)


def run_dir_of(path: Path) -> Path:
    """The run directory of a run dir, its ``checkpoints/`` dir or one ``step_*`` dir."""
    path = path.resolve()
    if path.name.startswith("step_"):
        return path.parent.parent
    if path.name == "checkpoints":
        return path.parent
    return path
