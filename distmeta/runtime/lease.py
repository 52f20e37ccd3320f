"""One writer per run directory on an object store, where there is no ``flock``: a renewed lease.

The lease is the object ``RUN/.distmeta.lock``: who holds it (pid, host, uid, command), a
random token and an expiry time. A writer

1. refuses to start while another holder's lease is live (not expired, and not left by a
   process on this host that is gone), naming the holder and when the lease runs out;
2. writes its own lease, waits ``settle`` seconds, and reads it back: of two writers that
   raced, only the one whose write landed last goes on, the other is refused;
3. renews the lease from a background thread every ``ttl / 4`` seconds;
4. reads the lease back before each checkpoint commit (:meth:`Lease.check`): a writer whose
   lease was taken over (it stalled past ``ttl``) stops instead of publishing;
5. deletes it on close.

So a duplicate ``--resume`` or a restarted Tune trial whose old process still runs is refused,
and a crashed writer blocks its run for at most ``ttl`` seconds (immediately free again when
the new writer runs on the same host). Object stores give no compare-and-swap through
``pyarrow.fs``, so this is safe when writers are not more than ``settle`` seconds apart between
reading and writing the lease, and clocks agree to well within ``ttl``. ``DISTMETA_LEASE_TTL``
and ``DISTMETA_LEASE_SETTLE`` (seconds) change the defaults.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from distmeta.errors import RunDirError
from distmeta.files import LOCK_FILE
from distmeta.runtime.storage import StorageError, Store

DEFAULT_TTL = 120.0
DEFAULT_SETTLE = 2.0


def _env_seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe(info: dict[str, Any]) -> str:
    """A lease holder in words: pid, host, uid, since, expiry and command."""
    expires = info.get("expires")
    left = f", lease expires {_stamp(expires)}" if isinstance(expires, (int, float)) else ""
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')} (uid {info.get('uid', '?')}), "
            f"started {info.get('since', '?')}{left}: {info.get('command', '?')}")


def _gone_here(info: dict[str, Any]) -> bool:
    """Whether the holder was a process on this host that no longer runs."""
    if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
        return False
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Lease:
    """The writer lease of remote run directory ``store``.

    Args:
        store: the run directory.
        ttl: seconds a lease stays live without renewal.
        settle: seconds between writing the lease and reading it back.
    """

    def __init__(self, store: Store, ttl: float | None = None, settle: float | None = None) -> None:
        self.store = store
        self.ttl = ttl if ttl is not None else _env_seconds("DISTMETA_LEASE_TTL", DEFAULT_TTL)
        self.settle = settle if settle is not None else _env_seconds("DISTMETA_LEASE_SETTLE", DEFAULT_SETTLE)
        self.token = uuid.uuid4().hex
        self.held = False
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._info = {"pid": os.getpid(), "host": socket.gethostname(), "uid": os.getuid(),
                      "since": _stamp(time.time()), "command": " ".join(sys.argv)[:500], "token": self.token}

    def holder(self) -> dict[str, Any] | None:
        """The lease as stored, or None when there is none (an unreadable one counts as live, held by someone)."""
        try:
            if not self.store.exists(LOCK_FILE):
                return None
            info = json.loads(self.store.read_bytes(LOCK_FILE).decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return {"expires": time.time() + self.ttl, "command": "(unreadable lease)"}
        return info if isinstance(info, dict) else {"expires": time.time() + self.ttl}

    def live_holder(self) -> dict[str, Any] | None:
        """Another writer's live lease, or None when the run is free (no lease, expired, or its holder gone)."""
        info = self.holder()
        if info is None or info.get("token") == self.token:
            return None
        expires = info.get("expires")
        if not isinstance(expires, (int, float)) or expires < time.time() or _gone_here(info):
            return None
        return info

    def _write(self) -> None:
        self.store.write_bytes(LOCK_FILE, json.dumps({**self._info, "expires": time.time() + self.ttl}).encode())

    def acquire(self) -> None:
        """Take the lease, or raise RunDirError naming the live holder (or the writer that won a race)."""
        other = self.live_holder()
        if other is not None:
            raise RunDirError(f"run directory {self.store.uri} is in use by another distmeta writer: {describe(other)}. "
                              f"Two writers would corrupt its checkpoints; wait for it to finish or stop it (a "
                              f"writer that died frees it when its lease expires)")
        self._write()
        time.sleep(self.settle)
        now = self.holder()
        if now is None or now.get("token") != self.token:
            raise RunDirError(f"run directory {self.store.uri}: another writer took it at the same moment"
                              f"{': ' + describe(now) if now else ''}; this one stops")
        self.held = True
        self._thread = threading.Thread(target=self._renew, name="distmeta-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                now = self.holder()
                if now is None or now.get("token") != self.token:
                    self.lost = f"taken over by {describe(now)}" if now else "deleted by someone else"
                    return
                self._write()
            except StorageError:
                continue  # a blip: the next renewal tries again, and check() reads the lease itself

    def check(self) -> None:
        """Raise RunDirError unless this process still holds the lease (read back from the store now)."""
        if self.lost is None:
            now = self.holder()
            if now is None or now.get("token") != self.token:
                self.lost = f"taken over by {describe(now)}" if now else "deleted by someone else"
        if self.lost is not None:
            raise RunDirError(f"run directory {self.store.uri}: this writer's lease was {self.lost}; stopped "
                              f"before publishing, so its checkpoints stay the other writer's")

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still this process's; safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.held:
            self.held = False
            try:
                now = self.holder()
                if now is not None and now.get("token") == self.token:
                    self.store.delete_file(LOCK_FILE)
            except StorageError:
                pass  # it expires by itself
