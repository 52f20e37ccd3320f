"""Checkpoints on an object store (``s3://``, ``gs://``): the same files, with the manifest as the commit point.

A writer publishes only under its own generation (:mod:`distmeta.persistence.lease`), so nothing here
touches another writer's files. Object stores have no atomic rename, so publishing a step goes:

1. upload every file of a verified local step directory to ``checkpoints/.tmp-step_X-<token>/``,
   its manifest last (the temporary prefix is then complete and self-verifying);
2. if ``step_X/`` exists, delete its manifest first (from then on readers skip it), then its files;
3. copy the files into ``step_X/`` (server-side), the manifest last: **that write is the commit**;
4. delete the temporary prefix; prune to ``keep``.

The lease is checked before every one of these requests. Readers ignore ``.tmp-*`` prefixes and
any ``step_*`` prefix without a manifest whose sizes and checksums match. A writer that died
between 2 and 4 left a complete temporary prefix: the next writer may resume from it (read only,
:func:`resume_candidates`). A temporary prefix is used only when its name is exactly
``.tmp-step_<8 to 12 digits>-<12 hex digits>``; any other name is ignored with a warning and never
turned into a path. Damaged checkpoints are never deleted.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable

from distmeta.errors import CheckpointError
from distmeta.files import CHECKPOINTS_DIR
from distmeta.persistence.checkpoint.format import (
    MANIFEST_FILE,
    TMP_PREFIX,
    CheckpointFallbackWarning,
    _read_manifest,
    manifest_order,
    parse_manifest,
    step_of,
    verify_checkpoint,
)
from distmeta.persistence.storage import (
    StorageError,
    Store,
    cache_dir,
    open_store,
    uri_name,
)


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


_TMP_RE = re.compile(re.escape(TMP_PREFIX) + r"(step_\d{8,12})-[0-9a-f]{12}")


class StrayTempWarning(UserWarning):
    """A ``.tmp-*`` prefix under ``checkpoints/`` whose name is not one a writer makes; it was ignored."""


def tmp_final(name: str) -> str | None:
    """The ``step_*`` name a temporary prefix publishes, or None (with a warning) for any other ``.tmp-*`` name.

    Args:
        name: a name listed under ``checkpoints/``.

    Returns:
        ``step_X`` for ``.tmp-step_X-<12 hex digits>``; None for names that do not start with ``.tmp-``
        and, with a :class:`StrayTempWarning`, for malformed ones (``.tmp--abc``, ``.tmp-..-abc``).
    """
    if not name.startswith(TMP_PREFIX):
        return None
    m = _TMP_RE.fullmatch(name)
    if m is None:
        warnings.warn(f"ignoring {name!r} under checkpoints/: not a name a distmeta writer makes "
                      f"(.tmp-step_<digits>-<12 hex digits>); remove it if nothing of yours uses it",
                      StrayTempWarning, stacklevel=2)
        return None
    return m.group(1)


def _install(ck: Store, tmp: str, final: str, files: list[str], check: Callable[[], None]) -> None:
    """Steps 2 and 3: clear ``final`` (manifest first), copy ``tmp``'s files in, the manifest last."""
    for name in (MANIFEST_FILE, None):
        check()
        ck.delete_file(f"{final}/{name}") if name else ck.delete_dir(final)
    for name in [*files, MANIFEST_FILE]:
        check()
        ck.copy(f"{tmp}/{name}", f"{final}/{name}")


def resume_candidates(ck: Store) -> list[tuple[str, str]]:
    """What a new writer may resume from under ``ck`` (read only): ``(name, step name)``, newest step first.

    Every ``step_*`` prefix, and every complete, strictly named temporary prefix (a publication its
    writer did not finish); at one step the committed prefix comes before the temporary one.
    """
    found = []
    for name, (kind, _) in ck.listdir().items():
        if kind != "dir":
            continue
        final = step_of(name) is not None and name or tmp_final(name)
        if final:
            found.append((-(step_of(final) or 0), name.startswith(TMP_PREFIX), name, final))
    return [(name, final) for *_, name, final in sorted(found)]


def _prune(ck: Store, saved_step: int, keep: int, check: Callable[[], None]) -> None:
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
            check()
            ck.delete_dir(name)


def _no_check() -> None:
    return None


