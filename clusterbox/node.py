"""One node of a box: a keeper process that holds the node's network and mount namespaces.

The keeper is started with ``ip netns exec <ns> unshare --mount`` and, before it sleeps,
mounts what makes the node a machine of its own:

* ``/dev/shm``: a fresh ``tmpfs`` of the stated size (Ray's object store and distmeta's
  shared-memory slabs live there);
* ``/tmp``: the node's own folder (Ray's session files, sockets and logs);
* the home directory (``HOME``, inside its ``/tmp``): ``~/.cache`` - distmeta's, HF's -,
  ``~/.ray/auth_token``;
* the repository, its virtual environment and the interpreter's home: read-only, as an
  installed image would be, so a node can write nothing that another node would see.

The keeper also makes the node's own pid namespace (with its own ``/proc``) and hostname: on a
shared pid namespace, Ray's driver finds every node's raylet by listing processes and attaches
to the head's. Every later command on the node enters those namespaces with ``nsenter``, so
its processes are found (and killed) by network namespace.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from clusterbox import net

#: The node's home, inside its private ``/tmp`` (``/root`` holds the interpreter: it stays, read-only).
HOME = "/tmp/home"


@dataclass
class Node:
    """A running keeper and what it mounted."""

    tag: str
    name: str
    index: int
    address: str
    folder: Path  # on the host: <box>/<name>/tmp (home inside it)
    keeper: subprocess.Popen | None = None
    init: int = 0  # the keeper's child: pid 1 of the node's pid namespace, which every command enters
    env: dict[str, str] = field(default_factory=dict)

    @property
    def ns(self) -> str:
        """The node's network namespace."""
        return net.ns_name(self.tag, self.name)

    @property
    def tmp(self) -> Path:
        """The node's ``/tmp``, seen from the host."""
        return self.folder / "tmp"

    @property
    def home(self) -> Path:
        """The node's home directory, seen from the host."""
        return self.tmp / "home"


def start_keeper(node: Node, shm_bytes: int, readonly: list[str], timeout: float = 30.0) -> None:
    """Start ``node``'s keeper and wait until its mounts are in place.

    Args:
        node: the node (its namespace already made).
        shm_bytes: the size of its private ``/dev/shm``.
        readonly: host paths bind-mounted read-only into the node (the repository, the venv).
        timeout: seconds to wait for the mounts.
    """
    for sub in (node.tmp, node.home):
        sub.mkdir(parents=True, exist_ok=True)
        os.chmod(sub, 0o1777 if sub == node.tmp else 0o700)
    readonly = [p for p in readonly if os.path.isdir(p)]
    steps = [
        "set -e",
        "mount --make-rprivate /",
        f"mount -t tmpfs -o size={shm_bytes},mode=1777 tmpfs /dev/shm",
        *(f"mount --bind {shlex.quote(p)} {shlex.quote(p)} && mount -o remount,bind,ro {shlex.quote(p)}"
          for p in readonly),
        f"mount --bind {shlex.quote(str(node.tmp))} /tmp",
        f"hostname {shlex.quote(node.name)}",
        "echo ready $$",
        "exec sleep infinity",
    ]
    # Its own pid namespace (with its own /proc) and hostname too: Ray finds "the raylet on this machine" by
    # listing processes, and distmeta's lease tells machines apart by host and pid namespace.
    node.keeper = subprocess.Popen(
        ["ip", "netns", "exec", node.ns, "unshare", "--mount", "--propagation", "private", "--uts",
         "--pid", "--fork", "--mount-proc", "--", "sh", "-c", "\n".join(steps)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + timeout
    line = node.keeper.stdout.readline()  # "ready 1", or "" when the keeper died
    if not line.startswith("ready") or time.monotonic() > deadline:
        err = node.keeper.stderr.read() if node.keeper.poll() is not None else ""
        raise net.NetError(f"node {node.name}: keeper did not come up: {err.strip() or line!r}")
    children = Path(f"/proc/{node.keeper.pid}/task/{node.keeper.pid}/children").read_text().split()
    node.init = int(children[0])


def command(node: Node, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> list[str]:
    """The command line that runs ``argv`` on ``node`` (its namespaces, its environment).

    Args:
        node: a node whose keeper runs.
        argv: the command.
        env: variables over the node's own.
        cwd: working directory inside the node.

    Returns:
        An ``nsenter ... env -i ... argv`` command line.
    """
    if node.keeper is None or node.keeper.poll() is not None:
        raise net.NetError(f"node {node.name} has no running keeper")
    full = {**node.env, **(env or {})}
    assignments = [f"{k}={v}" for k, v in sorted(full.items())]
    # `env -C`, not `nsenter --wd`: nsenter opens the directory before it enters the mount namespace, so the
    # command would work in the host's (writable) view of it.
    wd = ["-C", cwd] if cwd else []
    return ["nsenter", "-t", str(node.init), "-n", "-m", "-u", "-p", "--", "env", "-i", *wd, *assignments, *argv]


def kill_processes(node: Node, keep_keeper: bool) -> None:
    """SIGKILL the node's processes (all of them, or all but the keeper)."""
    if not keep_keeper:
        net.kill_namespace_processes(node.ns)
        node.keeper = None
        return
    keep = {node.keeper.pid, node.init} if node.keeper else set()
    for _ in range(100):
        pids = [p for p in net.pids_in(node.ns) if p not in keep]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    raise net.NetError(f"node {node.name}: processes survived SIGKILL")


def command_pid(proc: subprocess.Popen) -> int:
    """The host pid of the command a :func:`command` line started: ``nsenter`` forks it into the node's pid
    namespace and waits, so signalling ``proc`` itself would leave the command running."""
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    except OSError:
        return proc.pid
    return int(children[0]) if children else proc.pid
