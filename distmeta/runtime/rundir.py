"""The run directory: refuse to clobber a run by accident, never delete one on purpose.

A directory "holds a run" when it has a ``config.yaml`` or a non-empty
``checkpoints/``. Starting a new run there needs ``--overwrite`` (the old run is
moved aside to ``<dir>.replaced-<UTC timestamp>``, not deleted); continuing it needs
``--resume`` and a valid checkpoint.
"""
from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from pathlib import Path

from distmeta.errors import RunDirError
from distmeta.runtime.checkpoint import CHECKPOINTS_DIR, fsync_dir, latest_checkpoint, list_checkpoints

CONFIG_FILE = "config.yaml"

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
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (temp file in the same dir, fsync, os.replace).

    Readers see the old content or the new one, never half a file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
