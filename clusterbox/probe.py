"""Prints, as one JSON line, what the Ray cluster at ``ADDRESS`` has: its alive nodes, or its free resources.

Run inside a node of the box (``python -m clusterbox.probe HEAD:6379 [nodes|available]``); it
authenticates with the node's own ``~/.ray/auth_token``.
"""
from __future__ import annotations

import json
import sys


def main(address: str, what: str = "nodes") -> None:
    """Connect, print the alive nodes' addresses (``nodes``) or the free resources (``available``), disconnect."""
    import ray

    ray.init(address=address, logging_level="error", log_to_driver=False)
    try:
        if what == "available":
            print(json.dumps(ray.available_resources()), flush=True)
        else:
            print(json.dumps(sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"])), flush=True)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:3])
