"""One writer per run directory on an object store, fenced by generations rather than trusted to stop.

An object store has no ``flock`` and, through ``pyarrow.fs``, no compare-and-swap. A writer that
pauses past its lease (SIGSTOP, a GC pause, a sleeping laptop, a stuck PUT) and then resumes
cannot be stopped from sending one more request, so the design makes such a late request harmless:

* each writer **claims** a generation: an object ``RUN/.distmeta-lease/<epoch>-<token>.json``,
  written once and never rewritten, with ``epoch`` one above every claim it saw;
* it writes **only under its own generation**, ``RUN/gen-<epoch>-<token>/`` (the run's files and
  ``checkpoints/``), and deletes nothing outside it except generations its claim beats;
* **readers honour only the current generation**: of the claims, the highest epoch wins (ties:
  the claim the store wrote first, then the smaller token); readers take the first claimed
  generation, in that order, that holds any file (:func:`current_generation`). A run written
  before generations existed (files directly under ``RUN/``) is read as before while it has none.

So a stale writer can only add files under its beaten generation, which no reader looks at and
the next writer sweeps. Liveness: the holder rewrites its heartbeat ``<epoch>-<token>.beat``
every ``ttl / 4`` seconds; a taker measures the heartbeat's age on the **store's clock** (the
modification time of a probe object it writes, against the heartbeat's), so a skewed local clock
neither takes a live lease nor keeps a dead one. A holder is judged gone at once only when it ran
on this same boot (boot id and pid namespace) and its pid no longer runs with the same start time;
a shared hostname proves nothing. ``DISTMETA_LEASE_TTL`` and ``DISTMETA_LEASE_SETTLE`` (seconds,
positive) change the defaults.
"""
from __future__ import annotations

import json
import math
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from distmeta.errors import RunDirError
from distmeta.persistence.identity import describe, gone_here, identity
from distmeta.persistence.storage import StorageError, Store

DEFAULT_TTL = 120.0
DEFAULT_SETTLE = 2.0
LEASE_DIR = ".distmeta-lease"
GEN_PREFIX = "gen-"
MTIME_SLACK = 1.0  # object stores report modification times in whole seconds
_CLAIM_RE = re.compile(r"(\d{8})-([0-9a-f]{12})\.json")


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise RunDirError(f"{name}={raw!r} is not a number of seconds") from None


def _positive(value: float, what: str) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise RunDirError(f"lease {what} must be a positive number of seconds, got {value!r} (DISTMETA_LEASE_"
                          f"{what.upper()}); a lease that never lives would let every writer take the run")
    return float(value)


@dataclass(frozen=True)
class Claim:
    """One writer's claim of a generation: ``epoch``, ``token`` and when the store wrote it."""

    epoch: int
    token: str
    mtime: float

    @property
    def name(self) -> str:
        return f"{self.epoch:08d}-{self.token}"

    @property
    def generation(self) -> str:
        """The directory its writer writes under: ``gen-<epoch>-<token>``."""
        return f"{GEN_PREFIX}{self.name}"

    def order(self) -> tuple[int, float, str]:
        """Sort key, winner first: highest epoch, then the earliest written, then the smaller token."""
        return (-self.epoch, self.mtime, self.token)


def list_claims(run: Store) -> list[Claim]:
    """Every well-formed claim of run ``run``, the winner first; anything else under the lease folder is ignored."""
    import pyarrow.fs as pafs

    base = run.path(LEASE_DIR)
    try:
        infos = run.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    except OSError as e:
        raise StorageError(f"cannot list {run.uri_of(LEASE_DIR)}: {e}") from e
    claims = []
    for fi in infos:
        m = _CLAIM_RE.fullmatch(fi.base_name)
        if m and fi.type == pafs.FileType.File:
            claims.append(Claim(int(m.group(1)), m.group(2), fi.mtime.timestamp() if fi.mtime else 0.0))
    return sorted(claims, key=Claim.order)


def current_generation(run: Store) -> Store:
    """Where readers read run ``run``: its first claimed generation (winner first) holding any file, else ``run``.

    ``run`` itself is the layout written before generations (files directly under the run).
    """
    for claim in list_claims(run):
        gen = run.child(claim.generation)
        if gen.listdir():  # one listing, not recursive
            return gen
    return run


def _mtime(store: Store, rel: str) -> float | None:
    try:
        fi = store.fs.get_file_info(store.path(rel))
    except OSError as e:
        raise StorageError(f"cannot look up {store.uri_of(rel)}: {e}") from e
    return fi.mtime.timestamp() if fi.mtime is not None and fi.size is not None else None


