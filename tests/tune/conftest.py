"""Shared set-up for the Tune tests: short storage paths and a check that every search released its resources."""
from __future__ import annotations

import shutil
import tempfile
import time

import pytest

# Tiny sinusoid MAML searches: 2 workers of 0.5 CPU per trial (and no CPU reserved for the trial's driver), so
# one trial fits the session's 2-CPU Ray twice over. A report every 2 steps.
SINUSOID_TRIAL = [
    "resources.workers=2", "resources.cpus_per_worker=0.5", "train.steps=6", "run.eval_every=2", "train.meta_batch=8",
    "algorithm.group_size=2", "eval.val_episodes=10", "eval.episodes=10", "eval.batch=5", "eval.baseline=false",
]


@pytest.fixture
def tune_storage():
    """A short storage path (Tune's and Ray's paths stay short), removed afterwards."""
    path = tempfile.mkdtemp(prefix="dmtune", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def wait_released(ray, cpus: float = 2.0, timeout: float = 60.0) -> None:
    """Every trial's placement group and actors are gone: the session's CPUs are all free again."""
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0.0) < cpus - 1e-6:
        if time.monotonic() > deadline:
            raise AssertionError(f"resources still held after the search: {ray.available_resources()}")
        time.sleep(0.5)
