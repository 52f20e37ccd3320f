"""A run directory on an object store (``run.dir=s3://bucket/runs/a``), worked on through a local cache.

The trainer writes where it always does, into a local directory: the run's private cache
(:func:`~distmeta.persistence.storage.cache_dir`). This class keeps the remote run in step with it:

* opening checks the bucket before anything else (an error naming the URI, before Ray starts),
  takes the cache's flock and claims the run's next generation (:mod:`distmeta.persistence.lease`):
  from then on this writer writes only under ``RUN/gen-<epoch>-<token>/``, and a writer whose
  claim another one beats can add nothing readers would see;
* it then applies the same rules as a local run directory to the run as readers see it (its
  current generation, or the files directly under ``RUN/`` of a run written before
  generations): ``--resume`` needs a valid checkpoint, an existing run needs ``--resume`` or
  ``--overwrite``; ``--overwrite`` copies the old run to ``<uri>.replaced-<UTC time>`` before
  removing it;
* ``--resume`` pulls the previous generation's top-level and TensorBoard files and its newest
  valid checkpoint (or a complete publication its writer left unfinished; reused when the cache
  has the same one), read only, then makes its own generation complete at once (those files and
  that checkpoint) and sweeps the generations its claim beats;
* checkpoints are saved locally as today, then published into the generation
  (:mod:`distmeta.persistence.checkpoint.remote`), the lease checked before every request;
* :meth:`sync` uploads the top-level files and TensorBoard event files that changed - at most
  every ``DISTMETA_SYNC_EVERY`` seconds (default 30) from the metrics logger, and always before
  a checkpoint is published and on close - and raises :class:`~distmeta.errors.RunDirError`
  once the lease is lost, which stops the run.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
import weakref
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from distmeta.errors import CheckpointError, RunDirError
from distmeta.files import CHECKPOINTS_DIR, CONFIG_FILE, LOCK_FILE, TENSORBOARD_DIR
from distmeta.persistence.lease import GEN_PREFIX, LEASE_DIR, Lease, current_generation
from distmeta.persistence.rundir import unlock_run_dir
from distmeta.persistence.storage import StorageError, Store, cache_dir, open_store

DEFAULT_SYNC_EVERY = 30.0
log = logging.getLogger(__name__)


class RunSyncWarning(UserWarning):
    """Uploading the run's logs failed; they are kept locally and retried at the next sync."""


def holds_remote_run(store: Store) -> bool:
    """True when ``store`` (a generation, or a run written before them) has a ``config.yaml`` or ``checkpoints/``."""
    return store.exists(CONFIG_FILE) or bool(store.listdir(CHECKPOINTS_DIR))


def move_aside_remote(store: Store, lease: Lease) -> str:
    """Copy the run to ``<uri>.replaced-<UTC time>`` (server-side), then remove it, all but ``lease``'s own claim.

    Returns:
        The URI the run was copied to.
    """
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    parent, name = store.root.rsplit("/", 1)
    aside = Store._at(store.fs, f"{parent}/{name}.replaced-{stamp}", f"{store.uri}.replaced-{stamp}")
    mine = f"{LEASE_DIR}/{lease.claim.name}." if lease.claim else None
    files = [f for f in store.walk() if f != LOCK_FILE and not (mine and f.startswith(mine))]
    for rel in files:
        store.fs.copy_file(store.path(rel), aside.path(rel))
    for rel in files:
        lease.check()
        store.delete_file(rel)
    log.warning("--overwrite: moved the existing run %s aside to %s (nothing was deleted)", store.uri, aside.uri)
    return aside.uri


def _clear(local: Path, keep: set[str]) -> None:
    """Empty the cache directory except the names in ``keep``."""
    for p in local.iterdir():
        if p.name in keep:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