class Lease:
    """The writer lease of remote run directory ``store``: a claimed generation, kept alive by a heartbeat.

    Args:
        store: the run directory.
        ttl: seconds a holder stays live without a heartbeat (positive).
        settle: seconds between writing the claim and reading the claims back (positive).
    """

    def __init__(self, store: Store, ttl: float | None = None, settle: float | None = None) -> None:
        self.store = store
        self.ttl = _positive(ttl if ttl is not None else _env_seconds("DISTMETA_LEASE_TTL", DEFAULT_TTL), "ttl")
        self.settle = _positive(settle if settle is not None else _env_seconds("DISTMETA_LEASE_SETTLE", DEFAULT_SETTLE),
                                "settle")
        self.token = uuid.uuid4().hex[:12]
        self.held = False
        self.lost: str | None = None
        self.claim: Claim | None = None
        self._seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._info = {**identity(), "token": self.token, "ttl": self.ttl}

    @property
    def generation(self) -> Store:
        """The directory this writer writes under (only valid once acquired)."""
        assert self.claim is not None, "acquire() first"
        return self.store.child(self.claim.generation)

    def _beat(self, name: str, released: bool = False) -> None:
        self._seq += 1
        body = {**self._info, "seq": self._seq, "released": released}
        self.store.write_bytes(f"{LEASE_DIR}/{name}.beat", json.dumps(body).encode())

    def _holder(self, claim: Claim) -> tuple[dict[str, Any], str]:
        """The holder's heartbeat (or, lacking one, its claim) and the relative path it was read from."""
        for rel in (f"{LEASE_DIR}/{claim.name}.beat", f"{LEASE_DIR}/{claim.name}.json"):
            try:
                if self.store.exists(rel):
                    info = json.loads(self.store.read_bytes(rel).decode("utf-8"))
                    return (info if isinstance(info, dict) else {}), rel
            except (ValueError, UnicodeDecodeError):
                return {}, rel
        return {}, f"{LEASE_DIR}/{claim.name}.json"

    def _silent_for(self, rel: str, ttl: float) -> bool:
        """Whether ``rel`` went unwritten for more than ``ttl`` seconds, measured on the store's clock."""
        probe = f"{LEASE_DIR}/probe-{self.token}"
        self.store.write_bytes(probe, b"")
        try:
            now, then = _mtime(self.store, probe), _mtime(self.store, rel)
        finally:
            self.store.delete_file(probe)
        if then is None:
            return True
        if now is not None:
            return now - then > ttl + MTIME_SLACK
        before = self.store.read_bytes(rel)  # no modification times: watch it for a whole ttl
        time.sleep(ttl + MTIME_SLACK)
        return self.store.exists(rel) and self.store.read_bytes(rel) == before

    def _refuse_if_live(self, claim: Claim) -> None:
        info, rel = self._holder(claim)
        if info.get("released") or gone_here(info):
            return
        ttl = info.get("ttl")
        ttl = float(ttl) if isinstance(ttl, (int, float)) and math.isfinite(ttl) and ttl > 0 else self.ttl
        if self._silent_for(rel, ttl):
            return
        raise RunDirError(f"run directory {self.store.uri} is in use by another distmeta writer: {describe(info)}. Two "
                          f"writers would corrupt its checkpoints; wait for it to finish or stop it (a writer that "
                          f"died frees it once its heartbeat is {ttl:g} s old by the store's clock)")

    def acquire(self) -> None:
        """Claim the next generation, or raise RunDirError naming the live holder (or the writer that won a race)."""
        claims = list_claims(self.store)
        if claims:
            self._refuse_if_live(claims[0])
        name = f"{(claims[0].epoch if claims else 0) + 1:08d}-{self.token}"
        self._beat(name)  # the heartbeat before the claim: a claim is never seen without one
        self.store.write_bytes(f"{LEASE_DIR}/{name}.json", json.dumps({**self._info, "epoch": int(name[:8])}).encode())
        time.sleep(self.settle)
        now = list_claims(self.store)
        if not now or now[0].name != name:
            other = self._holder(now[0])[0] if now else {}
            for rel in (f"{LEASE_DIR}/{name}.json", f"{LEASE_DIR}/{name}.beat"):
                self.store.delete_file(rel)
            raise RunDirError(f"run directory {self.store.uri}: another writer took it at the same moment"
                              f"{': ' + describe(other) if other else ''}; this one stops")
        self.claim, self.held = now[0], True
        self._thread = threading.Thread(target=self._renew, name="distmeta-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                self.check()
                self._beat(self.claim.name)  # a late beat only touches this writer's own heartbeat
            except RunDirError:
                return
            except StorageError:
                continue  # a blip: the next renewal tries again, and check() reads the claims itself

    def check(self) -> None:
        """Raise RunDirError unless this writer's claim is still the winning one (read from the store now)."""
        if self.lost is None and self.claim is not None:
            claims = list_claims(self.store)
            if not claims or claims[0].name != self.claim.name:
                self.lost = (f"taken over by {describe(self._holder(claims[0])[0])} (generation "
                             f"{claims[0].generation})" if claims else "removed (its claim was deleted)")
        if self.lost is not None:
            raise RunDirError(f"run directory {self.store.uri}: this writer's lease was {self.lost}; it stops here. "
                              f"What it wrote is under its own generation {self.claim.generation if self.claim else '?'}"
                              f", which readers ignore, so the run stays the other writer's")

    def sweep(self) -> None:
        """Delete the generations and claims this writer's claim beats (a stale writer's leftovers), never newer ones."""
        assert self.claim is not None
        mine = self.claim.order()
        beaten = {c.name for c in list_claims(self.store) if c.order() > mine}
        for name in list(self.store.listdir()):
            m = re.fullmatch(GEN_PREFIX + r"(\d{8})-([0-9a-f]{12})", name)
            if m and (name[len(GEN_PREFIX):] in beaten or int(m.group(1)) < self.claim.epoch):
                self.check()
                self.store.delete_dir(name)
        for name in self.store.listdir(LEASE_DIR):  # claims and heartbeats, also one written after its claim went
            m = re.fullmatch(r"(\d{8})-([0-9a-f]{12})\.(json|beat)", name)
            if m and (name.rsplit(".", 1)[0] in beaten or int(m.group(1)) < self.claim.epoch):
                self.check()
                self.store.delete_file(f"{LEASE_DIR}/{name}")

    def release(self) -> None:
        """Stop renewing and mark the heartbeat released (the claim stays: it names the run's generation)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.held:
            self.held = False
            try:
                self.check()
                self._beat(self.claim.name, released=True)
            except (RunDirError, StorageError):
                pass  # taken over, or unreachable: the heartbeat goes stale by itself
