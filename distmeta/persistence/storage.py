"""Where a run's files live: a local directory, or a ``pyarrow.fs`` URI (``s3://``, ``gs://``, ``hdfs://``).

``run.dir`` and Tune's ``storage_path`` take either. A local path (or a ``file://`` URI,
which means the same path) keeps the local code path: fsync, rename, flock. Any other URI
is a :class:`Store`: the few operations a run needs (read, write, list, copy, delete) on
``pyarrow.fs.FileSystem.from_uri``, with paths relative to the URI.

Credentials come from the environment, the way each client reads them (for S3:
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``,
instance roles; ``AWS_ENDPOINT_URL`` for an S3-compatible server). A URI may carry only the
query keys of its scheme's allowlist and no user info but Azure's ``container@account``
(:func:`~distmeta.persistence.uris.check_uri`): it ends up in ``config.yaml``, checkpoints, the
lease and logs. Every message shows it through :func:`~distmeta.persistence.uris.redact_uri`.

What a remote run works on lives in a local cache (:func:`cache_dir`): ``$DISTMETA_CACHE_DIR``,
else ``$XDG_CACHE_HOME/distmeta``, else ``~/.cache/distmeta``.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from distmeta.persistence.uris import StorageError, check_uri, redact_text, redact_uri

_CHUNK = 8 << 20
_SERVER_COPY_MAX = 5 * 1024**3  # S3 CopyObject takes at most 5 GiB in one request


def is_remote(path: Any) -> bool:
    """Whether ``path`` is a URI of a non-local filesystem (``s3://...``); ``file://`` and plain paths are local."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def local_path(path: str | Path) -> Path:
    """A local path for a plain path or a ``file://`` URI (``file:///data/run`` -> ``/data/run``)."""
    text = str(path)
    if text.startswith("file://"):
        return Path(unquote(urlsplit(text).path))
    return Path(text)


def join_uri(uri: str, *parts: str) -> str:
    """``uri`` with ``parts`` appended as path components (the query string, if any, stays at the end)."""
    base, sep, query = uri.partition("?")
    tail = "/".join(p.strip("/") for p in parts if p)
    joined = f"{base.rstrip('/')}/{tail}" if tail else base
    return f"{joined}{sep}{query}"


def uri_name(uri: str) -> str:
    """The last path component of a URI (``s3://b/runs/a?x=1`` -> ``a``)."""
    return uri.partition("?")[0].rstrip("/").rsplit("/", 1)[-1]


class Store:
    """A directory on a ``pyarrow.fs`` filesystem; every ``rel`` argument is a path relative to it.

    Args:
        uri: e.g. ``s3://bucket/runs/a`` (``?endpoint_override=host:port&scheme=http`` for a test server).
    """

    def __init__(self, uri: str) -> None:
        import pyarrow.fs as pafs

        check_uri(uri)  # before the URI is used, stored or printed
        self.uri = uri.rstrip("/") if "?" not in uri else uri
        try:
            self.fs, root = pafs.FileSystem.from_uri(uri)
        except (ValueError, OSError, TypeError) as e:
            raise StorageError(f"cannot open storage {redact_uri(uri)}: {redact_text(str(e))}") from None
        self.root = root.rstrip("/")

    # ------------------------------------------------------------------ paths
    def path(self, rel: str = "") -> str:
        """The filesystem path of ``rel``."""
        return f"{self.root}/{rel.strip('/')}" if rel.strip("/") else self.root

    def uri_of(self, rel: str = "") -> str:
        """The URI of ``rel``, for opening it again (messages show it through :func:`redact_uri`)."""
        return join_uri(self.uri, rel)

    @classmethod
    def _at(cls, fs: Any, root: str, uri: str) -> "Store":
        store = object.__new__(cls)
        store.fs, store.root, store.uri = fs, root, uri
        return store

    def child(self, rel: str) -> "Store":
        """The store of subdirectory ``rel`` (same filesystem object, no new connection)."""
        return Store._at(self.fs, self.path(rel), self.uri_of(rel))

    def _fail(self, what: str, rel: str, e: Exception) -> StorageError:
        return StorageError(f"cannot {what} {redact_uri(self.uri_of(rel))}: {redact_text(str(e))}")

    # ------------------------------------------------------------------ reading
    def info(self, rel: str = "") -> tuple[str, int | None]:
        """``("file" | "dir" | "missing", size)`` of ``rel``."""
        import pyarrow.fs as pafs

        try:
            fi = self.fs.get_file_info(self.path(rel))
        except OSError as e:
            raise self._fail("look up", rel, e) from e
        kind = {pafs.FileType.File: "file", pafs.FileType.Directory: "dir"}.get(fi.type, "missing")
        return kind, fi.size if kind == "file" else None

    def exists(self, rel: str) -> bool:
        """Whether ``rel`` is a file."""
        return self.info(rel)[0] == "file"

    def read_bytes(self, rel: str) -> bytes:
        """The whole content of file ``rel``."""
        try:
            with self.fs.open_input_stream(self.path(rel)) as f:
                return f.read()
        except OSError as e:
            raise self._fail("read", rel, e) from e

    def listdir(self, rel: str = "") -> dict[str, tuple[str, int | None]]:
        """The entries directly under ``rel``: name -> (kind, size); empty when it does not exist."""
        import pyarrow.fs as pafs

        base = self.path(rel)
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True, recursive=False))
        except OSError as e:
            raise self._fail("list", rel, e) from e
        out: dict[str, tuple[str, int | None]] = {}
        for fi in infos:
            kind = "dir" if fi.type == pafs.FileType.Directory else "file"
            out[fi.path[len(base):].strip("/")] = (kind, fi.size if kind == "file" else None)
        return out

    def walk(self, rel: str = "") -> list[str]:
        """Every file under ``rel``, as paths relative to ``rel``, sorted."""
        import pyarrow.fs as pafs

        base = self.path(rel)
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True, recursive=True))
        except OSError as e:
            raise self._fail("list", rel, e) from e
        return sorted(fi.path[len(base):].strip("/") for fi in infos if fi.type == pafs.FileType.File)

    def download(self, rel: str, dest: Path) -> None:
        """Copy file ``rel`` to local ``dest`` (created with mode 0600, fsynced)."""
        try:
            with self.fs.open_input_stream(self.path(rel)) as src:
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
        except OSError as e:
            raise self._fail("download", rel, e) from e

    # ------------------------------------------------------------------ writing
    def write_bytes(self, rel: str, data: bytes) -> None:
        """Create or replace file ``rel`` with ``data`` (one object: readers see the old or the new one)."""
        try:
            with self.fs.open_output_stream(self.path(rel)) as f:
                f.write(data)
        except OSError as e:
            raise self._fail("write", rel, e) from e

    def upload(self, src: Path, rel: str) -> None:
        """Create or replace file ``rel`` with the content of local file ``src``."""
        try:
            with open(src, "rb") as f, self.fs.open_output_stream(self.path(rel)) as out:
                while chunk := f.read(_CHUNK):
                    out.write(chunk)
        except OSError as e:
            raise self._fail("upload to", rel, e) from e

    def copy(self, src_rel: str, dst_rel: str) -> None:
        """Copy file ``src_rel`` to ``dst_rel``: server-side, or streamed for objects past S3's one-request copy limit."""
        try:
            if (self.info(src_rel)[1] or 0) < _SERVER_COPY_MAX:
                self.fs.copy_file(self.path(src_rel), self.path(dst_rel))
                return
            with self.fs.open_input_stream(self.path(src_rel)) as src, \
                    self.fs.open_output_stream(self.path(dst_rel)) as out:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
        except OSError as e:
            raise self._fail("copy", src_rel, e) from e

    def delete_file(self, rel: str) -> None:
        """Delete file ``rel``; nothing if it is gone."""
        try:
            if self.exists(rel):
                self.fs.delete_file(self.path(rel))
        except OSError as e:
            raise self._fail("delete", rel, e) from e

    def delete_dir(self, rel: str) -> None:
        """Delete everything under ``rel``; nothing if it is gone."""
        try:
            if self.info(rel)[0] == "dir":
                self.fs.delete_dir(self.path(rel))
        except OSError as e:
            raise self._fail("delete", rel, e) from e


