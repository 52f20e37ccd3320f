"""Network namespaces, a bridge, veth links and ``tc tbf`` bandwidth, made and removed by name.

Layout for a box with tag ``T`` (a few hex digits, unique per box):

* ``cbT-sw``: a namespace holding only the bridge ``br0``; every node's link ends here.
* ``cbT-<node>``: one namespace per node, with ``eth0`` (one end of a veth pair, its address
  ``SUBNET.<i>/24``) and ``lo``. The other end, ``<node>`` in ``cbT-sw``, is a bridge port.

The root namespace gets no interface, no address and no route: nodes reach each other and
nothing else. Bandwidth is shaped on both ends of each link (egress of each side), so a
node's sends and receives are both limited. A partition sets the switch-side end down: the
node's processes stay alive and its packets go nowhere.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence

#: Addresses of the nodes: 198.18.0.0/15 is reserved for network benchmarks (RFC 2544) and
#: is routed nowhere; the boxes never have a route for it outside their own bridge anyway.
SUBNET = "198.18.7"
NETNS_DIR = "/var/run/netns"
_TAG = re.compile(r"^[0-9a-f]{4,8}$")
_NODE = re.compile(r"^[a-z][a-z0-9]{0,9}$")


class NetError(RuntimeError):
    """An ``ip``/``tc`` command failed; the message holds the command and its stderr."""


def sh(argv: Sequence[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run one command, capturing its output.

    Args:
        argv: the command.
        check: raise :class:`NetError` on a non-zero exit.
        timeout: seconds before it is killed.

    Returns:
        The completed process.
    """
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NetError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def ns_name(tag: str, node: str) -> str:
    """The namespace of ``node`` (``"sw"`` for the switch) in box ``tag``."""
    if not _TAG.match(tag) or not (node == "sw" or _NODE.match(node)):
        raise ValueError(f"bad box tag {tag!r} or node name {node!r}")
    return f"cb{tag}-{node}"


def namespaces() -> list[str]:
    """Every named network namespace on this machine."""
    out = sh(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def box_namespaces(tag: str) -> list[str]:
    """The namespaces box ``tag`` made (nodes first, the switch last)."""
    mine = [ns for ns in namespaces() if ns.startswith(f"cb{tag}-")]
    return sorted(mine, key=lambda ns: ns.endswith("-sw"))


def make_switch(tag: str) -> None:
    """Create the switch namespace and its bridge (up, no address)."""
    sw = ns_name(tag, "sw")
    sh(["ip", "netns", "add", sw])
    sh(["ip", "-n", sw, "link", "add", "br0", "type", "bridge"])
    sh(["ip", "-n", sw, "link", "set", "br0", "up"])


def make_node(tag: str, node: str, index: int, rate: str | None) -> str:
    """Create ``node``'s namespace, its link to the bridge and its address; returns the address.

    Args:
        tag: the box.
        node: the node's name (lowercase letters and digits).
        index: 1..250, the address's last byte.
        rate: a ``tc`` rate (``"100mbit"``, ``"1gbit"``) for both directions, or ``None``.

    Returns:
        The node's address.
    """
    if not 1 <= index <= 250:
        raise ValueError(f"node index {index} outside 1..250")
    ns, sw = ns_name(tag, node), ns_name(tag, "sw")
    address = f"{SUBNET}.{index}"
    sh(["ip", "netns", "add", ns])
    # Created in the node's namespace, the peer moved into the switch's: nothing touches the root one.
    sh(["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", node, "netns", sw])
    sh(["ip", "-n", sw, "link", "set", node, "master", "br0"])
    sh(["ip", "-n", sw, "link", "set", node, "up"])
    sh(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0"])
    sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
    sh(["ip", "-n", ns, "link", "set", "lo", "up"])
    if rate:
        set_rate(tag, node, rate)
    return address


def set_rate(tag: str, node: str, rate: str | None) -> None:
    """Shape ``node``'s link to ``rate`` in both directions (``None``: unshaped)."""
    for ns, dev in ((ns_name(tag, node), "eth0"), (ns_name(tag, "sw"), node)):
        sh(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], check=False)
        if rate:
            # burst: at least one rate-second / HZ worth of bytes, and a few full frames.
            sh(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
                "burst", "256kb", "latency", "50ms"])


def set_link(tag: str, node: str, up: bool) -> None:
    """Cut (``up=False``) or restore ``node``'s link at the switch; its processes are untouched."""
    sh(["ip", "-n", ns_name(tag, "sw"), "link", "set", node, "up" if up else "down"])


def link_bytes(tag: str, node: str) -> tuple[int, int]:
    """``(received, sent)`` bytes on ``node``'s ``eth0`` so far."""
    base = ["ip", "netns", "exec", ns_name(tag, node), "cat"]
    rx = int(sh([*base, "/sys/class/net/eth0/statistics/rx_bytes"]).stdout)
    tx = int(sh([*base, "/sys/class/net/eth0/statistics/tx_bytes"]).stdout)
    return rx, tx


def pids_in(ns: str) -> list[int]:
    """The processes whose network namespace is ``ns`` (``ip netns pids``: by namespace, not by name)."""
    out = sh(["ip", "netns", "pids", ns], check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def kill_namespace_processes(ns: str, timeout: float = 10.0) -> None:
    """SIGKILL every process in ``ns`` until none is left (or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = [p for p in pids_in(ns) if p != os.getpid()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise NetError(f"processes {pids} in {ns} survived SIGKILL for {timeout:.0f} s")
        time.sleep(0.1)


def remove_box(tag: str) -> list[str]:
    """Kill every process in box ``tag``'s namespaces and delete them (links go with them).

    Returns:
        The namespaces removed.
    """
    removed = []
    for ns in box_namespaces(tag):
        kill_namespace_processes(ns)
        sh(["ip", "netns", "delete", ns], check=False)
        removed.append(ns)
    return removed
