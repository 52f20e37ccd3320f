"""A distmeta driver run inside a box's node (``python tests/clusterbox/driver.py ...``).

It meta-trains with a Trainer attached to the box's Ray cluster (``RAY_ADDRESS`` in its
environment) and speaks a line protocol on stdout / stdin with the test that started it:

* ``STEP {json}`` after every step: the step, its wall time, the task keys reduced, which
  actors computed them on which nodes, retries so far, bytes that reached the driver;
* ``PAUSE <step>`` after each step named by ``--pause``, then it waits for one line on
  stdin (the test injects a fault meanwhile; the run does not go on until it answers);
* ``RESULT {json}`` at the end (the final parameters are saved to ``--out``), or
  ``ERROR {json}`` (the exception's type and message) with exit status 1.

    python tests/clusterbox/driver.py --out /tmp/out/x.pt [--config C] [--pause 3,7] [--grow-at 5] -- override ...
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback


def main() -> int:
    """Parse the arguments, train, report (see the module docstring)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True, help="where the final meta-parameters are saved (torch.save)")
    parser.add_argument("--config", default=None, help="config file (default: the embedded base config)")
    parser.add_argument("--pause", default="", help="comma-separated steps after which to wait for the test")
    parser.add_argument("--resume", action="store_true", help="continue the run in run.dir")
    parser.add_argument("overrides", nargs="*", help="config overrides")
    args = parser.parse_args()
    pauses = {int(s) for s in args.pause.split(",") if s}

    import os

    import torch

    import distmeta

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    t_last = [time.monotonic()]

    def on_event(event: str, trainer, payload: dict) -> None:
        if event != "step":
            return
        now = time.monotonic()
        stats = trainer.backend.stats()
        results = payload["results"]
        record = {
            "step": payload["step"], "wall_s": now - t_last[0], "tasks": [list(k) for k in payload["tasks"]],
            "actors": [r.extra.get("actor") for r in results], "nodes": sorted(set(stats.actor_nodes.values())),
            "retries": stats.retries, "result_bytes": stats.result_bytes, "node_sums": stats.node_sums,
            "pool": len(getattr(trainer.backend, "actors", []) or []),
        }
        print("STEP " + json.dumps(record), flush=True)
        if payload["step"] in pauses:
            print(f"PAUSE {payload['step']}", flush=True)
            sys.stdin.readline()
        t_last[0] = time.monotonic()

    try:
        cfg = distmeta.load_config(args.config, args.overrides)
        with distmeta.Trainer(cfg, resume=args.resume, callbacks=[on_event]) as trainer:
            summary = trainer.fit()
            torch.save({k: v.detach().clone() for k, v in trainer.meta_params.items()}, args.out)
            infos = [{"node": i.get("node"), "ip": i.get("ip")} for i in getattr(trainer.backend, "infos", [])]
        print("RESULT " + json.dumps({"summary": {k: v for k, v in summary.items() if isinstance(v, (int, float, str))},
                                      "actors": infos}, default=str), flush=True)
        return 0
    except BaseException as err:  # noqa: BLE001 - reported to the test, which decides
        print("ERROR " + json.dumps({"type": type(err).__name__, "message": str(err),
                                     "traceback": traceback.format_exc()[-4000:]}), flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
