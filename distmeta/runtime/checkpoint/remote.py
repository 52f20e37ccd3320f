"""Checkpoints on an object store (``s3://``, ``gs://``): the same files, with the manifest as the commit point.

Object stores have no atomic rename, so publishing a step goes:

1. upload every file of a verified local step directory to ``checkpoints/.tmp-step_X-<token>/``,
   its manifest last (the temporary prefix is then complete and self-verifying);
2. if ``step_X/`` exists, delete its manifest first (from then on readers skip it), then its files;
3. copy the files into ``step_X/`` (server-side), the manifest last: **that write is the commit**;
4. delete the temporary prefix; prune to ``keep``.

Readers ignore ``.tmp-*`` prefixes and any ``step_*`` prefix without a manifest whose sizes
and checksums match. A writer that died between 2 and 4 left a complete temporary prefix:
the next writer (who holds the run's lease, :mod:`distmeta.runtime.lease`) finishes the
publication from it before saving. Damaged checkpoints are never deleted.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable

from distmeta.errors import CheckpointError
from distmeta.files import CHECKPOINTS_DIR
from distmeta.runtime.checkpoint.format import (
    MANIFEST_FILE,
    TMP_PREFIX,
    CheckpointFallbackWarning,
    _read_manifest,
    manifest_order,
    parse_manifest,
    step_of,
    verify_checkpoint,
)
from distmeta.runtime.storage import Store, StorageError, cache_dir, open_store, uri_name


def _manifest_files(ck: Store, name: str) -> dict[str, Any]:
    """The ``files`` table of remote checkpoint ``name``, after checking every listed size (one listing).

    Sizes, not checksums: enough to tell a whole publication from a torn one without reading the
    data. Downloads check the checksums (:func:`fetch_checkpoint`).
    """
    where = ck.uri_of(name)
    if not ck.exists(f"{name}/{MANIFEST_FILE}"):
        raise CheckpointError(f"checkpoint {where} has no {MANIFEST_FILE} (incomplete write or not a checkpoint)")
    files = parse_manifest(ck.read_bytes(f"{name}/{MANIFEST_FILE}"), where)["files"]
    present = ck.listdir(name)
    for fname, entry in files.items():
        kind, size = present.get(fname, ("missing", None))
        if kind != "file":
            raise CheckpointError(f"checkpoint {where}: missing file {fname}")
        if size != entry["size"]:
            raise CheckpointError(f"checkpoint {where}: {fname} is {size} bytes but the manifest says {entry['size']}")
    return files


def remote_steps(ck: Store) -> list[str]:
    """The ``step_*`` prefix names under a remote ``checkpoints/``, sorted by step (valid or not)."""
    found = [(s, n) for n, (kind, _) in ck.listdir().items() if kind == "dir" and (s := step_of(n)) is not None]
    return [n for _, n in sorted(found)]


def _install(ck: Store, tmp: str, final: str, files: list[str]) -> None:
    """Steps 2 and 3: clear ``final`` (manifest first), copy ``tmp``'s files in, the manifest last."""
    ck.delete_file(f"{final}/{MANIFEST_FILE}")
    ck.delete_dir(final)
    for name in files:
        ck.copy(f"{tmp}/{name}", f"{final}/{name}")
    ck.copy(f"{tmp}/{MANIFEST_FILE}", f"{final}/{MANIFEST_FILE}")


def finish_leftovers(ck: Store) -> None:
    """Complete publications a dead writer left half done; delete temporary prefixes that are torn.

    Only for the lease holder: no other writer can be filling a temporary prefix.
    """
    for name, (kind, _) in ck.listdir().items():
        if kind != "dir" or not name.startswith(TMP_PREFIX):
            continue
        final = name[len(TMP_PREFIX):].rsplit("-", 1)[0]
        try:
            files = _manifest_files(ck, name)
        except CheckpointError:
            ck.delete_dir(name)  # torn before its manifest: never was a checkpoint
            continue
        try:
            _manifest_files(ck, final)
        except CheckpointError:
            _install(ck, name, final, manifest_order(files))
        ck.delete_dir(name)


def _prune(ck: Store, saved_step: int, keep: int) -> None:
    """Delete valid checkpoints older than the ``keep`` newest up to ``saved_step``; damaged ones are left alone."""
    older = [n for n in remote_steps(ck) if (step_of(n) or 0) < saved_step]
    kept = 1
    for name in reversed(older):
        try:
            _manifest_files(ck, name)
        except CheckpointError:
            continue
        if kept < keep:
            kept += 1
        else:
            ck.delete_dir(name)


