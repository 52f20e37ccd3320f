"""The in-process backend: one Worker in the driver's own process (``workers: 0``)."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from distmeta.config import Config
from distmeta.tasks.specs import TaskSpec
from distmeta.worker import GroupResult, Worker


class LocalBackend:
    """Runs every task group on one in-process :class:`Worker`, in group order."""

    def __init__(self, cfg: Config, worker_args: dict[str, Any]) -> None:
        self.worker = Worker(cfg, **worker_args)
        self.num_workers = 1

    @property
    def initial_meta(self):
        return self.worker.initial_meta

    def compute(self, meta: dict[str, Any], groups: Sequence[Sequence[TaskSpec]], version: int,
                overlap: Callable[[], Any] | None = None) -> list[GroupResult]:
        """Every group's result, in order; ``overlap`` (driver work independent of the results) runs first."""
        if overlap is not None:
            overlap()
        return self.worker.meta_grad_groups(meta, groups, version)

    def evaluate(
        self, meta: dict[str, Any], groups: Sequence[Sequence[TaskSpec]], inner_steps: int, cache_key: str | None = None,
        baseline: bool = False,
    ) -> list[dict[str, list[float]]]:
        """Per-episode metrics of each group (see :meth:`Worker.evaluate`)."""
        return [self.worker.evaluate(meta, g, inner_steps, cache_key, baseline) for g in groups]

    def close(self) -> None:
        pass
