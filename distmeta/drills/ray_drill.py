"""Fault drills over Ray: actors that ask a plan, kept in an actor of its own, whether to fail a call.

:class:`DrilledRayBackend` is a :class:`~distmeta.distributed.ray_backend.RayBackend` whose
actors run :class:`DrilledWorkerActor`-style subclasses of the production actor: before a
compute call, an actor asks the :class:`PlanHolder` for the call's fault (by step, its own
index and the call's task keys), and computes on a
:class:`~distmeta.drills.faults.FaultyWorker` when it gets one. The plan lives in its own
zero-CPU actor so its counts survive the actors it kills and restarts: a fault with
``times: 1`` hits once, however often the block is re-run. Nothing of this reaches the
production path: the factory builds this backend only when ``faults`` is not empty.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import ray

from distmeta.config import Config, FaultConfig
from distmeta.distributed.actor import WorkerActor
from distmeta.distributed.ray_backend import RayBackend
from distmeta.drills.faults import Fault, FaultPlan, FaultyWorker, check_actors, keys_of
from distmeta.tasks.specs import TaskSpec

log = logging.getLogger(__name__)


class PlanHolder:
    """A :class:`FaultPlan` in an actor of its own (``ray.remote`` below): the one count every drilled actor asks."""

    def __init__(self, faults: Sequence[FaultConfig]) -> None:
        self.plan = FaultPlan(faults)

    def take(self, step: int, actor: int, keys: list[tuple[int, int]]) -> Fault | None:
        """The fault for ``actor``'s call at ``step`` with tasks ``keys`` (see :meth:`FaultPlan.take`)."""
        fault = self.plan.take(step, actor, keys)
        if fault is not None:
            log.warning("injecting fault %s into actor %d at step %d", fault.kind, actor, step)
        return fault

    def replace(self, faults: Sequence[FaultConfig]) -> None:
        """Start over with another list of faults (a reconfigured backend, a test's next drill)."""
        self.plan = FaultPlan(faults)


def drilled_actor_class(holder: Any) -> type:
    """A subclass of the production actor whose compute calls ask ``holder`` (a :class:`PlanHolder` actor) for faults.

    Made per backend, so Ray ships it by value with the holder's handle inside.
    """

    class DrilledWorkerActor(WorkerActor):
        def compute_worker(self, groups: list[list[TaskSpec]], version: int) -> Any:
            fault = ray.get(holder.take.remote(version, self.index, keys_of(groups)))
            return self.worker if fault is None else FaultyWorker(self.worker, fault, f"actor {self.index}")

    return DrilledWorkerActor


class DrilledRayBackend(RayBackend):
    """The Ray backend with the config's ``faults`` injected into its actors (tests, benchmarks, fire drills).

    Args:
        cfg: the run's config; ``cfg.faults`` is the drill.
        worker_args: as for :class:`~distmeta.distributed.ray_backend.RayBackend`.
    """

    def __init__(self, cfg: Config, worker_args: dict[str, Any]) -> None:
        self.holder: Any = None
        super().__init__(cfg, worker_args)

    def actor_class(self) -> type:
        """The drilled actor, bound to a new plan holder (Ray is up by now; :meth:`_load` gives it the drill)."""
        self.holder = ray.remote(PlanHolder).options(num_cpus=0).remote([])
        return drilled_actor_class(self.holder)

    def _load(self, cfg: Config, worker_args: dict[str, Any]) -> None:
        assert self.pool is not None
        check_actors(cfg.faults, len(self.pool.actors))
        self.set_faults(cfg.faults)
        super()._load(cfg, worker_args)

    def set_faults(self, faults: Sequence[FaultConfig]) -> None:
        """Replace the drill: from the next call on, ``faults`` (counted afresh) is what the actors meet."""
        ray.get(self.holder.replace.remote(list(faults)))

    def close(self) -> None:
        """Free the plan holder, then close the backend (which may shut down the Ray it started)."""
        if self.holder is not None:
            try:
                ray.kill(self.holder)
            except Exception:  # noqa: BLE001 - Ray is already gone
                pass
            self.holder = None
        super().close()
