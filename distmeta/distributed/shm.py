"""Shared-memory slabs: how meta-parameters and gradients skip Ray's object store on one node.

Every object Ray moves through its store costs milliseconds whatever its size, which for
a mid-sized model is a large share of a step. When an actor shares the driver's node,
the driver instead writes the step's meta-parameters into a file in ``/dev/shm`` that
every such actor maps, and each actor writes its packed gradients
(:func:`distmeta.distributed.wire.pack_into`) into its own region of another; only small
headers travel through Ray.

``/dev/shm`` is shared by every user of the machine, so:

* slabs live in a per-user directory ``/dev/shm/distmeta-<uid>``, mode 0700, whose owner
  and mode are checked before use (a directory planted by someone else, or a link, is
  refused and Ray's object store carries everything instead);
* each file is created with ``O_CREAT | O_EXCL | O_NOFOLLOW``, mode 0600;
* the driver that owns a file holds an exclusive ``flock`` on it for the file's life.
  That lock, not a PID in the name (PIDs repeat across PID namespaces: containers,
  Tune trials), is what says the owner is alive; the orphan sweep removes only files
  whose lock it can take, owned by this user, and walks past anything else with a warning;
* the file's space is reserved up front (``posix_fallocate``): a full ``/dev/shm``
  (Docker gives containers 64 MiB) is then an ``ENOSPC`` at creation, answered by
  falling back to Ray's object store, instead of a ``SIGBUS`` that kills the driver
  when it first writes a page the filesystem cannot supply.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import stat
import uuid
import warnings
import weakref
from pathlib import Path

import numpy as np

SHM_DIR = Path("/dev/shm")
_swept: set[str] = set()  # slab directories this process has swept once

log = logging.getLogger(__name__)


class ShmUnavailable(OSError):
    """Shared memory cannot be used safely or at all here (unsafe directory, no space); callers use Ray's store."""


class ShmWarning(RuntimeWarning):
    """Something in the shared-memory path was skipped or refused; the run goes on (possibly through Ray's store)."""


def slab_dir() -> Path:
    """This user's slab directory ``SHM_DIR/distmeta-<uid>``: created 0700, else checked to be ours and private.

    Raises :class:`ShmUnavailable` when it is a link, not a directory, owned by another
    user, or open to others and not ours to fix.
    """
    uid = os.getuid()
    path = SHM_DIR / f"distmeta-{uid}"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise ShmUnavailable(e.errno, f"cannot create the shared-memory directory {path}: {e.strerror}") from e
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise ShmUnavailable(errno.EEXIST, f"{path} is not a directory (a link or file planted there?); not using it")
    if st.st_uid != uid:
        raise ShmUnavailable(errno.EPERM, f"{path} belongs to uid {st.st_uid}, not to this user (uid {uid}); not using it")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700, follow_symlinks=False)
    return path


def shared_memory_available() -> bool:
    """Whether this machine has a usable ``/dev/shm`` (Linux) and a private slab directory in it.

    When it does not, Ray's object store carries everything; a directory that looks
    tampered with is reported with a :class:`ShmWarning`.
    """
    if not (SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK)):
        return False
    try:
        slab_dir()
    except ShmUnavailable as e:
        warnings.warn(f"shared memory disabled: {e.strerror}", ShmWarning, stacklevel=2)
        return False
    return True


