"""The box itself: nodes share nothing but the network, links are shaped and can be cut, and nothing is left behind.

These make no Ray cluster (seconds), so they run by default where the machine allows
namespaces (root, iproute2); elsewhere they skip naming why.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from clusterbox import NetCluster, Spec, net, unavailable_reason

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))

SEND = """
import socket, sys, time
host, size = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, 5001), timeout=10)
t = time.monotonic(); s.sendall(b"x" * size); s.shutdown(socket.SHUT_WR); s.recv(1)
print(size * 8 / (time.monotonic() - t) / 1e6)
"""
RECV = """
import socket
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 5001)); srv.listen(4); print("ready", flush=True)
while True:
    c, _ = srv.accept()
    while c.recv(1 << 20): pass
    c.sendall(b"k"); c.close()
"""
CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close(); print("reached")
except OSError as e:
    print(type(e).__name__)
"""


@pytest.fixture(scope="module")
def bare():
    box = NetCluster(Spec(workers=2, rate="100mbit", ray=False, s3=False, shm_mb=64)).start()
    yield box
    box.close()
    assert net.box_namespaces(box.tag) == [] and not box.folder.exists()


def _py(box, node, code, *args, timeout=60):
    return box.run(node, [sys.executable, "-c", code, *map(str, args)], timeout=timeout)


def test_nodes_share_nothing_but_the_network(bare):
    for name in ("node1", "node2"):
        proc = bare.run(name, ["sh", "-c", "echo $HOME; df -B1 --output=size /dev/shm | tail -1; "
                                           "touch /dev/shm/mark-$(hostname)-" + name + " /tmp/mark-" + name])
        home, shm = proc.stdout.split()[:2]
        assert home == "/tmp/home" and int(shm) == 64 * 1024**2, proc.stdout + proc.stderr
    seen = bare.run("node1", ["sh", "-c", "ls /dev/shm /tmp"]).stdout
    assert "mark-node1" in seen and "mark-node2" not in seen, seen
    assert not any(p.startswith("mark-") for p in os.listdir("/tmp")), "a node's /tmp is not the host's"
    ps = bare.run("node1", ["sh", "-c", "hostname; ls /proc | grep -c '^[0-9]'"]).stdout.split()
    assert ps[0] == "node1" and int(ps[1]) < 10, f"own hostname and process table: {ps}"
    ro = bare.run("node1", ["sh", "-c", "touch pyproject.toml"])
    assert ro.returncode != 0 and "Read-only" in ro.stderr, "the repository is read-only on a node"


def test_only_the_box_is_reachable_and_cuts_hold(bare):
    srv = bare.popen("node1", [sys.executable, "-c", RECV], stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout.readline().strip() == "ready"
        assert _py(bare, "node2", CONNECT, bare.nodes["node1"].address, 5001).stdout.strip() == "reached"
        assert _py(bare, "node2", CONNECT, "127.0.0.1", 5001).stdout.strip() != "reached", "loopback is per node"
        out = bare.run("node2", ["ip", "route"]).stdout
        assert "default" not in out, f"no route off the box: {out}"
        bare.partition("node1")
        assert _py(bare, "node2", CONNECT, bare.nodes["node1"].address, 5001).stdout.strip() in \
            ("TimeoutError", "OSError", "ConnectionRefusedError"), "a cut link carries nothing"
        assert srv.poll() is None, "a cut node's processes stay alive"
        bare.heal("node1")
        assert _py(bare, "node2", CONNECT, bare.nodes["node1"].address, 5001).stdout.strip() == "reached"
    finally:
        bare.kill(srv)
        srv.wait()


@pytest.mark.parametrize("rate,mbit", [("100mbit", 100), ("20mbit", 20)])
def test_links_are_shaped(bare, rate, mbit):
    bare.set_rate("node1", rate)
    bare.set_rate("node2", rate)
    srv = bare.popen("node1", [sys.executable, "-c", RECV], stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout.readline().strip() == "ready"
        size = int(mbit * 1e6 / 8 * 1.5)  # 1.5 s at the shaped rate
        measured = float(_py(bare, "node2", SEND, bare.nodes["node1"].address, size).stdout)
        assert 0.6 * mbit <= measured <= 1.15 * mbit, f"{measured:.1f} Mbit/s through a {rate} link"
    finally:
        bare.kill(srv)
        srv.wait()


def test_a_killed_owner_leaves_nothing_behind(tmp_path):
    code = ("import time\nfrom clusterbox import NetCluster, Spec\n"
            "b = NetCluster(Spec(workers=1, ray=False, s3=False, shm_mb=16)).start()\n"
            "print(b.tag, b.folder, flush=True)\ntime.sleep(600)\n")
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    tag, folder = owner.stdout.readline().split()
    assert len(net.box_namespaces(tag)) == 3
    owner.send_signal(signal.SIGKILL)  # no atexit, no finally: the reaper must clean up
    owner.wait()
    deadline = time.monotonic() + 30
    while net.box_namespaces(tag) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert net.box_namespaces(tag) == [] and not os.path.exists(folder)
