"""Concurrent grid check, run by ``test_grid_concurrent.py`` in its own process (it needs its own Ray).

Starts a two-node ``ray.cluster_utils.Cluster`` (2 logical CPUs each) and runs the grid
given as a JSON file through ``ray.address``: its cells become Ray Tune trials, as many at
once as fit. Then, as after a kill, it deletes the results of one cell and runs the grid
again: only that cell runs. Prints one JSON line: the first run's rows (with each cell's
start and end times and node) and the second run's.

    python tests/tune/grid_cluster_check.py GRID_JSON
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

for _k, _v in {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
    "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_k, _v)
os.environ.pop("RAY_ADDRESS", None)

TEMP_DIR = "/tmp/dmray_gc"  # short: Ray's socket paths live below it


def main(grid_json: str) -> dict:
    import ray
    from ray._common.utils import get_default_ray_temp_dir
    from ray.cluster_utils import Cluster

    from distmeta.sweeps.grid import load_grid, run_grid

    spec = json.loads(Path(grid_json).read_text())
    os.makedirs(get_default_ray_temp_dir(), exist_ok=True)  # cluster_utils writes there whatever temp_dir says
    shutil.rmtree(TEMP_DIR, ignore_errors=True)
    node = {"num_cpus": 2, "object_store_memory": 100 * 1024**2, "temp_dir": TEMP_DIR}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    try:
        cluster.add_node(**node)
        cluster.wait_for_nodes()
        over = [f"ray.address={cluster.address}"]
        out = {"first": run_grid(spec, over)["rows"]}
        out["ray_initialized_after_grid"] = ray.is_initialized()
        killed = load_grid(spec, over).cells[-1]
        os.remove(os.path.join(killed.cfg.run.dir, "results.json"))  # as if killed before it finished
        out["second"] = run_grid(spec, over)["rows"]
        return out
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1]), default=str), flush=True)
