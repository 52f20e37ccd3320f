"""Issue 26 item 4: a plan of actors this machine cannot hold is refused before any cache, run directory or Ray."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from distmeta.config import load_config
from distmeta.distributed.preflight import check_local_fit, fit_problem, local_resources
from distmeta.errors import ConfigError
from tests.helpers import QUIET, text_tiny, write_tiny_csv

TWO_CPUS = {"CPU": 2.0, "GPU": 0.0}


def test_too_many_workers_are_refused_before_anything_is_built(tmp_path):
    """In a fresh process (no Ray running): the error names the plan and the machine; nothing is left behind."""
    data = write_tiny_csv(tmp_path / "d.csv")
    run, cache = tmp_path / "run", tmp_path / "cache"
    workers = int(local_resources()["CPU"]) * 4
    env = {**os.environ, "DISTMETA_CACHE_DIR": str(cache)}
    env.pop("RAY_ADDRESS", None)
    argv = [sys.executable, "-m", "distmeta.cli", "train", *text_tiny(data), *QUIET, f"resources.workers={workers}",
            f"run.dir={run}"]
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert not run.exists(), sorted(p.name for p in run.iterdir())  # no split.json, tokenizer.json, config.yaml
    assert not cache.exists() or not any(cache.rglob("*")), sorted(cache.rglob("*"))
    assert "Started a local Ray instance" not in done.stderr + done.stdout
    assert f"resources.workers={workers} needs {workers} x (cpus_per_worker=1" in done.stderr, done.stderr
    assert "lower resources.workers" in done.stderr and "ray.address" in done.stderr
    assert time.perf_counter() - t0 < 60


def test_fit_problem_against_a_two_cpu_machine():
    def cfg(*extra: str):
        c = load_config(None, [*extra])
        return c.resources, c.ray

    assert fit_problem(*cfg("resources.workers=2"), TWO_CPUS) is None
    assert "CPU=8" in fit_problem(*cfg("resources.workers=8"), TWO_CPUS)
    assert "cpus_per_worker=1.5" in fit_problem(*cfg("resources.workers=2", "resources.cpus_per_worker=1.5"), TWO_CPUS)
    assert "GPU=1" in fit_problem(*cfg("resources.workers=1", "resources.gpus_per_worker=1"), TWO_CPUS)
    assert fit_problem(*cfg("resources.workers=auto"), TWO_CPUS) is None
    assert "cannot hold one worker" in fit_problem(*cfg("resources.workers=auto", "resources.cpus_per_worker=4"), TWO_CPUS)
    # An elastic pool starts with what fits and grows: it needs room for one actor now.
    assert fit_problem(*cfg("resources.workers=8", "ray.elastic=true"), TWO_CPUS) is None


def test_a_cluster_to_join_is_not_checked_against_this_machine(monkeypatch):
    big = load_config(None, ["resources.workers=512"])
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if not __import__("ray").is_initialized():
        with pytest.raises(ConfigError, match="resources.workers=512"):
            check_local_fit(big.resources, big.ray)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    check_local_fit(big.resources, big.ray)  # the cluster sizes itself (and may autoscale)
    monkeypatch.setenv("RAY_ADDRESS", "local")
    if not __import__("ray").is_initialized():
        with pytest.raises(ConfigError, match="resources.workers=512"):
            check_local_fit(big.resources, big.ray)
    joining = load_config(None, ["resources.workers=512", "ray.address=10.0.0.1:6379"])
    check_local_fit(joining.resources, joining.ray)


def test_a_plain_ray_backend_refuses_fault_drills_before_starting_anything():
    """Only make_backend's drilled backend runs faults; a plain one must not ignore them in silence."""
    from distmeta.distributed.ray_backend import RayBackend
    from distmeta.errors import ConfigError

    cfg = load_config(None, ["resources.workers=1", "faults=[{kind: stall, actor: 0, step: 1}]"])
    with pytest.raises(ConfigError, match=r"faults: .*DrilledRayBackend"):
        RayBackend(cfg, {})
