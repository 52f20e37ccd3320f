"""Multi-node check, run by ``test_ray_backend.py`` in its own process (it needs its own Ray).

Starts a two-node ``ray.cluster_utils.Cluster`` (2 logical CPUs each), meta-trains the
given config with two actors that reach the cluster through ``ray.address``, saves the
final parameters to ``RUN_DIR/params.pt`` and prints one JSON line: the nodes the actors
ran on, the nodes named in the last step's results, and whether that step went through
the compiled graph.

    python tests/runtime/ray_cluster_check.py RUN_DIR [override ...]
"""
from __future__ import annotations

import json
import os
import sys

for _k, _v in {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
    "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_k, _v)
os.environ.pop("RAY_ADDRESS", None)

TEMP_DIR = "/tmp/dmray_cl"  # short: Ray's socket paths live below it


def main(run_dir: str, overrides: list[str]) -> dict:
    import ray
    import torch
    from ray.cluster_utils import Cluster

    import distmeta

    # cluster_utils writes the default temp dir's ray_current_cluster file whatever temp_dir
    # says, and fails on a clean machine where that directory does not exist yet.
    from ray._common.utils import get_default_ray_temp_dir

    os.makedirs(get_default_ray_temp_dir(), exist_ok=True)
    node = {"num_cpus": 2, "object_store_memory": 100 * 1024**2, "temp_dir": TEMP_DIR}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    try:
        cluster.add_node(**node)
        cluster.wait_for_nodes()
        out: dict = {}

        def train(workers: int, extra: list[str]):
            cfg = distmeta.load_config(None, overrides + extra + [f"workers={workers}", f"run.dir={run_dir}/w{workers}"])
            with distmeta.Trainer(cfg) as trainer:
                trainer.fit()
                return trainer.meta_params, trainer.backend.infos, trainer.backend.stats()

        params, infos, last = train(2, [f"ray.address={cluster.address}", "cpus_per_worker=1"])
        torch.save(params, f"{run_dir}/params.pt")
        out["ray_initialized_after_close"] = ray.is_initialized()
        out["actor_nodes"] = [i["node"] for i in infos]
        out["result_nodes"] = [last.actor_nodes[k] for k in sorted(last.actor_nodes)]
        out["compiled_graph"] = last.compiled_graph
        return out
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1], sys.argv[2:])), flush=True)
