"""Three-node check of the reduction tree, run by ``test_ray_backend.py`` in its own process (it needs its own Ray).

Starts a three-node ``ray.cluster_utils.Cluster`` (2 logical CPUs each), meta-trains the
given config with four actors spread over the nodes, once per dtype with the nodes
summing their own groups (``ray.node_reduce=true``) and once without, saves the final
parameters to ``RUN_DIR/<dtype>-<tree|flat>.pt`` and prints one JSON line: per run, the
actors' nodes, how many nodes summed their groups in the last step, and the gradient
bytes that reached the driver.

    python tests/distributed/ray_tree_check.py RUN_DIR [override ...]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.*
from tests.child_process import local_cluster, prepare_environment  # noqa: E402

prepare_environment()  # before Ray or distmeta is imported

TEMP_DIR = "/tmp/dmray_tr"  # short: Ray's socket paths live below it


def main(run_dir: str, overrides: list[str]) -> dict:
    import torch

    import distmeta
    from distmeta.training.backend import Lent, make_backend

    pool: list = []

    def factory(cfg, exp):  # one set of four actors for every run: reconfigured, not restarted
        if pool:
            pool[0].reconfigure(cfg, exp.worker_args())
        else:
            pool.append(make_backend(cfg, exp))
        return Lent(pool[0])

    with local_cluster(3, TEMP_DIR) as cluster:
        try:
            out: dict = {}
            for dtype, tree in (("float32", True), ("float64", True), ("float32", False)):
                name = f"{dtype}-{'tree' if tree else 'flat'}"
                cfg = distmeta.load_config(None, overrides + [
                    f"dtype={dtype}", f"ray.node_reduce={str(tree).lower()}", "resources.workers=4", "resources.cpus_per_worker=1",
                    f"ray.address={cluster.address}", f"run.dir={run_dir}/{name}"])
                with distmeta.Trainer(cfg, backend_factory=factory) as trainer:
                    trainer.fit()
                    last = trainer.backend.stats()
                    torch.save(trainer.meta_params, f"{run_dir}/{name}.pt")
                out[name] = {"actor_nodes": [i["node"] for i in pool[0].infos], "node_sums": last.node_sums,
                             "result_bytes": last.result_bytes, "driver_node": pool[0].pool.driver_node,
                             "order": pool[0].pool.order}
            return out
        finally:
            for backend in pool:
                backend.close()


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1], sys.argv[2:])), flush=True)
