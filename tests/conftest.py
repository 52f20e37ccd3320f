"""Shared test set-up: offline, quiet environment and one Ray instance for the whole session."""
from __future__ import annotations

import os
from pathlib import Path

# Before anything imports ray, datasets or tokenizers.
for _k, _v in {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_k, _v)

# Tests that build on `load_config(None, [...])` (and their subprocesses) start from the from-scratch
# bag config: the embedded default loads a pretrained encoder and caches its frozen layers over the
# whole corpus (minutes), which a tiny test run does not need. The shipped default itself is tested
# in tests/test_default_config.py.
os.environ.setdefault("DISTMETA_BASE_CONFIG", str(Path(__file__).resolve().parent.parent / "configs" / "bag_protonet.yaml"))

import pytest  # noqa: E402

# Ray's socket paths live under its temp dir and must stay short (AF_UNIX path limit): never tmp_path.
RAY_TEMP_DIR = "/tmp/dmray"


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the session (2 CPUs, no dashboard, small object store), shut down at the end.

    Tests must close every backend they make: live actors hold CPUs the next test needs.
    Tests that need another Ray (a multi-node cluster) run it in a subprocess.
    """
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2,
                 _temp_dir=RAY_TEMP_DIR, logging_level="warning")
    yield ray
    if started and ray.is_initialized():
        ray.shutdown()
