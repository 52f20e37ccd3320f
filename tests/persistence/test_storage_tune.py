"""A Ray Tune search whose ``storage_path`` is an S3 URI (moto server started here): trial run dirs and
Tune's own checkpoints land in the bucket. Its own Ray in a subprocess, which inherits the AWS variables
(as every node of a real cluster reads its credentials from its own environment)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from distmeta.persistence.lease import current_generation
from distmeta.persistence.storage import open_store
from tests.persistence.s3server import make_bucket, s3_env, s3_server

pytestmark = [pytest.mark.slow, pytest.mark.ray]

SCRIPT = r"""
import json, sys, ray
from distmeta.sweeps.tune import run_search
ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2, _temp_dir="/tmp/dmray_s3",
         logging_level="warning")
over = ["resources.workers=0", "train.steps=4", "run.eval_every=2", "train.meta_batch=8", "algorithm.group_size=2",
        "eval.val_episodes=10", "eval.episodes=10", "eval.batch=5", "eval.baseline=false",
        f"storage_path={sys.argv[1]}", "name=s3search", "num_samples=2", "driver_cpus=1", "verbose=0",
        "search_seed=0"]
summary = run_search("configs/tune_sinusoid_asha.yaml", over)
print("SUMMARY", json.dumps({"trials": summary["trials"], "errored": summary["errored_trials"]}))
"""


def test_tune_search_stores_runs_and_checkpoints_in_s3(tmp_path: Path) -> None:
    with s3_server() as endpoint, s3_env(endpoint):
        bucket = make_bucket(endpoint)
        root = Path(__file__).resolve().parents[2]
        env_cache = {"DISTMETA_CACHE_DIR": str(tmp_path / "cache"), "DISTMETA_LEASE_SETTLE": "0.1"}
        import os

        proc = subprocess.run([sys.executable, "-c", SCRIPT, f"s3://{bucket}/tune"], cwd=root, capture_output=True,
                              text=True, timeout=900, env={**os.environ, **env_cache})
        assert proc.returncode == 0, proc.stderr[-4000:]
        line = [x for x in proc.stdout.splitlines() if x.startswith("SUMMARY")][-1]
        assert json.loads(line.split(" ", 1)[1]) == {"trials": 2, "errored": 0}
        store = open_store(f"s3://{bucket}/tune/s3search")
        files = store.walk()
        runs = {f.split("/")[1] for f in files if f.startswith("runs/")}
        assert len(runs) == 2, files[:20]
        for run in runs:
            gen = current_generation(store.child(f"runs/{run}"))  # each trial's run, as its readers see it
            assert gen.exists("metrics.jsonl") and gen.exists("results.json")
            assert gen.exists("checkpoints/step_00000004/manifest.json")
        assert any(f.endswith("manifest.json") and not f.startswith("runs/") for f in files), "Tune's checkpoints"
        best = json.loads(store.read_bytes("best.json"))  # the result beside the trials, not only on the driver's disk
        assert best["trials"] == 2 and "best_config.yaml" in files