def _bucket_problem(store: Store) -> str | None:
    """Why the storage cannot be used, or None: an object store's bucket (first path component) must exist."""
    bucketed = urlsplit(store.uri).scheme in ("s3", "gs", "gcs")
    bucket = store.root.split("/", 1)[0] if bucketed else store.root
    try:
        kind = Store._at(store.fs, bucket, store.uri).info("")[0]
    except StorageError as e:
        return f"it is unreachable ({e.__cause__ or e})"
    if bucketed and kind != "dir":
        return f"its bucket {bucket!r} does not exist, or these credentials cannot see it"
    return None


def open_store(uri: str, check: bool = True) -> Store:
    """A :class:`Store` for ``uri``, checked to be reachable with a bucket that exists.

    Args:
        uri: a remote URI (:func:`is_remote`).
        check: look the bucket up now (one request), so a typo fails before Ray starts.

    Returns:
        The store.

    Raises:
        StorageError: the URI is malformed, carries credentials (:func:`~distmeta.persistence.uris.check_uri`),
            or its bucket is missing or unreachable.
    """
    store = Store(uri)
    if check:
        problem = _bucket_problem(store)
        if problem is not None:
            raise StorageError(f"storage {redact_uri(uri)}: {redact_text(problem)}. Check the URI, the credentials "
                               f"in the environment "
                               f"(AWS_* / GOOGLE_APPLICATION_CREDENTIALS) and AWS_ENDPOINT_URL for an S3-compatible "
                               f"server")
    return store


def cache_root() -> Path:
    """The local cache of remote runs: ``$DISTMETA_CACHE_DIR`` or ``$XDG_CACHE_HOME/distmeta`` or ``~/.cache/distmeta``."""
    env = os.environ.get("DISTMETA_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "distmeta"


def cache_dir(uri: str, kind: str = "runs") -> Path:
    """The private local directory for remote run ``uri``: ``<cache_root>/<kind>/<name>-<hash>``.

    ``kind``: ``runs`` for the run's writer (the trainer works there), ``fetched`` for readers
    (``distmeta eval --checkpoint URI``), so a reader never touches a live writer's files.
    Created with mode 0700 and checked private (:func:`distmeta.security.check_private_dir`):
    checkpoints are read back from it.
    """
    from distmeta.security import check_private_dir

    key = hashlib.sha256(uri.partition("?")[0].rstrip("/").encode("utf-8")).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", uri_name(uri))[:60] or "run"
    path = cache_root() / kind / f"{name}-{key}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private_dir(path, "distmeta cache directory")
    return path


__all__ = ["Store", "StorageError", "open_store", "is_remote", "local_path", "join_uri", "uri_name",
           "cache_root", "cache_dir", "check_uri", "redact_uri", "redact_text"]