def publish_checkpoint(gen: Store, local_step: Path, keep: int, check_lease: Callable[[], None] | None = None) -> str:
    """Publish a verified local step directory to ``gen``'s ``checkpoints/`` and prune to ``keep``.

    Args:
        gen: the writer's own generation (:attr:`distmeta.persistence.lease.Lease.generation`), or a run
            directory that has no lease.
        local_step: a ``step_*`` directory that :func:`verify_checkpoint` accepts.
        keep: how many valid checkpoints to keep.
        check_lease: called before every upload, copy and delete; raises once this process no longer
            holds the run (what was already sent stays under its generation, which readers then ignore).

    Returns:
        The URI of the published step prefix.

    Raises:
        CheckpointError: the storage failed (naming the URI); earlier checkpoints are untouched.
    """
    check = check_lease or _no_check
    verify_checkpoint(local_step)
    ck = gen.child(CHECKPOINTS_DIR)
    final = local_step.name
    tmp = f"{TMP_PREFIX}{final}-{uuid.uuid4().hex[:12]}"
    files = manifest_order(_read_manifest(local_step)["files"])
    try:
        for name in [*files, MANIFEST_FILE]:
            check()
            ck.upload(local_step / name, f"{tmp}/{name}")
        _install(ck, tmp, final, files, check)
        for name, (kind, _) in ck.listdir().items():  # this one, and any an earlier failure of this writer left
            if kind == "dir" and name.startswith(TMP_PREFIX):
                check()
                ck.delete_dir(name)
        step = step_of(final)
        if step is not None:
            _prune(ck, step, keep, check)
    except StorageError as e:
        check()  # a writer taken over mid-publication (its files swept) says so, not "storage failed"
        raise CheckpointError(f"could not publish checkpoint {final} to {ck.uri}: {e}") from e
    return ck.uri_of(final)


def _sha_ok(path: Path, entry: dict[str, Any]) -> bool:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest() == entry["sha256"]


def _fetch_one(ck: Store, name: str, dest_dir: Path, final: str | None = None) -> Path:
    """Download remote checkpoint ``name`` into ``dest_dir/<final or name>`` and verify it there; reuse a cached copy."""
    files = _manifest_files(ck, name)
    raw_manifest = ck.read_bytes(f"{name}/{MANIFEST_FILE}")
    dest = dest_dir / (final or name)
    if (dest / MANIFEST_FILE).is_file() and (dest / MANIFEST_FILE).read_bytes() == raw_manifest:
        try:
            verify_checkpoint(dest)
            return dest  # already here, same manifest, every checksum matches
        except CheckpointError:
            pass
    tmp = dest_dir / f"{TMP_PREFIX}fetch-{dest.name}-{os.getpid()}"
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


def _generation_checkpoints(run_uri: str) -> Store:
    """``checkpoints/`` of the generation readers honour in run ``run_uri`` (:func:`current_generation`)."""
    from distmeta.persistence.lease import current_generation

    return current_generation(open_store(run_uri, check=False)).child(CHECKPOINTS_DIR)


def _locate(uri: str) -> tuple[Store, str | None, str]:
    """``(checkpoints store, one step name or None, run URI)`` for a run, ``checkpoints/`` or step URI.

    ``RUN/checkpoints[/step_X]`` of a run written in generations means that of its current generation.
    """
    store = open_store(uri)
    if store.exists(MANIFEST_FILE) or step_of(uri_name(uri)) is not None:
        parent = _parent(uri)
        run = _parent(parent) if uri_name(parent) == CHECKPOINTS_DIR else parent
        if not store.exists(MANIFEST_FILE) and uri_name(parent) == CHECKPOINTS_DIR:
            return _generation_checkpoints(run), uri_name(uri), run
        return open_store(parent, check=False), uri_name(uri), run
    if uri_name(uri) == CHECKPOINTS_DIR and store.info(CHECKPOINTS_DIR)[0] != "dir":
        return (store if store.listdir() else _generation_checkpoints(_parent(uri))), None, _parent(uri)
    return _generation_checkpoints(uri), None, uri


def fetch_newest(ck: Store, candidates: list[tuple[str, str]], dest: Path) -> Path:
    """Fetch the first usable of ``candidates`` (``(name under ck, local step name)``, newest first) into ``dest``.

    Unusable ones are skipped with a :class:`CheckpointFallbackWarning`.

    Raises:
        CheckpointError: none is usable (listing each one tried and why).
    """
    if not candidates:
        raise CheckpointError(f"no checkpoints under {ck.uri} (expected step_* prefixes)")
    tried: list[str] = []
    for name, final in candidates:
        try:
            return _fetch_one(ck, name, dest, final)
        except CheckpointError as e:
            tried.append(f"  {ck.uri_of(name)}: {e}")
            warnings.warn(f"skipping unusable checkpoint {ck.uri_of(name)}: {e}; trying the previous one",
                          CheckpointFallbackWarning, stacklevel=3)
    raise CheckpointError(f"no valid checkpoint under {ck.uri}; tried:\n" + "\n".join(tried))


def fetch_checkpoint(uri: str, dest: Path | None = None) -> Path:
    """Download the newest valid checkpoint of a remote run (or the one step named) and return its local path.

    Damaged newer checkpoints are skipped with a :class:`CheckpointFallbackWarning`. Files go to
    ``dest`` (default: ``checkpoints/`` of the run's reader cache, see
    :func:`~distmeta.persistence.storage.cache_dir`); a copy already there with the same manifest is
    reused without downloading. A run written in generations is read from its current one.

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
    return fetch_newest(ck, [(n, n) for n in reversed(remote_steps(ck))], dest)
