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

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.*
from tests.child_process import local_cluster, prepare_environment  # noqa: E402

prepare_environment()  # before Ray or distmeta is imported

TEMP_DIR = "/tmp/dmray_gc"  # short: Ray's socket paths live below it


def main(grid_json: str) -> dict:
    import ray

    from distmeta.sweeps.grid import load_grid, run_grid

    spec = json.loads(Path(grid_json).read_text())
    shutil.rmtree(TEMP_DIR, ignore_errors=True)
    with local_cluster(2, TEMP_DIR) as cluster:
        over = [f"ray.address={cluster.address}"]
        out = {"first": run_grid(spec, over)["rows"]}
        out["ray_initialized_after_grid"] = ray.is_initialized()
        killed = load_grid(spec, over).cells[-1]
        os.remove(os.path.join(killed.cfg.run.dir, "results.json"))  # as if killed before it finished
        out["second"] = run_grid(spec, over)["rows"]
        return out

if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1]), default=str), flush=True)
