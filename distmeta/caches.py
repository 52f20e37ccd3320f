"""What every on-disk cache of distmeta (token ids, trained tokenizers, frozen-prefix states) shares.

A cache is read back as if distmeta had computed it, so a wrong one silently changes a run
(a planted token cache with permuted rows, a prefix cache of an older model config). Hence:

* **Private roots** (:func:`prepare_root`): the directory passes the same check as ``run.dir``
  (:func:`distmeta.security.check_private_dir`: owned by this user or root, not writable
  by others) and is tightened to 0700; entries are sealed 0600 files in 0700 folders
  (:func:`seal`), since hidden states of private text are close to invertible.
* **Verified entries** (:func:`write_manifest`, :func:`manifest_problem`): each entry's
  ``meta.json`` records its key, what it was built from (content hashes, shapes, row counts,
  model config, library versions, dtype) and the size and SHA-256 of each file. An entry that
  does not match is discarded with a :class:`CacheMismatchWarning` and rebuilt, never used.
* **Safe locks** (:func:`locked`): opened with ``O_NOFOLLOW`` and ``O_CREAT`` without truncation,
  so a planted symlink cannot make distmeta truncate another file.
* **Builders' leftovers** (:func:`sweep_leftovers`): a builder works in ``.<key>.tmp<pid>``;
  one whose process is dead is removed the next time the root is prepared.

Compute-level leaf: imports no runtime, Ray or storage module.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from distmeta.errors import DistmetaError

MANIFEST = "meta.json"
_LEFTOVER = re.compile(r"\..+\.tmp(\d+)")
_CHUNK = 1 << 22
_VERIFIED: dict[tuple, bool] = {}  # per process: entries whose files were hashed already (path, inode, size, mtime)


class CacheMismatchWarning(UserWarning):
    """A cache entry did not match what it claims to be built from (or its files); it is rebuilt."""


def prepare_root(root: str | Path, what: str) -> Path:
    """Create ``root`` (0700), refuse it when another user could write there, tighten it, sweep dead builders.

    Args:
        root: the cache directory (``tokens/``, ``tokenizers/``, ``prefix/`` or ``model.cache_dir``).
        what: how messages name it ("token cache").
    Returns:
        ``root`` as a Path, existing, private.
    Raises:
        DistmetaError: ``root`` or a directory above it belongs to another user or is writable by others.
    """
    from distmeta.security import check_private_dir

    path = Path(root).expanduser()
    check_private_dir(path, what)  # before creating anything inside a directory someone else controls
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private_dir(path, what)
    st = path.stat()
    if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077:
        path.chmod(0o700)  # a cache of private text is not for other users to read (root's own dirs are left)
    sweep_leftovers(path)
    return path


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tmp_dir(root: Path, key: str) -> Path:
    """A fresh private build folder ``root/.<key>.tmp<pid>`` (a stale one of this pid is replaced)."""
    tmp = root / f".{key}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700)
    return tmp


def sweep_leftovers(root: Path) -> list[Path]:
    """Remove ``.<key>.tmp<pid>`` entries of ``root`` whose builder process is dead; returns what was removed."""
    removed = []
    try:
        entries = list(Path(root).iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _LEFTOVER.fullmatch(entry.name)
        if m is None or int(m.group(1)) == os.getpid() or pid_alive(int(m.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed.append(entry)
    return removed


@contextlib.contextmanager
def locked(path: Path) -> Iterator[int]:
    """Hold an exclusive ``flock`` on ``path`` (created 0600 if missing, never truncated, never through a symlink).

    Raises:
        DistmetaError: ``path`` is a symlink or not a regular file.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    except OSError as err:
        if os.path.islink(path):
            raise DistmetaError(f"cache lock {str(path)!r} is a symlink: refusing to follow it (remove it)") from None
        raise DistmetaError(f"cache lock {str(path)!r} cannot be opened: {err}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DistmetaError(f"cache lock {str(path)!r} is not a regular file (remove it)")
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def seal(path: Path) -> None:
    """Make ``path`` (a folder, recursively, or a file) private: folders 0700, files 0600."""
    path = Path(path)
    if path.is_dir():
        for dirpath, _, files in os.walk(path):
            os.chmod(dirpath, 0o700)
            for name in files:
                os.chmod(os.path.join(dirpath, name), 0o600)
    else:
        os.chmod(path, 0o600)


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def library_versions(*names: str) -> dict[str, str]:
    """Installed versions of ``names`` (``"absent"`` for a missing one), read from package metadata."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def write_manifest(entry: Path, key: str, built_from: dict[str, Any], files: list[str], **extra: Any) -> None:
    """Write ``entry/meta.json``: the key, ``built_from`` (must be JSON), and each file's size and SHA-256."""
    record = {"key": key, "built_from": built_from, "created": time.time(), **extra,
              "files": {name: {"bytes": (entry / name).stat().st_size, "sha256": file_digest(entry / name)}
                        for name in files}}
    (entry / MANIFEST).write_text(json.dumps(record, sort_keys=True))


def read_manifest(entry: Path) -> dict[str, Any] | None:
    """``entry/meta.json`` as a dict, or None when it is missing or not a JSON object."""
    try:
        record = json.loads((entry / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _differences(recorded: Any, expected: dict[str, Any]) -> list[str]:
    if not isinstance(recorded, dict):
        return ["its record of what it was built from"]
    return sorted(k for k in set(expected) | set(recorded) if recorded.get(k) != expected.get(k))


def manifest_problem(entry: Path, key: str, built_from: dict[str, Any] | None = None) -> str | None:
    """Why ``entry`` cannot be used as cache ``key`` built from ``built_from``; None when it matches.

    Checks the recorded key, the recorded inputs (when ``built_from`` is given) and every
    listed file's size and SHA-256 (hashed once per process for an unchanged entry).
    """
    record = read_manifest(entry)
    if record is None:
        return f"{MANIFEST} is missing or unreadable"
    if record.get("key") != key:
        return f"it records key {record.get('key')!r}, not {key!r}"
    if built_from is not None:
        diff = _differences(record.get("built_from"), json.loads(json.dumps(built_from)))
        if diff:
            return f"it was built from other inputs ({', '.join(diff)} differ)"
    files = record.get("files")
    if not isinstance(files, dict) or not files:
        return "it records no file checksums (an older or foreign cache)"
    for name, want in files.items():
        path = entry / name
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            return f"its file {name} is missing"
        if not stat.S_ISREG(st.st_mode) or not isinstance(want, dict) or st.st_size != want.get("bytes"):
            return f"its file {name} is not the recorded {want.get('bytes') if isinstance(want, dict) else '?'} bytes"
        seen = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, want.get("sha256"))
        if seen not in _VERIFIED:
            if file_digest(path) != want.get("sha256"):
                return f"its file {name} does not match its recorded SHA-256"
            _VERIFIED[seen] = True
    return None


def discard(entry: Path, reason: str, what: str) -> None:
    """Warn that cache ``entry`` is not used (``reason``) and remove it (renamed aside first: atomic for readers)."""
    warnings.warn(f"{what} {entry} is not used and will be rebuilt: {reason}", CacheMismatchWarning, stacklevel=3)
    aside = entry.parent / f".{entry.name}.tmp{os.getpid()}"
    shutil.rmtree(aside, ignore_errors=True)
    try:
        os.replace(entry, aside)
    except OSError:
        return  # another process removed or replaced it already
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)


def mark_used(path: Path) -> None:
    """Record a use of a cache entry (its modification time), so ``distmeta cache prune`` keeps recent ones."""
    with contextlib.suppress(OSError):
        os.utime(path)


__all__ = ["CacheMismatchWarning", "MANIFEST", "discard", "file_digest", "library_versions", "locked",
           "manifest_problem", "mark_used", "pid_alive", "prepare_root", "read_manifest", "seal", "sweep_leftovers",
           "tmp_dir", "write_manifest"]
