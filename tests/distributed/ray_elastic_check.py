"""Elastic-pool check, run by ``test_ray_backend.py`` in its own process (it needs its own Ray).

Starts a one-node ``ray.cluster_utils.Cluster`` (2 logical CPUs), meta-trains the given
config with ``workers: auto`` (two actors of one CPU), adds a second node after step 1 and
lets the pool grow onto it, saves the final parameters to ``RUN_DIR/params.pt`` and
prints one JSON line: the actors that computed each step and the nodes they ran on.

    python tests/distributed/ray_elastic_check.py RUN_DIR [override ...]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.*
from tests.child_process import local_cluster, prepare_environment  # noqa: E402

prepare_environment()  # before Ray or distmeta is imported

TEMP_DIR = "/tmp/dmray_el"  # short: Ray's socket paths live below it


def main(run_dir: str, overrides: list[str]) -> dict:
    import torch

    import distmeta

    steps: list[dict] = []
    joined: list[int] = []
    with local_cluster(1, TEMP_DIR) as cluster:

        def on_event(event: str, trainer, payload: dict) -> None:
            if event != "step":
                return
            stats = trainer.backend.stats()
            steps.append({"step": payload["step"], "actors": sorted(stats.actor_compute_s),
                          "nodes": sorted(set(stats.actor_nodes.values()))})
            if payload["step"] == 1:  # a node joins; the pool grows onto it before step 2
                cluster.add_node(num_cpus=2, object_store_memory=100 * 1024**2, temp_dir=TEMP_DIR)
                cluster.wait_for_nodes()
                joined.append(trainer.backend.grow(wait_s=240))

        cfg = distmeta.load_config(None, overrides + ["resources.workers=auto", "resources.cpus_per_worker=1", f"run.dir={run_dir}/run",
                                                      f"ray.address={cluster.address}"])
        with distmeta.Trainer(cfg, callbacks=[on_event]) as trainer:
            trainer.fit()
            torch.save(trainer.meta_params, f"{run_dir}/params.pt")
        return {"steps": steps, "joined": joined}


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1], sys.argv[2:])), flush=True)
