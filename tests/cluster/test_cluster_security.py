"""Item 7: local_cluster.sh never trusts a predictable or foreign state dir, never signals a pid it did not start,
prints an address only for a running cluster; rayjob.yaml is closed and pinned; the AWS token stays 0600."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
SCRIPT = CLUSTER / "local_cluster.sh"


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(tmp_path / "home"), "PYTHON": "/bin/false"}  # never a real cluster here
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)


def test_env_prints_nothing_when_no_cluster_runs(tmp_path):
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    out = run(tmp_path, "env", "--dir", str(d))
    assert out.returncode != 0 and "export" not in out.stdout and "no cluster is running" in out.stderr


def test_stop_never_signals_a_pid_it_did_not_start(tmp_path):
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        (d / "keeper.pid").write_text(str(bystander.pid))  # stale, or planted
        out = run(tmp_path, "stop", "--dir", str(d))
        assert bystander.poll() is None, "an unrelated process was killed"
        assert "not this cluster's keeper" in out.stderr
    finally:
        bystander.kill()
        bystander.wait()


def test_a_state_dir_of_another_user_is_refused(tmp_path):
    d = tmp_path / "planted"
    d.mkdir(mode=0o777)
    os.chown(d, 54321, 54321)
    out = run(tmp_path, "start", "--dir", str(d))
    assert out.returncode != 0 and "belongs to another user" in out.stderr, out.stderr
    assert not (d / "auth_token").exists() and not (d / "keeper.py").exists()


def test_the_default_state_dir_is_unpredictable():
    text = SCRIPT.read_text()
    assert "mktemp -d" in text and "dmlc-$(id -u)" not in text


def test_rayjob_has_the_networkpolicy_and_a_pinned_commit():
    docs = list(yaml.safe_load_all((CLUSTER / "kuberay" / "rayjob.yaml").read_text()))
    job, policy = docs
    assert policy["kind"] == "NetworkPolicy"
    label = policy["spec"]["podSelector"]["matchLabels"]
    rc = job["spec"]["rayClusterSpec"]
    templates = [job["spec"]["submitterPodTemplate"], rc["headGroupSpec"]["template"],
                 *[g["template"] for g in rc["workerGroupSpecs"]]]
    assert all(label.items() <= t["metadata"]["labels"].items() for t in templates)
    assert [r["from"] for r in policy["spec"]["ingress"]][0][0]["podSelector"]["matchLabels"] == label
    pip = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["pip"]
    (dm,) = [p for p in pip if p.startswith("distmeta")]
    assert re.search(r"@[0-9a-f]{40}$", dm), dm


def test_aws_token_stays_0600():
    text = (CLUSTER / "aws-gpu.yaml").read_text()
    assert "umask 077" in text
    cfg = yaml.safe_load(text)
    assert cfg["setup_commands"][0].startswith("chmod 700 ~/.ray && chmod 600 ~/.ray/auth_token")
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # re-synced, then re-chmodded by setup