class RemoteRun:
    """A remote run directory and its local cache; see the module docstring.

    Args:
        uri: the run directory's URI.
        resume: continue the run there from its newest valid checkpoint.
        overwrite: move an existing run aside and start afresh.
        owner: an object (the Trainer) whose garbage collection releases the lease and lock.
    """

    def __init__(self, uri: str, *, resume: bool = False, overwrite: bool = False, owner: object | None = None) -> None:
        from distmeta.persistence.rundir import lock_run_dir, unlock_run_dir

        if resume and overwrite:
            raise RunDirError(f"{uri}: --resume and --overwrite contradict each other; pass one of them")
        self.uri = uri
        self.store = open_store(uri)
        self.local = cache_dir(uri)
        self.display = uri
        self.sync_every = float(os.environ.get("DISTMETA_SYNC_EVERY", DEFAULT_SYNC_EVERY))
        self._sent: dict[str, tuple[int, int]] = {}
        self._last_sync = 0.0
        self._swept = False
        self.lease = Lease(self.store)
        try:
            lock_run_dir(self.local)  # one process per cache on this host, before the cache is touched
        except RunDirError as e:
            raise RunDirError(f"run directory {uri} is in use on this host (its local cache): {e}") from None
        try:
            self.lease.acquire()  # before anything is read or changed: refuses a live writer, naming it
            self.gen = self.lease.generation  # where this writer writes, and only there
            self._prepare(resume, overwrite)
        except BaseException:
            self.lease.release()
            unlock_run_dir(self.local)
            raise
        if owner is not None:
            weakref.finalize(owner, _release, self.lease, str(self.local))

    def _prepare(self, resume: bool, overwrite: bool) -> None:
        # This writer's generation is still empty, so readers (and this) see the run as the previous writer left it.
        source = current_generation(self.store)
        has_run = holds_remote_run(source)
        if resume:
            if not has_run:
                raise RunDirError(f"nothing to resume in {self.uri}: it has no {CONFIG_FILE} and no checkpoints")
            self._resume_from(source)
            return
        if has_run:
            if not overwrite:
                raise RunDirError(f"run directory {self.uri} already holds a run ({CONFIG_FILE} or checkpoints/); "
                                  f"pass --resume to continue it or --overwrite to move it aside and start fresh")
            move_aside_remote(self.store, self.lease)
        _clear(self.local, {LOCK_FILE})

    def _resume_from(self, source: Store) -> None:
        """Fetch ``source``'s files and newest usable checkpoint (read only), then publish them as this generation's."""
        from distmeta.persistence.checkpoint.remote import (
            fetch_newest,
            publish_checkpoint,
            resume_candidates,
        )

        ck = source.child(CHECKPOINTS_DIR)
        _clear(self.local, {LOCK_FILE, CHECKPOINTS_DIR})
        self._pull(source)
        try:
            # Only the newest valid checkpoint may be resumed from: a step the cache holds from an earlier
            # attempt (never published, or since replaced by --overwrite elsewhere) is not the run's.
            fetched = fetch_newest(ck, resume_candidates(ck), self.local / CHECKPOINTS_DIR)
        except CheckpointError as e:
            raise RunDirError(f"cannot resume {self.uri}: it has no valid checkpoint ({e}); pass --overwrite to move "
                              f"it aside and start over") from None
        _clear(fetched.parent, {fetched.name})
        self.sync(force=True)  # this generation holds the run from now on: its files first, then the checkpoint
        publish_checkpoint(self.gen, fetched, keep=1, check_lease=self.lease.check)
        self.lease.sweep()
        self._swept = True

    def _pull(self, source: Store) -> None:
        """Download ``source``'s top-level and TensorBoard files into the cache (uploaded into this generation by sync)."""
        for rel in source.walk():
            top = rel.split("/", 1)[0]
            wanted = "/" not in rel or top == TENSORBOARD_DIR
            if not wanted or top.startswith((".", GEN_PREFIX)):
                continue
            (self.local / rel).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            source.download(rel, self.local / rel)

    # ------------------------------------------------------------------ writing
    def _changed(self) -> list[str]:
        """Top-level files and TensorBoard files of the cache that differ from what was last uploaded."""
        out = []
        candidates = [p for p in self.local.iterdir() if p.is_file() and not p.name.startswith(".")]
        tb = self.local / TENSORBOARD_DIR
        if tb.is_dir():
            candidates += [p for p in tb.rglob("*") if p.is_file()]
        for p in candidates:
            rel = p.relative_to(self.local).as_posix()
            st = p.stat()
            if self._sent.get(rel) != (st.st_size, st.st_mtime_ns):
                out.append(rel)
        return sorted(out)

    def sync(self, force: bool = False) -> None:
        """Upload what changed into this generation; without ``force`` at most every ``sync_every`` seconds.

        Storage failures warn and are retried at the next sync.

        Raises:
            RunDirError: this writer's lease was taken over (checked before every upload).
        """
        if self.lease.lost is not None:
            self.lease.check()  # raises: a writer whose lease was taken over stops
        if not force and time.monotonic() - self._last_sync < self.sync_every:
            return
        self._last_sync = time.monotonic()
        for rel in self._changed():
            path = self.local / rel
            st = path.stat()
            self.lease.check()
            try:
                self.gen.upload(path, rel)
            except StorageError as e:
                warnings.warn(f"{e}; kept in {self.local}, retried at the next sync", RunSyncWarning, stacklevel=2)
                return
            self._sent[rel] = (st.st_size, st.st_mtime_ns)

    def save_checkpoint(self, ckpt: Any, keep: int) -> Path:
        """Save ``ckpt`` in the cache (atomic, verified), upload the run files, then publish it remotely.

        Returns:
            The local step directory (what Ray Tune reports as the trial checkpoint).
        """
        from distmeta.persistence.checkpoint import save_checkpoint
        from distmeta.persistence.checkpoint.remote import publish_checkpoint

        local = save_checkpoint(self.local, ckpt, keep=keep)
        self.sync(force=True)
        publish_checkpoint(self.gen, local, keep, check_lease=self.lease.check)
        if not self._swept:  # this generation now holds a checkpoint: older ones are not needed
            self.lease.sweep()
            self._swept = True
        return local

    def close(self) -> None:
        """Upload what is left, release the lease and the cache's lock; safe to call twice.

        A writer whose lease was taken over uploads nothing (the error was raised where it was found).
        """
        try:
            if self.lease.held and self.lease.lost is None:
                self.sync(force=True)
        except RunDirError as e:
            log.error("%s", e)
        finally:
            _release(self.lease, str(self.local))


def _release(lease: Lease, local: str) -> None:
    lease.release()
    unlock_run_dir(local)


def read_remote_config(uri: str) -> dict[str, Any]:
    """The ``config.yaml`` of remote run ``uri``, parsed with ``yaml.safe_load`` (``distmeta train --resume URI``).

    Raises:
        RunDirError: there is none; ConfigError: it is not a YAML mapping; StorageError: the bucket is unreachable.
    """
    import yaml

    from distmeta.errors import ConfigError

    store = current_generation(open_store(uri))
    if not store.exists(CONFIG_FILE):
        raise RunDirError(f"--resume {uri}: no {CONFIG_FILE} there; is it a distmeta run directory?")
    try:
        raw = yaml.safe_load(store.read_bytes(CONFIG_FILE).decode("utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{store.uri_of(CONFIG_FILE)} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{store.uri_of(CONFIG_FILE)} must hold a mapping at top level")
    return raw
