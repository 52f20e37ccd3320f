"""Removes a box whose owner died without closing it (SIGKILL, a crashed test run).

Started by :class:`clusterbox.NetCluster` in a session of its own; it checks once a
second that the owner process (pid plus its start time, so a reused pid does not fool it)
is alive. When the owner is gone it removes the box's namespaces (killing every process in
them) and its folder; when the box is gone already (closed normally) it just exits.

    python -m clusterbox.reaper TAG OWNER_PID OWNER_START FOLDER
"""
from __future__ import annotations

import os
import shutil
import sys
import time

from clusterbox import net


def start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (field 22 of ``/proc/<pid>/stat``), or ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def sweep_orphans() -> list[str]:
    """Remove boxes whose reaper is gone too (a machine-wide crash); returns the namespaces removed.

    A box is an orphan when none of the processes in its namespaces has a live parent outside
    them and no reaper watches it: in practice, boxes older than any live ``clusterbox.reaper``.
    """
    live_tags = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if b"clusterbox.reaper" in args and len(args) > args.index(b"clusterbox.reaper") + 1:
            live_tags.add(args[args.index(b"clusterbox.reaper") + 1].decode())
    removed: list[str] = []
    tags = {ns[2:].split("-")[0] for ns in net.namespaces() if ns.startswith("cb") and "-" in ns}
    for tag in sorted(tags - live_tags):
        try:
            removed += net.remove_box(tag)
        except (ValueError, net.NetError):
            continue
    return removed


def main(tag: str, owner: int, owner_start: str, folder: str) -> None:
    """Wait for the owner to die, then remove the box (see the module docstring)."""
    while True:
        if not net.box_namespaces(tag):
            return
        if start_time(owner) != owner_start:
            net.remove_box(tag)
            shutil.rmtree(folder, ignore_errors=True)
            return
        time.sleep(1.0)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
