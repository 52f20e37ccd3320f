"""The cluster in a box for people: ``python -m clusterbox up`` (or ``cluster/box.sh up``), then ``exec`` into it.

    cluster/box.sh up [--workers 2] [--rate 100mbit] [--cpus 1] [--shm-mb 512]   # foreground; Ctrl-C removes it
    cluster/box.sh exec head -- distmeta train resources.workers=3 resources.cpus_per_worker=1      # in another terminal
    cluster/box.sh exec node1 -- bash
    cluster/box.sh cut node2 | heal node2 | rate node1 1gbit | ls

``up`` writes the running box's nodes to ``/run/clusterbox/box.json`` (0600) for the other
commands; ``RAY_ADDRESS`` and the S3 variables are set in every node's environment.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from clusterbox import net
from clusterbox.cluster import NetCluster, Spec

STATE = Path("/run/clusterbox/box.json")


def _up(args: argparse.Namespace) -> int:
    spec = Spec(workers=args.workers, head_cpus=args.cpus, cpus_per_node=args.cpus, rate=args.rate or None,
                shm_mb=args.shm_mb, object_store_mb=args.object_store_mb)
    with NetCluster(spec) as box:
        for node in box.nodes.values():
            node.env["RAY_ADDRESS"] = box.address
        STATE.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(STATE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"tag": box.tag, "owner": os.getpid(), "nodes": {
                n.name: {"keeper": n.init, "address": n.address, "env": n.env} for n in box.nodes.values()}}, f)
        print(f"box {box.tag} up: Ray at {box.address}, S3 at {box.s3_endpoint}, links {args.rate or 'unshaped'}")
        for n in box.nodes.values():
            print(f"  {n.name:6s} {n.address}   cluster/box.sh exec {n.name} -- bash")
        print("Ctrl-C removes the box.", flush=True)
        stop: list[int] = []
        signal.signal(signal.SIGINT, lambda *a: stop.append(1))
        while not stop:
            time.sleep(0.5)
    STATE.unlink(missing_ok=True)
    return 0


def _state() -> dict:
    if not STATE.exists():
        raise SystemExit("clusterbox: no box is up (start one with `cluster/box.sh up`)")
    return json.loads(STATE.read_text())


def _exec(args: argparse.Namespace) -> int:
    state = _state()
    node = state["nodes"].get(args.node)
    if node is None:
        raise SystemExit(f"clusterbox: no node {args.node!r}; nodes: {', '.join(state['nodes'])}")
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    env = [f"{k}={v}" for k, v in node["env"].items()]
    cmd = ["nsenter", "-t", str(node["keeper"]), "-n", "-m", "-u", "-p", "--", "env", "-i", "-C", os.getcwd(), *env,
           *(argv or ["bash"])]
    return subprocess.call(cmd)


def _link(args: argparse.Namespace) -> int:
    tag = _state()["tag"]
    if args.cmd == "rate":
        net.set_rate(tag, args.node, None if args.rate == "none" else args.rate)
    else:
        net.set_link(tag, args.node, up=args.cmd == "heal")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse and run one command (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="cluster/box.sh", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a box and keep it until Ctrl-C")
    up.add_argument("--workers", type=int, default=2, help="worker nodes besides the head")
    up.add_argument("--cpus", type=float, default=1, help="logical CPUs Ray gives each node")
    up.add_argument("--rate", default="1gbit", help="each link's bandwidth (tc rate, e.g. 100mbit); '' for unshaped")
    up.add_argument("--shm-mb", type=int, default=512, help="each node's private /dev/shm")
    up.add_argument("--object-store-mb", type=int, default=200, help="each node's Ray object store")
    ex = sub.add_parser("exec", help="run a command on a node (default: bash)")
    ex.add_argument("node", help="head, node1, ...")
    ex.add_argument("argv", nargs=argparse.REMAINDER, help="the command, after --")
    for name, text in (("cut", "cut a node's link (its processes stay alive)"), ("heal", "restore a node's link")):
        sub.add_parser(name, help=text).add_argument("node", help="the node")
    rate = sub.add_parser("rate", help="reshape a node's link")
    rate.add_argument("node", help="the node")
    rate.add_argument("rate", help="a tc rate (100mbit, 1gbit) or none")
    args = parser.parse_args(argv)
    return {"up": _up, "exec": _exec, "cut": _link, "heal": _link, "rate": _link}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
