"""One meta-training step, traced: the package modules whose code it runs, on the driver, listed and counted.

What a reader follows to understand a step is what runs, not what is imported: the step
(sample groups, compute, check, reduce, update, log) is traced with ``sys.setprofile`` on
a warm trainer, and every ``distmeta`` module that had a function called is listed. The
lists are written out below, so a change that sends a step through more modules shows up
here, and the orchestration (the layers above the compute) stays within a dozen modules.
docs/architecture.md walks the same path.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import distmeta
from distmeta.config import load_config
from tests.distributed.test_ray_backend import SINUSOID

ROOT = Path(distmeta.__file__).resolve().parent

#: The modules above the compute that a step runs on the driver, per backend.
ORCHESTRATION = {
    0: ["training/in_process.py", "training/metrics.py", "training/reduce.py", "training/trainer.py"],
    2: ["distributed/actor_pool.py", "distributed/answers.py", "distributed/compiled.py", "distributed/dispatch.py",
        "distributed/ray_backend.py", "distributed/shm.py", "distributed/transport.py", "distributed/wire.py",
        "training/metrics.py", "training/reduce.py", "training/trainer.py"],
}
#: The compute modules the driver itself runs in a Ray step (the rest runs in the actors).
DRIVER_COMPUTE = ["groups/__init__.py", "optim.py", "results.py", "tasks/specs.py"]
COMPUTE_TOPS = ("algorithms", "models", "tasks", "groups", "worker.py", "optim.py", "results.py")


def traced_step(workers: int, tmp_path: Path) -> list[str]:
    """The package files whose functions one warm training step calls, with ``workers`` actors."""
    cfg = load_config(None, SINUSOID + [f"resources.workers={workers}", f"run.dir={tmp_path / 'run'}"])
    seen: set[str] = set()

    def profile(frame, event, arg):  # noqa: ANN001 - sys.setprofile's signature
        if event == "call":
            path = Path(frame.f_code.co_filename)
            if path.is_relative_to(ROOT):
                seen.add(path.relative_to(ROOT).as_posix())

    with distmeta.Trainer(cfg) as trainer:
        trainer._setup()
        sampler = trainer.exp.sampler("train")
        trainer._train_step(sampler.batch(0, cfg.train.meta_batch), overlap=lambda: None)  # warm: graphs, slabs
        specs = sampler.batch(1, cfg.train.meta_batch)
        sys.setprofile(profile)
        try:
            trainer._train_step(specs, overlap=lambda: None)
        finally:
            sys.setprofile(None)
    return sorted(seen)


def _split(files: list[str]) -> tuple[list[str], list[str]]:
    compute = [f for f in files if f.startswith(COMPUTE_TOPS)]
    return [f for f in files if f not in compute], compute


def test_an_in_process_step_runs_the_loop_the_backend_and_the_compute(tmp_path):
    orchestration, compute = _split(traced_step(0, tmp_path))
    assert orchestration == ORCHESTRATION[0]
    assert "worker.py" in compute and any(f.startswith("algorithms/") for f in compute)


@pytest.mark.ray
def test_a_ray_step_on_the_driver_runs_at_most_a_dozen_modules_above_the_compute(ray_local, tmp_path):
    orchestration, compute = _split(traced_step(2, tmp_path))
    assert orchestration == ORCHESTRATION[2]
    assert len(orchestration) <= 12
    assert compute == DRIVER_COMPUTE, "the Worker, models and algorithms run in the actors, not on the driver"