def _try_lock(fd: int) -> bool:
    """Take an exclusive flock without waiting; False when another open file (a live driver) holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def sweep_orphans(directory: Path | None = None) -> list[str]:
    """Remove slab files whose owning driver is gone (it was killed before unlinking them); their paths.

    Only regular files owned by this user whose ``flock`` nobody holds are removed.
    Anything else found (a directory, another user's file, a link, a file it cannot
    open) is left in place with a :class:`ShmWarning`; the sweep never raises for it.
    """
    directory = directory or slab_dir()
    uid, removed = os.getuid(), []
    for entry in sorted(directory.iterdir()):
        try:
            st = os.lstat(entry)
            if not stat.S_ISREG(st.st_mode):
                kind = "link" if stat.S_ISLNK(st.st_mode) else "directory" if stat.S_ISDIR(st.st_mode) else "special file"
                raise ShmUnavailable(errno.EINVAL, f"a {kind}, not a slab file")
            if st.st_uid != uid:
                raise ShmUnavailable(errno.EPERM, f"owned by uid {st.st_uid}, not this user")
            fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                fst = os.fstat(fd)
                if (fst.st_ino, fst.st_dev) != (st.st_ino, st.st_dev):
                    raise ShmUnavailable(errno.EAGAIN, "replaced while being checked")
                if not _try_lock(fd):
                    continue  # a live driver's slab
                os.unlink(entry)
                removed.append(str(entry))
            finally:
                os.close(fd)
        except OSError as e:
            warnings.warn(f"shared-memory sweep: left {entry} alone: {e.strerror or e}", ShmWarning, stacklevel=2)
    return removed


def _release(fd: int, path: str) -> None:
    """Unlink a slab file, then close (and so unlock) its descriptor: unlinked first, so no sweep races us."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


class Slab:
    """A driver-owned file in the slab directory mapped as a flat uint8 array; a new, larger file when it must grow.

    The path changes whenever the size does, so an actor's cached map of a path is never
    stale. The driver holds the file's flock until :meth:`close` (or the Slab is
    collected), which unlinks it.
    """

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.path: str | None = None
        self.array = np.empty(0, dtype=np.uint8)
        self._finalizer: weakref.finalize | None = None

    def ensure(self, nbytes: int) -> np.ndarray:
        """The mapped array, first replaced by one of at least ``nbytes`` (rounded up to 1 MiB) if smaller.

        Raises :class:`ShmUnavailable` when the directory is unsafe or the space cannot
        be reserved (``ENOSPC``): nothing is left behind, and the caller uses Ray's store.
        """
        if nbytes > self.array.nbytes:
            directory = slab_dir()
            if str(directory) not in _swept:
                _swept.add(str(directory))
                sweep_orphans(directory)
            self.close()
            size = -(-max(nbytes, 1) // 2**20) * 2**20
            path = str(directory / f"{uuid.uuid4().hex}-{self.tag}")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # new and private: never contended
                os.posix_fallocate(fd, 0, size)
                array = np.frombuffer(mmap.mmap(fd, size), dtype=np.uint8)
            except OSError as e:
                _release(fd, path)
                raise ShmUnavailable(e.errno, f"cannot reserve {size} bytes of shared memory in {directory}: "
                                              f"{e.strerror or e}") from e
            self._finalizer = weakref.finalize(self, _release, fd, path)
            self.path, self.array = path, array
        return self.array

    def close(self) -> None:
        """Unlink the file and drop the lock (actors' maps stay valid until they drop them)."""
        self.array = np.empty(0, dtype=np.uint8)
        self.path = None
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None


class SlabMaps:
    """An actor's maps of the driver's slabs, by path, the ``keep`` most recently used kept.

    A map is kept across steps on purpose: mapping a file anew faults in every page on
    first touch, and the driver alternates two sets of slabs. Only regular files of this
    user's slab directory are mapped (the path comes in a request).
    """

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        self._maps: dict[str, np.ndarray] = {}

    def get(self, path: str) -> np.ndarray:
        array = self._maps.pop(path, None)
        if array is None:
            array = _map_existing(path)
        self._maps[path] = array  # most recent last
        while len(self._maps) > self.keep:
            del self._maps[next(iter(self._maps))]
        return array


def _map_existing(path: str) -> np.ndarray:
    """Map a slab another process of this user created: inside the slab directory, not a link, owned by us."""
    if Path(path).parent != slab_dir():
        raise ShmUnavailable(errno.EPERM, f"{path} is not in this user's slab directory {slab_dir()}")
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            raise ShmUnavailable(errno.EPERM, f"{path} is not a slab file of this user")
        return np.frombuffer(mmap.mmap(fd, st.st_size), dtype=np.uint8)
    finally:
        os.close(fd)
