"""Removes a box whose owner died without closing it (SIGKILL, a crashed test run).

Started by :class:`clusterbox.NetCluster` in a session of its own; it checks once a
second that the owner process (pid plus its start time, so a reused pid does not fool it)
is alive. When the owner is gone it removes the box's namespaces (killing every process in
them) and its folder; when the box is gone already (closed normally) it just exits.

    python -m clusterbox.reaper TAG OWNER_PID OWNER_START FOLDER
"""
from __future__ import annotations

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
