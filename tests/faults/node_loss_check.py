"""Node loss, run by ``test_node_loss.py`` in its own process (it needs its own Ray cluster).

A ``ray.cluster_utils.Cluster``: a head with no CPUs (the driver's) and two 1-CPU nodes,
one actor on each. After step ``LOSE_FIRST`` the node of actor 1 is removed for good
(no capacity is left to restart the actor anywhere): training must go on, on actor 0
alone, with the same tasks. After step ``LOSE_SECOND`` the node of actor 0 goes too:
no actor is left, and the run must stop with a clear error within a bounded time.
Prints one ``RESULT`` JSON line and saves the newest checkpoint's parameters to
``RUN_DIR/params.pt``.

    python tests/faults/node_loss_check.py RUN_DIR STEP_TIMEOUT [override ...]
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.*
from tests.child_process import prepare_environment  # noqa: E402

prepare_environment()  # before Ray or distmeta is imported

TEMP_DIR = "/tmp/dmray_nl"  # short: Ray's socket paths live below it
LOSE_FIRST, LOSE_SECOND = 1, 3


def main(run_dir: str, step_timeout: float, overrides: list[str]) -> dict:
    import ray
    import torch
    from ray.cluster_utils import Cluster

    import distmeta
    from distmeta.distributed.ray_backend import WorkerFailedError

    node = {"num_cpus": 1, "object_store_memory": 80 * 1024**2, "temp_dir": TEMP_DIR}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "num_cpus": 0, "include_dashboard": False})
    out: dict = {"steps": [], "removed": []}
    try:
        workers = [cluster.add_node(**node) for _ in range(2)]
        cluster.wait_for_nodes()
        lost_at = [0.0]

        def on_event(event: str, trainer, payload: dict) -> None:
            if event != "step":
                return
            step = payload["step"]
            out.setdefault("actor_nodes", trainer.backend.node_ids)
            out["steps"].append({"step": step, "tasks": payload["tasks"], "retries": trainer.backend.stats().retries,
                                 "actors": [r.extra["actor"] for r in payload["results"]]})
            if step in (LOSE_FIRST, LOSE_SECOND):
                actor = 1 if step == LOSE_FIRST else 0
                node_id = trainer.backend.infos[actor]["node"]
                victim = next(w for w in workers if w.node_id == node_id)
                cluster.remove_node(victim)
                out["removed"].append({"after_step": step, "actor": actor})
                lost_at[0] = time.monotonic()

        cfg = distmeta.load_config(None, overrides + [
            f"ray.address={cluster.address}", "resources.workers=2", "resources.cpus_per_worker=1", f"run.dir={run_dir}/run",
            "run.checkpoint_every=1", f"ray.step_timeout={step_timeout}"])
        t0 = time.monotonic()
        try:
            with distmeta.Trainer(cfg, callbacks=[on_event]) as trainer:
                trainer.fit()
            out["error"] = None
        except WorkerFailedError as err:
            out["error"] = str(err)
            out["error_after_s"] = time.monotonic() - lost_at[0]
        out["wall_s"] = time.monotonic() - t0
        out["ray_initialized_after_close"] = ray.is_initialized()
        ckpt = distmeta.load_checkpoint(f"{run_dir}/run")
        out["checkpoint_step"] = ckpt.step
        torch.save(ckpt.meta_params, f"{run_dir}/params.pt")
        return out
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1], float(sys.argv[2]), sys.argv[3:])), flush=True)
