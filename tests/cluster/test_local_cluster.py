"""cluster/local_cluster.sh: a head and two worker nodes on 127.0.0.1 with token auth; distmeta trains on it; stop."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "cluster" / "local_cluster.sh"

CLIENT = r"""
import json, sys
import ray
import distmeta

ray.init(logging_level="error", log_to_driver=False)  # RAY_ADDRESS and the token from the environment
nodes = [n for n in ray.nodes() if n["Alive"]]
cfg = distmeta.load_config(None, sys.argv[2:] + [f"run.dir={sys.argv[1]}"])
with distmeta.Trainer(cfg) as trainer:
    trainer.fit()
    actor_nodes = [i["node"] for i in trainer.backend.infos]
print("RESULT " + json.dumps({
    "ips": sorted({n["NodeManagerAddress"] for n in nodes}),
    "resources": {n["NodeID"]: n["Resources"] for n in nodes},
    "actor_nodes": actor_nodes,
}), flush=True)
"""

TRAIN = ["data.source=sinusoid", "model.name=mlp", "algorithm.name=maml", "resources.workers=2", "resources.cpus_per_worker=1",
         "train.steps=2", "train.meta_batch=4", "algorithm.group_size=2", "eval.episodes=4", "eval.batch=4",
         "run.eval_every=0", "run.checkpoint_every=0", "run.progress=false", "eval.baseline=false"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def group_pids(pgid: int) -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid=,pgid="], capture_output=True, text=True, check=True).stdout
    return {int(p) for p, g in (line.split() for line in out.splitlines()) if int(g) == pgid}


def listening(pids: set[int]) -> list[tuple[str, str]]:
    """(local address, process name) of every listening TCP socket of ``pids``."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        local = line.split()[3]
        for name, pid in re.findall(r'\("([^"]+)",pid=(\d+)', line):
            if int(pid) in pids:
                found.append((local, name))
    return found


@pytest.mark.ray
def test_local_cluster_binds_to_loopback_requires_the_token_and_runs_distmeta(tmp_path):
    d = tempfile.mkdtemp(prefix="dmlc", dir="/tmp")  # short: Ray's socket paths live below it
    port = free_port()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    base_env.update(PYTHON=sys.executable, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    run = lambda *args, **kw: subprocess.run(["bash", str(SCRIPT), *args, "--dir", d, "--port", str(port)],  # noqa: E731
                                             env=base_env, capture_output=True, text=True, **kw)
    try:
        started = run("start", "--workers", "2", "--cpus-per-worker", "1", timeout=240)
        assert started.returncode == 0, started.stdout + started.stderr + Path(d, "keeper.log").read_text()
        exports = dict(re.findall(r"(\w+)=(\S+)", " ".join(l for l in started.stdout.splitlines() if l.startswith("export"))))
        assert exports["RAY_ADDRESS"] == f"127.0.0.1:{port}" and exports["RAY_AUTH_MODE"] == "token"
        token = Path(exports["RAY_AUTH_TOKEN_PATH"])
        assert len(token.read_text().strip()) == 64 and token.stat().st_mode & 0o077 == 0, "a private 256-bit token"
        assert run("status").returncode == 0

        pgid = int(Path(d, "keeper.pid").read_text())
        socks = listening(group_pids(pgid))
        names = {n for _, n in socks}
        assert {"gcs_server", "raylet"} <= names, socks
        public = [(a, n) for a, n in socks if not re.match(r"(\[::ffff:)?127\.0\.0\.1\]?:\d+$", a)]
        assert not public, f"sockets open beyond 127.0.0.1: {public}"

        env = {**base_env, **exports}
        stranger = subprocess.Popen([sys.executable, "-c", "import ray; ray.init(logging_level='error')"],
                                    env={**env, "RAY_AUTH_TOKEN": "0" * 64}, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
        client = subprocess.run([sys.executable, "-c", CLIENT, str(tmp_path / "run"), *TRAIN], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=300)
        line = [x for x in client.stdout.splitlines() if x.startswith("RESULT ")]
        assert client.returncode == 0 and line, client.stdout[-3000:] + client.stderr[-3000:]
        out = json.loads(line[-1][len("RESULT "):])
        assert out["ips"] == ["127.0.0.1"] and len(out["resources"]) == 3
        workers = {nid for nid, r in out["resources"].items() if any(k.startswith("worker_") for k in r)}
        head = [r for r in out["resources"].values() if "head" in r]
        assert len(workers) == 2 and head and head[0].get("CPU", 0) == 0
        assert sorted(out["actor_nodes"]) == sorted(workers), "one actor on each worker node, none on the head"
        assert (tmp_path / "run" / "results.json").exists()

        said = stranger.communicate(timeout=120)[0]
        assert stranger.returncode != 0 and re.search(r"Unauthenticated|InvalidAuthToken|Failed to connect", said), said
    finally:
        stopped = run("stop", timeout=120)
        if stopped.returncode == 0:
            shutil.rmtree(d, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr
    assert not group_pids(pgid), "every process of the cluster is gone"
    assert run("status").returncode == 1
