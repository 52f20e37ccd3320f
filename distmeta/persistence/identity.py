"""Who holds a lease, in terms that survive a shared hostname: boot id, pid namespace, pid and its start time.

A hostname is not an identity (containers and cloned machines share them), and a pid alone is
reused. A holder's process is judged gone from here only when it ran on this same boot and pid
namespace and its pid no longer runs with the same start time (:func:`gone_here`); anywhere else
the caller must wait for the holder's lease to go stale.
"""
from __future__ import annotations

import os
import socket
import sys
from datetime import datetime, timezone
from typing import Any

from distmeta.persistence.uris import redact_text


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (field 22 of /proc/<pid>/stat), or None."""
    stat = _read(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[1].split()[19] if stat and ")" in stat else None


def _pid_ns() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def identity() -> dict[str, Any]:
    """This process as a lease holder: pid and its start time, boot id and pid namespace, host, uid, command."""
    return {"pid": os.getpid(), "start": _start_ticks(os.getpid()), "boot_id": _read("/proc/sys/kernel/random/boot_id"),
            "pid_ns": _pid_ns(), "host": socket.gethostname(), "uid": os.getuid(),
            "since": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": redact_text(" ".join(sys.argv))[:500]}  # the lease is readable by all who can list the run


def gone_here(info: dict[str, Any]) -> bool:
    """Whether holder ``info`` ran on this boot, in this pid namespace, and that process no longer runs."""
    mine = identity()
    if not info.get("boot_id") or info.get("boot_id") != mine["boot_id"] or info.get("pid_ns") != mine["pid_ns"]:
        return False  # another machine, boot or container: its pid means nothing here
    pid = info.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    started = _start_ticks(pid)
    recorded = info.get("start")
    return started is None or (recorded is not None and started != recorded)  # gone, or the pid names another now


def describe(info: dict[str, Any]) -> str:
    """A lease holder in words: pid, host, uid, since and command."""
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')} (uid {info.get('uid', '?')}), "
            f"started {info.get('since', '?')}: {info.get('command', '?')}")
