"""Peak-memory measurement and ``algorithm.group_size: auto`` (issue 14)."""
from __future__ import annotations

import pytest
import torch

from distmeta.groups.sizing import (
    MB,
    MemoryBudgetError,
    choose_group_size,
    cpu_peak_supported,
    peak_memory,
)

pytestmark = pytest.mark.skipif(not cpu_peak_supported(), reason="needs Linux /proc/self/clear_refs")


def test_peak_memory_sees_a_transient_allocation():
    def work():
        big = torch.ones(64 * MB // 8, dtype=torch.float64)  # 64 MB, freed before returning
        return float(big.sum())

    out, peak = peak_memory(work)
    assert out == 64 * MB // 8
    assert 56 * MB <= peak <= 96 * MB, peak / MB


def linear(base_mb: float, per_task_mb: float):
    calls = []

    def measure(g: int) -> int:
        calls.append(g)
        return int((base_mb + g * per_task_mb) * MB)
    return measure, calls


def test_auto_group_size_is_the_largest_that_fits():
    measure, calls = linear(10, 4)
    size, seen = choose_group_size(measure, meta_batch=16, budget_bytes=40 * MB)
    assert size == 7 and seen[7] <= 40 * MB  # 10 + 7*4 = 38 <= 40 < 42
    assert calls[:2] == [1, 2]
    size, _ = choose_group_size(linear(10, 4)[0], meta_batch=5, budget_bytes=1000 * MB)
    assert size == 5, "never more than the meta-batch"


def test_auto_group_size_shrinks_when_the_prediction_does_not_fit():
    def measure(g: int) -> int:  # super-linear beyond 2 tasks
        return int((10 + 4 * g + (g > 2) * 3 * g * g) * MB)
    size, seen = choose_group_size(measure, meta_batch=16, budget_bytes=60 * MB)
    assert seen[size] <= 60 * MB and (size + 1 not in seen or seen[size + 1] > 60 * MB)
    assert size == 3


def test_a_budget_one_task_does_not_fit_is_a_clear_error():
    with pytest.raises(MemoryBudgetError, match=r"group of 1 task peaks at 14\.0 MB.*memory_budget_mb=12"):
        choose_group_size(linear(10, 4)[0], meta_batch=8, budget_bytes=12 * MB)


def test_resolve_group_size_on_a_real_worker():
    from distmeta.config import load_config
    from distmeta.experiment import prepare_experiment
    from distmeta.groups.sizing import resolve_group_size
    from distmeta.training.in_process import LocalBackend

    base = ["data.source=sinusoid", "model.name=mlp", "algorithm.name=maml", "train.meta_batch=8", "resources.workers=0",
            "resources.threads=1", "data.shots=10", "data.queries=10"]
    cfg = load_config(None, [*base, "algorithm.group_size=auto", "algorithm.memory_budget_mb=4096"])
    exp = prepare_experiment(cfg)
    specs = exp.sampler("train").batch(0, 8)
    backend = LocalBackend(cfg, exp.worker_args())
    meta = {n: t.numpy() for n, t in backend.initial_meta.items()}
    measured: list[int] = []

    def group_peak(group):
        measured.append(len(group))
        return backend.group_peak(meta, group)

    assert resolve_group_size(cfg, group_peak, specs) == 8
    assert measured[:2] == [1, 2], "a group of one task, then two"
    assert resolve_group_size(load_config(None, [*base, "algorithm.group_size=3"]), group_peak, specs) == 3
    with pytest.raises(MemoryBudgetError, match=r"algorithm.group_size=8 peaks at .* MB per actor, over "
                                                 r"algorithm.memory_budget_mb=1e-06"):
        resolve_group_size(load_config(None, [*base, "algorithm.group_size=8", "algorithm.memory_budget_mb=0.000001"]),
                           group_peak, specs)


def test_group_peak_grows_with_the_group():
    """The replica's measurement is of the group it is given: 32 tasks of a wide MLP peak well above 1."""
    from distmeta.config import load_config
    from distmeta.experiment import prepare_experiment
    from distmeta.worker import Worker

    cfg = load_config(None, ["data.source=sinusoid", "model.name=mlp", "model.hidden=[512,512]", "algorithm.name=maml",
                             "resources.workers=0", "resources.threads=1", "data.shots=50", "data.queries=50", "dtype=float64",
                             "algorithm.vmap=true"])
    exp = prepare_experiment(cfg)
    worker = Worker(cfg, **exp.worker_args())
    meta = {n: t.numpy() for n, t in worker.initial_meta.items()}
    specs = exp.sampler("train").batch(0, 32)
    one, many = worker.group_peak(meta, specs[:1]), worker.group_peak(meta, specs)
    assert many > 4 * max(one, 1), (one / MB, many / MB)


def test_trainer_chunks_by_the_measured_group_size(tmp_path):
    from distmeta.config import load_config
    from distmeta.training.trainer import Trainer

    cfg = load_config(None, ["data.source=sinusoid", "model.name=mlp", "algorithm.name=maml", "train.meta_batch=4",
                             "train.steps=2", "resources.workers=0", "resources.threads=1", "algorithm.group_size=auto",
                             "algorithm.memory_budget_mb=4096", "run.progress=false", "run.checkpoint_every=0",
                             "run.eval_every=0", "eval.episodes=4", "eval.batch=4", f"run.dir={tmp_path / 'run'}"])
    with Trainer(cfg) as trainer:
        trainer.fit()
        assert trainer.group_size == 4
