"""Where a run lives: a local run directory or one on an object store, behind one interface.

:func:`open_run` is the trainer's entry: a local path (or ``file://`` URI) gives a
:class:`~distmeta.persistence.rundir.LocalRun` (an exclusive ``flock``); any other
``pyarrow.fs`` URI (``s3://bucket/run``) a :class:`~distmeta.persistence.remote_run.RemoteRun`,
which keeps the same rules with a lease in place of the flock
(:mod:`distmeta.persistence.lease`) and works through a local cache.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Union

from distmeta.errors import CheckpointError
from distmeta.persistence.checkpoint import latest_checkpoint, save_checkpoint
from distmeta.persistence.remote_run import RemoteRun
from distmeta.persistence.rundir import LocalRun
from distmeta.persistence.storage import is_remote, redact_uri

RunLocation = Union[LocalRun, RemoteRun]


def open_run(path: str | Path, *, resume: bool = False, overwrite: bool = False,
             owner: object | None = None) -> RunLocation:
    """Prepare and lock a run directory, local or remote; the trainer works in ``.local`` either way.

    Args:
        path: ``run.dir``: a local path, a ``file://`` URI, or a ``pyarrow.fs`` URI (``s3://bucket/run``).
        resume: continue the run there from its newest valid checkpoint.
        overwrite: move an existing run aside and start afresh.
        owner: an object whose garbage collection releases the lock (the Trainer).

    Returns:
        A :class:`LocalRun` or :class:`~distmeta.persistence.remote_run.RemoteRun`, both with ``local``,
        ``display``, ``save_checkpoint(ckpt, keep)``, ``sync(force)`` and ``close()``.

    Raises:
        RunDirError: the rules of :func:`prepare_run_dir`, or another writer holds the run.
        StorageError: a remote URI whose bucket is missing or unreachable.
    """
    if is_remote(path):
        return RemoteRun(str(path), resume=resume, overwrite=overwrite, owner=owner)
    return LocalRun(path, resume=resume, overwrite=overwrite, owner=owner)


def save_to(location: RunLocation | None, run_dir: Path, ckpt: Any, keep: int) -> Path:
    """Save ``ckpt`` in the run (``location``; None: ``run_dir`` as it is, for a trainer made from a checkpoint).

    A failed save says which intact checkpoint is kept and how to resume from it.

    Returns:
        The local step directory.
    """
    try:
        if location is None:
            return save_checkpoint(run_dir, ckpt, keep=keep)
        return location.save_checkpoint(ckpt, keep=keep)
    except CheckpointError as e:
        kept = latest_checkpoint(run_dir)
        where = redact_uri(str(location.display)) if location is not None else run_dir
        raise CheckpointError(
            f"{e}; training stopped at step {ckpt.step}. The newest intact checkpoint is "
            f"{kept if kept is not None else 'none'}; fix the cause, then `distmeta train --resume {where}`"
        ) from e

