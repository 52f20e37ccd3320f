"""The in-process backend: one Worker in the driver's own process (``resources.workers: 0``).

It implements :class:`~distmeta.training.backend.Backend` with no Ray at all, which makes
it the reference every other backend is tested against.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from distmeta.config import Config
from distmeta.results import GroupResult, StepStats
from distmeta.tasks.specs import TaskSpec
from distmeta.worker import Worker


class LocalBackend:
    """Runs every task group on one in-process :class:`Worker`, in group order.

    Args:
        cfg: the run's config.
        worker_args: :meth:`~distmeta.experiment.Experiment.worker_args`, the Worker's data.
    """

    def __init__(self, cfg: Config, worker_args: dict[str, Any]) -> None:
        self.worker = Worker(cfg, **worker_args)
        self.num_workers = 1
        self._stats = StepStats()

    @property
    def initial_meta(self) -> dict[str, torch.Tensor]:
        return self.worker.initial_meta

    def compute(self, meta: dict[str, Any], groups: Sequence[Sequence[TaskSpec]], version: int,
                overlap: Callable[[], Any] | None = None) -> list[GroupResult]:
        """Every group's result, in order; ``overlap`` (driver work independent of the results) runs first."""
        if overlap is not None:
            overlap()
        t0 = time.perf_counter()
        results = self.worker.meta_grad_groups(meta, groups, version)
        wall = time.perf_counter() - t0
        self._stats = StepStats(calls=1, actor_compute_s={0: wall}, wall_s=wall)
        return results

    def evaluate(
        self, meta: dict[str, Any], groups: Sequence[Sequence[TaskSpec]], inner_steps: int, cache_key: str | None = None,
        baseline: bool = False,
    ) -> list[dict[str, list[float]]]:
        """Per-episode metrics of each group (see :meth:`Worker.evaluate`)."""
        return [self.worker.evaluate(meta, g, inner_steps, cache_key, baseline) for g in groups]

    def group_peak(self, meta: dict[str, Any], specs: Sequence[TaskSpec]) -> int:
        """Peak bytes of one group's meta-gradient on the in-process Worker's device."""
        return self.worker.group_peak(meta, specs)

    def stats(self) -> StepStats:
        """The last step's calls and compute time."""
        return self._stats

    def close(self) -> None:
        """Nothing to release: the Worker goes with this object."""
