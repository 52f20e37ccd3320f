"""Shared set-up of the test scripts that run in a process of their own (they start their own Ray).

Such a script (a multi-node ``cluster_utils`` check, a ``distmeta`` child to crash) begins::

    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.*
    from tests.child_process import local_cluster, prepare_environment  # noqa: E402

    prepare_environment()  # before Ray or distmeta is imported
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

#: Set before Ray is imported: no usage stats, no token auth for a throwaway cluster, no hub.
CHILD_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
    "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
}


def prepare_environment() -> None:
    """The environment defaults above, and no ``RAY_ADDRESS`` inherited from the test session."""
    for key, value in CHILD_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.pop("RAY_ADDRESS", None)


@contextlib.contextmanager
def local_cluster(nodes: int, temp_dir: str, num_cpus: float = 2, head_cpus: float | None = None,
                  object_store_mb: int = 100) -> Iterator[Any]:
    """A ``ray.cluster_utils.Cluster`` of ``nodes`` nodes (the head included), shut down on exit.

    Args:
        nodes: how many nodes, the head included.
        temp_dir: Ray's temp dir; short (its socket paths live below it).
        num_cpus: logical CPUs of each node.
        head_cpus: the head's, when it differs (0: a driver-only head).
        object_store_mb: each node's object store.

    Yields:
        The cluster, every node up; connect with ``ray.address=cluster.address``.
    """
    import ray
    from ray._common.utils import get_default_ray_temp_dir
    from ray.cluster_utils import Cluster

    os.makedirs(get_default_ray_temp_dir(), exist_ok=True)  # cluster_utils writes there whatever temp_dir says
    node = {"num_cpus": num_cpus, "object_store_memory": object_store_mb * 1024**2, "temp_dir": temp_dir}
    head = {**node, "include_dashboard": False, **({"num_cpus": head_cpus} if head_cpus is not None else {})}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        for _ in range(nodes - 1):
            cluster.add_node(**node)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
