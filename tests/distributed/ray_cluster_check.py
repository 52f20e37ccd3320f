"""Multi-node check, run by ``test_ray_backend.py`` in its own process (it needs its own Ray).

Starts a two-node ``ray.cluster_utils.Cluster`` (2 logical CPUs each), meta-trains the
given config with two actors that reach the cluster through ``ray.address``, saves the
final parameters to ``RUN_DIR/params.pt`` and prints one JSON line: the nodes the actors
ran on, the nodes named in the last step's results, and whether that step went through
the compiled graph.

    python tests/distributed/ray_cluster_check.py RUN_DIR [override ...]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.*
from tests.child_process import local_cluster, prepare_environment  # noqa: E402

prepare_environment()  # before Ray or distmeta is imported

TEMP_DIR = "/tmp/dmray_cl"  # short: Ray's socket paths live below it


def main(run_dir: str, overrides: list[str]) -> dict:
    import ray
    import torch

    import distmeta

    with local_cluster(2, TEMP_DIR) as cluster:
        out: dict = {}

        def train(workers: int, extra: list[str]):
            cfg = distmeta.load_config(None, overrides + extra + [f"resources.workers={workers}", f"run.dir={run_dir}/w{workers}"])
            with distmeta.Trainer(cfg) as trainer:
                trainer.fit()
                return trainer.meta_params, trainer.backend.infos, trainer.backend.stats()

        params, infos, last = train(2, [f"ray.address={cluster.address}", "resources.cpus_per_worker=1"])
        torch.save(params, f"{run_dir}/params.pt")
        out["ray_initialized_after_close"] = ray.is_initialized()
        out["actor_nodes"] = [i["node"] for i in infos]
        out["result_nodes"] = [last.actor_nodes[k] for k in sorted(last.actor_nodes)]
        out["compiled_graph"] = last.compiled_graph
        return out


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1], sys.argv[2:])), flush=True)
