"""The cluster deployment files parse, carry the keys Ray's launcher and KubeRay require, and expose nothing publicly."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2] / "cluster"


def load(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((ROOT / name).read_text()) if d is not None]


def containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def assert_closed_text(name: str) -> None:
    """Everything the files configure (comments aside): no 0.0.0.0 rule or bind, no public service, no public dashboard."""
    text = yaml.safe_dump_all(list(yaml.safe_load_all((ROOT / name).read_text())))
    assert "0.0.0.0" not in text, f"{name}: nothing may bind or be opened to 0.0.0.0"
    assert not re.search(r"LoadBalancer|NodePort|kind:\s*Ingress|dashboard-host=(?!127\.0\.0\.1)", text), name


def assert_token_env(container: dict, where: str) -> None:
    env = {e["name"]: e for e in container.get("env", [])}
    assert env["RAY_AUTH_MODE"]["value"] == "token", where
    ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref["key"] == "auth_token" and ref["name"], f"{where}: token from a Secret, never inline"


def test_aws_cluster_launcher_config():
    (cfg,) = load("aws-gpu.yaml")
    for key in ("cluster_name", "provider", "auth", "available_node_types", "head_node_type", "max_workers",
                "setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in cfg, key
    assert cfg["provider"]["type"] == "aws" and cfg["provider"]["region"]
    assert "security_group" not in cfg["provider"], "a launcher-made group would open SSH to 0.0.0.0/0"
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    gpu = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert gpu and gpu[0]["node_config"]["InstanceType"].startswith(("g", "p")) and gpu[0]["max_workers"] >= 1
    for name, t in types.items():
        nc = t["node_config"]
        assert nc["InstanceType"] and nc["ImageId"].startswith("ami-"), name
        assert nc["SecurityGroupIds"] and all(s.startswith("sg-") for s in nc["SecurityGroupIds"]), name
    setup = " ".join(cfg["setup_commands"])
    assert '"torch==2.13.0"' in setup and "ray[default,tune]==2.60.0" in setup and "-e ~/distmeta" in setup
    head, worker = " ".join(cfg["head_start_ray_commands"]), " ".join(cfg["worker_start_ray_commands"])
    assert "ray start --head" in head and "--dashboard-host=127.0.0.1" in head
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker
    for cmd in [*cfg["head_start_ray_commands"], *cfg["worker_start_ray_commands"]]:
        assert cmd.startswith("RAY_AUTH_MODE=token "), cmd
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert_closed_text("aws-gpu.yaml")


def test_kuberay_raycluster():
    cluster, policy = load("kuberay/raycluster.yaml")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster" and cluster["metadata"]["name"]
    spec = cluster["spec"]
    head = spec["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP" and isinstance(head["rayStartParams"], dict)
    assert_token_env(containers(head["template"])[0], "head")
    assert spec["workerGroupSpecs"], "at least one worker group"
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        (c,) = containers(group["template"])
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert_token_env(c, group["groupName"])
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["policyTypes"] == ["Ingress"]
    sources = policy["spec"]["ingress"][0]["from"]
    assert all("podSelector" in s and "ipBlock" not in s for s in sources), "in-cluster pods only"
    assert_closed_text("kuberay/raycluster.yaml")


def test_kuberay_rayjob_runs_distmeta_train():
    job, policy = load("kuberay/rayjob.yaml")
    assert policy["kind"] == "NetworkPolicy"
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("distmeta train ") and "run.dir=/mnt/shared/" in spec["entrypoint"]
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert "torch==2.13.0" in env["pip"] and any(p.startswith("distmeta") for p in env["pip"])
    assert spec["shutdownAfterJobFinishes"] is True
    assert_token_env(containers(spec["submitterPodTemplate"])[0], "submitter")
    rc = spec["rayClusterSpec"]
    assert rc["headGroupSpec"]["serviceType"] == "ClusterIP" and "rayStartParams" in rc["headGroupSpec"]
    for group in [rc["headGroupSpec"], *rc["workerGroupSpecs"]]:
        for c in containers(group["template"]):
            assert_token_env(c, c["name"])
    assert_closed_text("kuberay/rayjob.yaml")


@pytest.mark.parametrize("text", ["dashboard-host=0.0.0.0", "serviceType: LoadBalancer", "CidrIp: 0.0.0.0/0"])
def test_the_exposure_check_catches_public_settings(tmp_path, monkeypatch, text):
    (tmp_path / "bad.yaml").write_text(f"x: 1\n---\ny: '{text}'\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    with pytest.raises(AssertionError):
        assert_closed_text("bad.yaml")
