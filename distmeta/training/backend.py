"""The one interface between the driver and whatever computes meta-gradients.

A backend holds model replicas and answers two questions for a list of task groups:
the summed meta-gradient of each group (:meth:`Backend.compute`) and per-episode
metrics after adaptation (:meth:`Backend.evaluate`), always in group order, so the
driver's fixed-order reduction gives the same parameters whatever computed them.

Two implement it: :class:`~distmeta.training.in_process.LocalBackend` (one Worker in the
driver's process, ``resources.workers: 0``) and :class:`~distmeta.distributed.ray_backend.RayBackend`
(a pool of Ray actors). :func:`make_backend` picks one from the config; a
:class:`~distmeta.training.trainer.Trainer` takes any other through its
``backend_factory`` argument (tests, sweeps that lend a pool of actors to many runs)::

    trainer = Trainer(cfg, backend_factory=lambda cfg, exp: MyBackend(cfg, exp.worker_args()))

Nothing outside a backend reads its private fields: what a caller may know is here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, runtime_checkable

import torch

if TYPE_CHECKING:  # pragma: no cover
    from distmeta.config import Config
    from distmeta.experiment import Experiment
    from distmeta.results import GroupResult
    from distmeta.tasks.specs import TaskSpec

from distmeta.results import StepStats
from distmeta.training.in_process import LocalBackend


@runtime_checkable
class Backend(Protocol):
    """Model replicas computing meta-gradients and evaluations of task groups, in group order."""

    num_workers: int

    @property
    def initial_meta(self) -> dict[str, torch.Tensor]:
        """The meta-parameters every replica starts from (the same on all: built from ``cfg.seed``)."""
        ...

    def compute(self, meta: dict[str, Any], groups: Sequence[Sequence[TaskSpec]], version: int,
                overlap: Callable[[], Any] | None = None) -> list[GroupResult]:
        """The summed meta-gradient of each group, in group order, all at parameter ``version``.

        Args:
            meta: the meta-parameters (numpy arrays or tensors) by name.
            groups: task specs, one list per group; a group is summed as one unit.
            version: the step these parameters belong to; an answer for another is refused.
            overlap: driver work that does not need the results (the next step's sampling),
                run once every worker has its share.

        Returns:
            One :class:`~distmeta.results.GroupResult` per group, in the order of ``groups``.
        """
        ...

    def evaluate(self, meta: dict[str, Any], groups: Sequence[Sequence[TaskSpec]], inner_steps: int,
                 cache_key: str | None = None, baseline: bool = False) -> list[dict[str, list[float]]]:
        """Per-episode metrics of each episode group, in group order (see :meth:`Worker.evaluate`)."""
        ...

    def group_peak(self, meta: dict[str, Any], specs: Sequence[TaskSpec]) -> int:
        """Peak memory in bytes of one group's meta-gradient on a replica's own device (see :meth:`Worker.group_peak`).

        What ``algorithm.group_size: auto`` and ``memory_budget_mb`` measure: on the
        replica, so a GPU actor measures its GPU, whatever the driver runs on.
        """
        ...

    def stats(self) -> StepStats:
        """What the last :meth:`compute` moved, retried and computed where."""
        ...

    def close(self) -> None:
        """Release the replicas (actors, placement group, shared memory); idempotent."""
        ...


@runtime_checkable
class ReusableBackend(Backend, Protocol):
    """A backend whose replicas can be rebuilt for another config: a pool lent to many runs (sweeps, tests)."""

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run (a closed pool is never lent again)."""
        ...

    def reconfigure(self, cfg: Config, worker_args: dict[str, Any]) -> None:
        """Rebuild every replica's Worker for ``cfg`` on the same actors (same number and size)."""
        ...

    def placement(self) -> dict[str, Any]:
        """Where the replicas live: ``{"placement_group": hex id or "", "owns_placement_group": bool, "workers": n}``."""
        ...

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until every replica answers again (after restarts)."""
        ...


#: ``factory(cfg, experiment) -> Backend``: how a Trainer gets its backend.
BackendFactory = Callable[["Config", "Experiment"], Backend]


def make_backend(cfg: Config, exp: Experiment) -> Backend:
    """The backend ``cfg`` asks for: in-process for ``resources.workers: 0``, a Ray actor pool otherwise.

    With ``faults`` in the config (a drill) the backend is the drilled one of
    :mod:`distmeta.drills`: the in-process Worker wrapped by a
    :class:`~distmeta.drills.faults.DrilledWorker`, or a
    :class:`~distmeta.drills.ray_drill.DrilledRayBackend`. Without, nothing of the drills runs.

    Args:
        cfg: the run's config.
        exp: the prepared experiment; its :meth:`~distmeta.experiment.Experiment.worker_args`
            build every replica.

    Returns:
        A started backend; the caller closes it.
    """
    if cfg.resources.workers == 0:
        backend = LocalBackend(cfg, exp.worker_args())
        if cfg.faults:
            from distmeta.drills.faults import DrilledWorker, FaultPlan, check_actors

            check_actors(cfg.faults, 1)
            backend.worker = DrilledWorker(backend.worker, FaultPlan(cfg.faults))
        return backend
    if cfg.faults:
        from distmeta.drills.ray_drill import DrilledRayBackend

        return DrilledRayBackend(cfg, exp.worker_args())
    from distmeta.distributed.ray_backend import RayBackend

    return RayBackend(cfg, exp.worker_args())


class Lent:
    """A pooled backend lent to one run: every call goes through, but ``close()`` keeps the replicas.

    The pool's owner closes the backend itself when the last run is done.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.num_workers = backend.num_workers

    @property
    def initial_meta(self) -> dict[str, torch.Tensor]:
        return self.backend.initial_meta

    def compute(self, meta: dict[str, Any], groups: Sequence[Sequence[TaskSpec]], version: int,
                overlap: Callable[[], Any] | None = None) -> list[GroupResult]:
        return self.backend.compute(meta, groups, version, overlap)

    def evaluate(self, meta: dict[str, Any], groups: Sequence[Sequence[TaskSpec]], inner_steps: int,
                 cache_key: str | None = None, baseline: bool = False) -> list[dict[str, list[float]]]:
        return self.backend.evaluate(meta, groups, inner_steps, cache_key, baseline)

    def group_peak(self, meta: dict[str, Any], specs: Sequence[TaskSpec]) -> int:
        return self.backend.group_peak(meta, specs)

    def stats(self) -> StepStats:
        return self.backend.stats()

    def close(self) -> None:
        """Nothing: the replicas stay with the pool's owner."""
