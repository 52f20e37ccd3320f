"""``distmeta cache list | prune``: what distmeta's on-disk caches hold, and freeing it.

The caches (:mod:`distmeta.caches`) live under one root (``$DISTMETA_CACHE_DIR``, else
``$XDG_CACHE_HOME/distmeta``, else ``~/.cache/distmeta``): ``tokens/`` (token ids per corpus
and tokenizer), ``tokenizers/`` (trained tokenizers) and ``prefix/`` (frozen-prefix hidden
states; ``model.cache_dir`` when a run sets one). Nothing else under the root is touched:
corpora and remote runs' local copies have their own owners.

Each entry's last use is its modification time (opening a cache marks it). ``prune`` removes
entries unused for longer than ``--older-than`` (all of them without it) and builders'
leftovers (``.<key>.tmp<pid>``) whose process is dead (and other hidden build folders, such as
an older version's, after a day); an entry whose build lock is held is kept. A process that
has an entry mapped keeps reading it after it is removed.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from distmeta import caches
from distmeta.errors import DistmetaError

KINDS = ("tokens", "tokenizers", "prefix")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
OLD_BUILD = 86400.0  # seconds after which a hidden build folder without a pid is a leftover


@dataclass
class Entry:
    """One cache entry (or a builder's leftover) on disk."""

    kind: str
    path: Path
    nbytes: int
    last_used: float
    leftover: bool = False  # a builder's temporary folder
    live: bool = False  # for a leftover: its builder is still running


def parse_age(text: str) -> float:
    """Seconds in an age such as ``30d``, ``12h``, ``90m``, ``45s``, ``2w``; a bare number is days.

    Raises:
        DistmetaError: the text is not such an age.
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    if m is None:
        raise DistmetaError(f"--older-than {text!r} is not an age such as 30d, 12h, 90m or 45s")
    return float(m.group(1)) * _UNITS[m.group(2) or "d"]


def _size(path: Path) -> int:
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def entries(root: Path, prefix_dir: Path | None = None) -> list[Entry]:
    """The entries of every cache under ``root`` (and ``prefix_dir`` in place of ``root/prefix`` when given)."""
    out = []
    for kind in KINDS:
        folder = prefix_dir if kind == "prefix" and prefix_dir is not None else root / kind
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.name.endswith(".lock") or path.is_symlink():
                continue
            m = re.fullmatch(r"\..+\.tmp(\d+)", path.name)
            hidden = path.name.startswith(".")
            with contextlib.suppress(OSError):
                used = path.lstat().st_mtime
                # .<key>.tmp<pid>: live while its builder runs; another hidden folder is an older version's
                # build folder (no pid in its name), taken for live while younger than OLD_BUILD
                live = caches.pid_alive(int(m.group(1))) if m else hidden and time.time() - used < OLD_BUILD
                out.append(Entry(kind, path, _size(path), used, leftover=hidden, live=live))
    return out


def format_table(found: list[Entry], now: float | None = None) -> str:
    """One line per entry (kind, size, days since last use, path) and a total per kind."""
    now = time.time() if now is None else now
    lines = [f"{'kind':<11}{'MiB':>10}{'unused':>10}  path"]
    for e in found:
        note = "  (a build in progress)" if e.live else "  (a killed builder's leftover)" if e.leftover else ""
        lines.append(f"{e.kind:<11}{e.nbytes / 2**20:>10.1f}{(now - e.last_used) / 86400:>9.1f}d  {e.path}{note}")
    for kind in KINDS:
        mine = [e for e in found if e.kind == kind]
        if mine:
            lines.append(f"{kind}: {len(mine)} entries, {sum(e.nbytes for e in mine) / 2**20:.1f} MiB")
    lines.append(f"total: {sum(e.nbytes for e in found) / 2**20:.1f} MiB")
    return "\n".join(lines)


@contextlib.contextmanager
def _unlocked_entry(entry: Entry) -> Iterator[bool]:
    """For a prefix entry: hold its build lock if free (yields False when a builder holds it)."""
    lock = entry.path.parent / f"{entry.path.name}.lock"
    if entry.kind != "prefix" or not lock.is_file() or lock.is_symlink():
        yield True
        return
    fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def prune(found: list[Entry], older_than: float | None = None, now: float | None = None) -> list[Entry]:
    """Remove the entries unused for more than ``older_than`` seconds (all when None) and dead builders' leftovers.

    Returns:
        The entries removed (running builders' folders and entries being built are kept).
    """
    now = time.time() if now is None else now
    removed = []
    for e in found:
        if e.live or (not e.leftover and older_than is not None and now - e.last_used <= older_than):
            continue
        with _unlocked_entry(e) as free:
            if not free:
                continue
            if e.path.is_dir():
                shutil.rmtree(e.path, ignore_errors=True)
            else:
                e.path.unlink(missing_ok=True)
        removed.append(e)
    return removed


def run(action: str, root: str | None = None, prefix_dir: str | None = None, older_than: str | None = None) -> str:
    """``distmeta cache ACTION``: the report to print.

    Args:
        action: ``list`` or ``prune``.
        root: the cache root (default as :func:`distmeta.data.icd10cm.cache_root`).
        prefix_dir: a ``model.cache_dir`` to treat as the prefix cache.
        older_than: for ``prune``, an age (:func:`parse_age`); None removes every entry.
    """
    from distmeta.data.icd10cm import cache_root

    base = Path(root).expanduser() if root else cache_root()
    found = entries(base, Path(prefix_dir).expanduser() if prefix_dir else None)
    if action == "list":
        return format_table(found) if found else f"no caches under {base}"
    if action != "prune":
        raise DistmetaError(f"distmeta cache: unknown action {action!r}; use list or prune")
    removed = prune(found, parse_age(older_than) if older_than else None)
    freed = sum(e.nbytes for e in removed) / 2**20
    kept = len(found) - len(removed)
    return f"removed {len(removed)} entries ({freed:.1f} MiB freed), kept {kept}, under {base}"


__all__ = ["Entry", "KINDS", "entries", "format_table", "parse_age", "prune", "run"]
