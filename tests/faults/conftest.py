"""Fault-tolerance tests: shared actors, an independent reference, and what the driver reduced.

Every test compares against a reference that does not share the code under test: the
run without the fault (``workers=0``, no faults) or :func:`reference_params`, the
plainest meta-training loop (one in-process Worker, groups summed in order), which
knows nothing of backends, retries, faults or ``nan_policy``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import distmeta
from distmeta.config import Config, load_config
from distmeta.training.backend import Lent, make_backend
from tests.helpers import QUIET, SINUSOID_TINY, pairwise_tree_sum

#: Two actors on a quarter CPU each: they fit the session's 2-CPU Ray with room to restart.
RAY2 = ["resources.workers=2", "resources.cpus_per_worker=0.25"]
#: Sinusoid MAML, 8 tasks in 4 groups of 2: actor 0 gets groups 0-1 (tasks 0-3), actor 1 groups 2-3 (tasks 4-7).
BASE = [*SINUSOID_TINY, *QUIET, "train.steps=4", "run.log_every=1"]


class FaultPool(dict):
    """Ray backends by actor count, lent to Trainers as their ``backend_factory``.

    ``workers: 0`` gets a fresh in-process backend; ``workers: N`` the pool's backend with N
    actors, rebuilt for the config by :meth:`RayBackend.reconfigure` (as after a restart).
    """

    def __call__(self, cfg: Config, exp: Any) -> Any:
        if cfg.resources.workers == 0:
            return make_backend(cfg, exp)
        if cfg.resources.workers in self:
            self[cfg.resources.workers].reconfigure(cfg, exp.worker_args())
        else:
            self[cfg.resources.workers] = make_backend(cfg, exp)
        return Lent(self[cfg.resources.workers])


@pytest.fixture(scope="package")
def fault_pool(ray_local):
    """The package's :class:`FaultPool`, closed at its end.

    Starting an actor costs seconds (a Python process importing torch); the tests reuse them.
    """
    pools = FaultPool()
    yield pools
    for backend in pools.values():
        backend.close()
        assert backend.actors == []


@pytest.fixture
def pooled(fault_pool):
    """The pool, for ``Trainer(backend_factory=pooled)``; afterwards every actor is back."""
    yield fault_pool
    for backend in fault_pool.values():
        backend.wait_ready(240)  # a killed or stalled actor is restarted before the next test


class StepLog:
    """A Trainer callback keeping, per step, the task keys the driver reduced and who computed them."""

    def __init__(self, on_step: Any = None) -> None:
        self.steps: list[dict[str, Any]] = []
        self.on_step = on_step

    def __call__(self, event: str, trainer: Any, payload: dict) -> None:
        if event != "step":
            return
        results = payload["results"]
        stats = trainer.backend.stats()
        self.steps.append({
            "step": payload["step"], "tasks": list(payload["tasks"]), "skipped": list(payload["skipped"]),
            "actors": [r.extra.get("actor", 0) for r in results], "pids": [r.extra.get("pid") for r in results],
            "versions": [r.version for r in results], "retries": stats.retries,
        })
        if self.on_step is not None:
            self.on_step(payload["step"], trainer)

    def assert_each_task_once(self, steps: int, meta_batch: int, skipped: dict[int, set[int]] | None = None) -> None:
        """Step s reduced exactly tasks (s, 0..meta_batch-1), each once, minus the ones meant to be skipped."""
        skipped = skipped or {}
        assert [s["step"] for s in self.steps] == list(range(steps))
        for s in self.steps:
            want = [(s["step"], i) for i in range(meta_batch) if i not in skipped.get(s["step"], set())]
            assert s["tasks"] == want, f"step {s['step']}: reduced {s['tasks']}"
            assert len(set(s["tasks"])) == len(s["tasks"]), "a task counted twice"


def cfg_of(overrides: list[str], run_dir: Path) -> Config:
    return load_config(None, [*overrides, f"run.dir={run_dir}"])


def fit(overrides: list[str], run_dir: Path, on_step: Any = None,
        backend_factory: Any = None) -> tuple[dict[str, torch.Tensor], StepLog, Any]:
    """Meta-train; the final parameters, the per-step log and the (closed) trainer."""
    log = StepLog(on_step)
    with distmeta.Trainer(cfg_of(overrides, run_dir), callbacks=[log], backend_factory=backend_factory) as trainer:
        trainer.fit()
    return trainer.meta_params, log, trainer


def reference_params(cfg: Config, steps: int | None = None, skip_tasks: dict[int, set[int]] | None = None,
                     skip_steps: set[int] | frozenset = frozenset()) -> dict[str, torch.Tensor]:
    """The plainest meta-training loop: one Worker, tasks sampled by step, groups summed pairwise, mean, update.

    ``skip_tasks[s]``: task indices of step ``s`` left out (their group computed without them);
    ``skip_steps``: steps with no update.
    """
    from distmeta.experiment import prepare_experiment
    from distmeta.groups import chunks
    from distmeta.models import DTYPES
    from distmeta.optim import OuterOptimizer

    skip_tasks = skip_tasks or {}
    exp = prepare_experiment(cfg)
    worker = distmeta.Worker(cfg, **exp.worker_args())
    opt = OuterOptimizer(cfg.outer, worker.initial_meta, seed=cfg.seed)
    sampler, dtype = exp.sampler("train"), DTYPES[cfg.dtype]
    for step in range(cfg.train.steps if steps is None else steps):
        if step in skip_steps:
            continue
        specs = sampler.batch(step, cfg.train.meta_batch)
        drop = skip_tasks.get(step, set())
        groups = [[s for s in specs[r.start: r.stop] if s.index not in drop] for r in chunks(len(specs), cfg.algorithm.group_size)]
        meta = {n: p.detach().numpy() for n, p in opt.params.items()}
        per_group = []  # a group whose tasks were all dropped adds zeros: the summation tree keeps its shape
        for g in groups:
            grad = worker.meta_grad(meta, g).grad if g else None
            per_group.append({n: torch.from_numpy(np.array(grad[n])).to(dtype) if grad is not None
                              else torch.zeros_like(opt.params[n]) for n in opt.names})
        total = pairwise_tree_sum(per_group)
        used = sum(len(g) for g in groups)
        opt.step({n: total[n] / used for n in opt.names})
    return {n: p.detach().clone() for n, p in opt.params.items()}


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys(), what
    for n in a:
        assert a[n].dtype == b[n].dtype, f"{what}: {n} dtype"
        assert torch.equal(a[n], b[n]), f"{what}: parameter {n} differs (max |diff| {(a[n] - b[n]).abs().max():.3g})"


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[n].double() - b[n].double()).abs().max()) for n in a)


def train_rows(run_dir: Path) -> list[dict]:
    """The metrics.jsonl rows that have train/ keys, in file order."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if any(k.startswith("train/") for k in r)]


@pytest.fixture(scope="package")
def no_fault_params(tmp_path_factory):
    """The run without any fault (in-process, ``BASE``): the reference for every fault that must change nothing."""
    run = tmp_path_factory.mktemp("nofault") / "run"
    params, log, _ = fit(BASE, run)
    log.assert_each_task_once(4, 8)
    return params