def publish_checkpoint(run: Store, local_step: Path, keep: int, check_lease: Callable[[], None] | None = None) -> str:
    """Publish a verified local step directory to ``run``'s ``checkpoints/`` and prune to ``keep``.

    Args:
        run: the remote run directory.
        local_step: a ``step_*`` directory that :func:`verify_checkpoint` accepts.
        keep: how many valid checkpoints to keep.
        check_lease: called just before the commit; raises if this process no longer holds the run.

    Returns:
        The URI of the published step prefix.

    Raises:
        CheckpointError: the storage failed (naming the URI); earlier checkpoints are untouched.
    """
    verify_checkpoint(local_step)
    ck = run.child(CHECKPOINTS_DIR)
    final = local_step.name
    tmp = f"{TMP_PREFIX}{final}-{uuid.uuid4().hex[:12]}"
    files = manifest_order(_read_manifest(local_step)["files"])
    try:
        finish_leftovers(ck)
        for name in files:
            ck.upload(local_step / name, f"{tmp}/{name}")
        ck.upload(local_step / MANIFEST_FILE, f"{tmp}/{MANIFEST_FILE}")
        if check_lease is not None:
            check_lease()
        _install(ck, tmp, final, files)
        ck.delete_dir(tmp)
        step = step_of(final)
        if step is not None:
            _prune(ck, step, keep)
    except StorageError as e:
        raise CheckpointError(f"could not publish checkpoint {final} to {ck.uri}: {e}") from e
    return ck.uri_of(final)


def _sha_ok(path: Path, entry: dict[str, Any]) -> bool:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest() == entry["sha256"]


def _fetch_one(ck: Store, name: str, dest_dir: Path) -> Path:
    """Download remote checkpoint ``name`` into ``dest_dir/name`` and verify it there; reuse a cached copy."""
    files = _manifest_files(ck, name)
    raw_manifest = ck.read_bytes(f"{name}/{MANIFEST_FILE}")
    dest = dest_dir / name
    if (dest / MANIFEST_FILE).is_file() and (dest / MANIFEST_FILE).read_bytes() == raw_manifest:
        try:
            verify_checkpoint(dest)
            return dest  # already here, same manifest, every checksum matches
        except CheckpointError:
            pass
    tmp = dest_dir / f"{TMP_PREFIX}fetch-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700, parents=True)
    try:
        for fname in manifest_order(files):
            ck.download(f"{name}/{fname}", tmp / fname)
            if not _sha_ok(tmp / fname, files[fname]):
                raise CheckpointError(f"checkpoint {ck.uri_of(name)}: {fname} fails its sha256 checksum")
        (tmp / MANIFEST_FILE).write_bytes(raw_manifest)
        verify_checkpoint(tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(tmp, dest)
    except StorageError as e:
        raise CheckpointError(f"cannot fetch checkpoint {ck.uri_of(name)}: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _parent(uri: str) -> str:
    """The URI one level up (``s3://b/run/checkpoints?x=1`` -> ``s3://b/run?x=1``)."""
    base, sep, query = uri.partition("?")
    return base.rstrip("/").rsplit("/", 1)[0] + sep + query


def _locate(uri: str) -> tuple[Store, str | None, str]:
    """``(checkpoints store, one step name or None, run URI)`` for a run, ``checkpoints/`` or step URI."""
    store = open_store(uri)
    if store.exists(MANIFEST_FILE) or step_of(uri_name(uri)) is not None:
        parent = _parent(uri)
        run = _parent(parent) if uri_name(parent) == CHECKPOINTS_DIR else parent
        return open_store(parent, check=False), uri_name(uri), run
    if uri_name(uri) == CHECKPOINTS_DIR and store.info(CHECKPOINTS_DIR)[0] != "dir":
        return store, None, _parent(uri)
    return store.child(CHECKPOINTS_DIR), None, uri


def fetch_checkpoint(uri: str, dest: Path | None = None) -> Path:
    """Download the newest valid checkpoint of a remote run (or the one step named) and return its local path.

    Damaged newer checkpoints are skipped with a :class:`CheckpointFallbackWarning`. Files go to
    ``dest`` (default: ``checkpoints/`` of the run's reader cache, see
    :func:`~distmeta.runtime.storage.cache_dir`); a copy already there with the same manifest is
    reused without downloading.

    Args:
        uri: ``s3://bucket/run``, ``.../checkpoints`` or ``.../checkpoints/step_00000100``.
        dest: the local directory to put the ``step_*`` directory in.

    Returns:
        The local, verified ``step_*`` directory.
    """
    ck, single, run_uri = _locate(uri)
    dest = dest if dest is not None else cache_dir(run_uri, kind="fetched") / CHECKPOINTS_DIR
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    if single is not None:
        return _fetch_one(ck, single, dest)
    names = list(reversed(remote_steps(ck)))
    if not names:
        raise CheckpointError(f"no checkpoints under {ck.uri} (expected step_* prefixes)")
    tried: list[str] = []
    for name in names:
        try:
            return _fetch_one(ck, name, dest)
        except CheckpointError as e:
            tried.append(f"  {ck.uri_of(name)}: {e}")
            warnings.warn(f"skipping unusable checkpoint {ck.uri_of(name)}: {e}; trying the previous one",
                          CheckpointFallbackWarning, stacklevel=2)
    raise CheckpointError(f"no valid checkpoint under {ck.uri}; tried:\n" + "\n".join(tried))


def latest_remote(run: Store) -> str | None:
    """The name of the newest remote checkpoint whose manifest and sizes check, or None."""
    ck = run.child(CHECKPOINTS_DIR)
    for name in reversed(remote_steps(ck)):
        try:
            _manifest_files(ck, name)
        except CheckpointError:
            continue
        return name
    return None
