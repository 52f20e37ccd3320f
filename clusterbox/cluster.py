"""A Ray head and worker nodes in namespaces of their own, with S3 storage in the head's.

:class:`NetCluster` makes the network (:mod:`clusterbox.net`), a keeper per node
(:mod:`clusterbox.node`), then starts Ray with ``ray start`` in each node exactly as a user
would on separate machines: the head with ``--head``, each worker with
``--address=<head>:6379``, every process with token authentication, the token in each
node's own ``~/.ray/auth_token`` (0600), as the README tells users to hand it out. A
``moto`` S3 server listens on the head's address; every node's environment points
``AWS_ENDPOINT_URL`` at it.

Faults: :meth:`partition` / :meth:`heal` cut and restore a node's link (its processes stay
alive), :meth:`kill_node` SIGKILLs a node's processes, :meth:`add_node` joins a new node,
:meth:`pause_storage` / :meth:`resume_storage` stop and restart the S3 server (SIGSTOP /
SIGCONT: unreachable for a while, its objects kept).
"""
from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from clusterbox import net, reaper, storage
from clusterbox.node import HOME, Node, command, command_pid, kill_processes, start_keeper

REPO = Path(__file__).resolve().parents[1]
RAY_PORT = 6379


def unavailable_reason() -> str | None:
    """Why a box cannot be made here (not root, no iproute2/util-linux), or ``None`` when it can."""
    if os.geteuid() != 0:
        return "clusterbox needs root (network and mount namespaces)"
    for tool in ("ip", "tc", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            return f"clusterbox needs `{tool}` (apt-get install iproute2 util-linux)"
    return None


@dataclass(frozen=True)
class Spec:
    """What a box holds.

    Attributes:
        workers: worker nodes besides the head.
        head_cpus: the head's logical CPUs for Ray (0: the head runs only the driver).
        cpus_per_node: each worker node's logical CPUs.
        rate: each link's bandwidth as a ``tc`` rate (``"100mbit"``, ``"1gbit"``), ``None`` for unshaped.
        shm_mb: each node's private ``/dev/shm``.
        object_store_mb: each node's Ray object store (inside its ``/dev/shm``).
        s3: start the S3 server in the head's namespace.
        ray_env: extra variables for every Ray process (e.g. health-check settings).
        ray: start Ray on the nodes (``False``: namespaces, links and storage only).
    """

    workers: int = 2
    head_cpus: float = 1
    cpus_per_node: float = 1
    rate: str | None = "1gbit"
    shm_mb: int = 512
    object_store_mb: int = 200
    s3: bool = True
    ray_env: tuple[tuple[str, str], ...] = ()
    ray: bool = True


class NetCluster:
    """A box: make it with ``with NetCluster(spec) as cluster`` (or :meth:`start` / :meth:`close`)."""

    def __init__(self, spec: Spec | None = None) -> None:
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        self.spec = spec or Spec()
        self.tag = secrets.token_hex(3)
        self.folder = Path(tempfile.mkdtemp(prefix=f"cb{self.tag}-"))
        self.token = secrets.token_hex(32)
        self.nodes: dict[str, Node] = {}
        self.s3: subprocess.Popen | None = None
        self._reaper: subprocess.Popen | None = None
        self._closed = False

    # -- life cycle -------------------------------------------------------------------
    def __enter__(self) -> "NetCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> "NetCluster":
        """Make the network, the nodes, the S3 server and the Ray cluster; every node alive on return."""
        reaper.sweep_orphans()
        self._start_reaper()
        atexit.register(self.close)
        if threading.current_thread() is threading.main_thread():  # signal handlers belong to the main thread
            self._previous_signals = {signal.SIGTERM: signal.getsignal(signal.SIGTERM)}
            signal.signal(signal.SIGTERM, lambda *a: (self.close(), sys.exit(143)))
        try:
            net.make_switch(self.tag)
            self._make_node("head", 1)
            if self.spec.s3:
                self._start_s3()
            if self.spec.ray:
                self._ray_start(self.nodes["head"])
            for i in range(self.spec.workers):
                self.add_node(f"node{i + 1}", wait=False)
            if self.spec.ray:
                self.wait_for_nodes(len(self.nodes))
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Kill every process of the box by namespace, delete the namespaces and links, remove its folder."""
        if self._closed:
            return
        self._closed = True
        net.remove_box(self.tag)
        shutil.rmtree(self.folder, ignore_errors=True)
        if self._reaper is not None and self._reaper.poll() is None:
            self._reaper.kill()
            self._reaper.wait()
        for sig, handler in getattr(self, "_previous_signals", {}).items():
            signal.signal(sig, handler)
        atexit.unregister(self.close)

    def _start_reaper(self) -> None:
        me = os.getpid()
        self._reaper = subprocess.Popen(
            [sys.executable, "-m", "clusterbox.reaper", self.tag, str(me), reaper.start_time(me) or "", str(self.folder)],
            cwd=REPO, start_new_session=True, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    # -- nodes ------------------------------------------------------------------------
    @property
    def head(self) -> Node:
        """The head node."""
        return self.nodes["head"]

    @property
    def address(self) -> str:
        """The Ray cluster's address (``<head>:6379``), reachable from the box's nodes only."""
        return f"{self.head.address}:{RAY_PORT}"

    @property
    def s3_endpoint(self) -> str:
        """The S3 server's endpoint URL, reachable from the box's nodes only."""
        return f"http://{self.head.address}:{storage.PORT}"

    def _make_node(self, name: str, index: int) -> Node:
        address = net.make_node(self.tag, name, index, self.spec.rate)
        node = Node(self.tag, name, index, address, self.folder / name)
        node.env = self._node_env(node)
        readonly = sorted({str(REPO), str(Path(sys.prefix).resolve()), str(Path(sys.base_prefix).resolve()), "/root"})
        start_keeper(node, self.spec.shm_mb * 1024**2, readonly)
        token = node.home / ".ray" / "auth_token"
        token.parent.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.token)
        self.nodes[name] = node
        return node

    def _node_env(self, node: Node) -> dict[str, str]:
        env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": HOME, "USER": "root", "LANG": "C.UTF-8", "TMPDIR": "/tmp", "PYTHONDONTWRITEBYTECODE": "1",
            "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
            "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            **dict(self.spec.ray_env),
        }
        if self.spec.s3:
            env.update(storage.ENV, AWS_ENDPOINT_URL=f"http://{net.SUBNET}.1:{storage.PORT}")  # the head's address
        return env

    def add_node(self, name: str | None = None, wait: bool = True) -> Node:
        """Make a worker node and join it to the Ray cluster (mid-run too).

        Args:
            name: its name (default ``node<k>``, the next free k).
            wait: return only once Ray counts it alive.

        Returns:
            The node.
        """
        index = max(n.index for n in self.nodes.values()) + 1
        name = name or f"node{index - 1}"
        node = self._make_node(name, index)
        if not self.spec.ray:
            return node
        self._ray_start(node)
        if wait:
            self.wait_for_nodes(self.alive_count())
        return node

    def _ray_start(self, node: Node) -> None:
        head = node.name == "head"
        cpus = self.spec.head_cpus if head else self.spec.cpus_per_node
        argv = ["ray", "start", f"--node-ip-address={node.address}", f"--num-cpus={cpus:g}", "--num-gpus=0",
                f"--object-store-memory={self.spec.object_store_mb * 1024**2}", "--disable-usage-stats",
                "--temp-dir=/tmp/ray", f"--resources={json.dumps({f'box_{node.name}': 1})}"]
        argv += (["--head", f"--port={RAY_PORT}", "--include-dashboard=false"] if head
                 else [f"--address={self.address}"])
        proc = self.run(node.name, argv, timeout=120)
        if proc.returncode != 0:
            raise net.NetError(f"ray start on {node.name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")

    def wait_for_nodes(self, count: int, timeout: float = 120.0, exact: bool = False) -> list[str]:
        """Wait until Ray counts ``count`` nodes alive (at least, or exactly); returns their addresses."""
        deadline = time.monotonic() + timeout
        while True:
            alive = self.alive_nodes()
            if len(alive) == count or (len(alive) > count and not exact):
                return alive
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(alive)} of {count} Ray nodes alive after {timeout:.0f} s: {alive}")
            time.sleep(1.0)

    def alive_nodes(self) -> list[str]:
        """The addresses of the nodes Ray's control store counts alive (asked from the head)."""
        proc = self.run("head", [sys.executable, "-m", "clusterbox.probe", self.address], timeout=60)
        if proc.returncode != 0:
            return []
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def available(self) -> dict[str, float]:
        """The cluster's free resources (``ray.available_resources()``, asked from the head)."""
        proc = self.run("head", [sys.executable, "-m", "clusterbox.probe", self.address, "available"], timeout=60)
        if proc.returncode != 0:
            raise net.NetError(f"probe failed: {proc.stderr[-2000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def wait_until(self, predicate, what: str, timeout: float = 120.0) -> None:
        """Poll ``predicate()`` every second until it holds; :class:`TimeoutError` naming ``what`` past ``timeout``."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not after {timeout:.0f} s")
            time.sleep(1.0)

    def alive_count(self) -> int:
        """How many nodes Ray counts alive."""
        return len(self.alive_nodes())

    # -- running things -----------------------------------------------------------------
    def command(self, node: str, argv: list[str], env: dict[str, str] | None = None,
                cwd: str | None = None) -> list[str]:
        """The command line that runs ``argv`` on ``node`` in ``cwd`` (default: the read-only repository)."""
        return command(self.nodes[node], argv, env, cwd=cwd or str(REPO))

    def run(self, node: str, argv: list[str], env: dict[str, str] | None = None, timeout: float = 600,
            cwd: str | None = None) -> subprocess.CompletedProcess:
        """Run ``argv`` on ``node`` to completion (killed after ``timeout`` seconds); output captured."""
        return subprocess.run(self.command(node, argv, env, cwd), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def popen(self, node: str, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None,
              **kwargs) -> subprocess.Popen:
        """Start ``argv`` on ``node`` (``subprocess.Popen`` keyword arguments pass through); stop it with :meth:`kill`."""
        return subprocess.Popen(self.command(node, argv, env, cwd), **kwargs)

    @staticmethod
    def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        """Signal the command :meth:`popen` started (not just the ``nsenter`` that waits for it)."""
        for pid in (command_pid(proc), proc.pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    # -- faults -----------------------------------------------------------------------
    def partition(self, node: str) -> None:
        """Cut ``node``'s link (its processes stay alive)."""
        net.set_link(self.tag, node, up=False)

    def heal(self, node: str) -> None:
        """Restore ``node``'s link."""
        net.set_link(self.tag, node, up=True)

    def set_rate(self, node: str, rate: str | None) -> None:
        """Reshape ``node``'s link (``None``: unshaped)."""
        net.set_rate(self.tag, node, rate)

    def kill_node(self, node: str) -> None:
        """SIGKILL every Ray process of ``node`` (its keeper, namespaces and files stay)."""
        kill_processes(self.nodes[node], keep_keeper=True)

    def restart_node(self, node: str, wait: bool = True) -> None:
        """Start Ray afresh on ``node`` (killed, or refused by the head after a partition), as an operator would.

        What is left of its old Ray processes is killed first; the node's files (caches) stay.
        """
        kill_processes(self.nodes[node], keep_keeper=True)
        self._ray_start(self.nodes[node])
        if wait:
            self.wait_for_nodes(len(self.nodes))

    def link_bytes(self, node: str) -> tuple[int, int]:
        """``(received, sent)`` bytes on ``node``'s link so far."""
        return net.link_bytes(self.tag, node)

    # -- storage ----------------------------------------------------------------------
    def _start_s3(self) -> None:
        self.s3 = storage.start(self.popen, self.run, self.head.address)

    def pause_storage(self) -> None:
        """Stop the S3 server (SIGSTOP): requests hang until :meth:`resume_storage`."""
        assert self.s3 is not None, "the box has no S3 server (Spec.s3=False)"
        os.kill(command_pid(self.s3), signal.SIGSTOP)

    def resume_storage(self) -> None:
        """Restart a stopped S3 server (SIGCONT), its objects intact."""
        assert self.s3 is not None, "the box has no S3 server (Spec.s3=False)"
        os.kill(command_pid(self.s3), signal.SIGCONT)
