"""Fault injection from outside: the ``faults`` config switch kills, stalls or poisons a chosen worker at a chosen step.

For tests, benchmarks and fire drills; empty (no faults) by default, and then nothing of
this module runs. In YAML::

    faults:
      - {kind: kill,  actor: 1, step: 3}               # SIGKILL actor 1's process when it gets step-3 work
      - {kind: stall, actor: 0, step: 2, seconds: 600}  # actor 0 sleeps first: past ray.step_timeout it is replaced
      - {kind: stale, actor: all, step: 4, times: 9}    # every actor answers for the previous parameter version
      - {kind: nan,   actor: 1, step: 5, task: 6}       # task 6 of step 5 gets a NaN loss and meta-gradient

or on the command line: ``distmeta train 'faults=[{kind: kill, actor: 1, step: 3}]'``.

``step`` is the 0-based meta-batch index (the ``step`` of the task keys ``(step, index)``).
A fault hits the first ``times`` calls that the actor gets for that step (a retry that
lands on the same actor again counts), so ``actor: all`` with a large ``times`` makes
every attempt fail and spends the retry budget. Kinds (see
:class:`~distmeta.config.FaultConfig`): ``kill``, ``exit``, ``stall``, ``stale``, ``nan``, ``raise``.
With ``resources.workers: 0`` the worker is the driver process, so ``kill``/``exit`` end the run (a
driver crash, for ``--resume`` drills) and ``stall`` just sleeps.

How it stays outside the production code: the backend factory
(:func:`distmeta.training.backend.make_backend`) wraps the backend only when ``faults`` is
not empty. One :class:`FaultPlan` counts each fault's calls (so a restarted actor is not hit
again); every compute call asks it for its :class:`Fault`, and a call that gets one runs on
a :class:`FaultyWorker` wrapping the real Worker for that call only. In-process the plan
sits in a :class:`DrilledWorker`; over Ray in a small actor of its own that every drilled
actor asks (:mod:`distmeta.drills.ray_drill`), so it outlives the actors it kills. A run
resumed with the same ``faults`` meets them again at their steps (pass ``faults=[]`` to
resume without them). Faults change no numbers (except ``nan``, by design): a run with
them gives the parameters of the run without.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from distmeta.config import FaultConfig
from distmeta.tasks.specs import TaskSpec, task_key


@dataclass(frozen=True)
class Fault:
    """What one call must do wrong: ``kind`` of :class:`~distmeta.config.FaultConfig`, with its arguments."""

    kind: str
    seconds: float = 3600.0
    task: tuple[int, int] | None = None  # nan: the key of the task to poison


class FaultPlan:
    """The configured faults and how many calls each has left, per actor (kept apart from the actors it hits)."""

    def __init__(self, faults: Sequence[FaultConfig]) -> None:
        self.faults = list(faults)
        self._used: dict[tuple[int, int], int] = {}

    def __bool__(self) -> bool:
        return bool(self.faults)

    def take(self, step: int, actor: int, keys: Sequence[tuple[int, int]] = ()) -> Fault | None:
        """The fault for ``actor``'s next call at ``step`` (consuming one of its ``times``), or None.

        Args:
            step: the parameter version of the call (the meta-batch index).
            actor: the actor the call goes to.
            keys: the task keys of the call; a ``nan`` fault fires only on the call holding its task.

        Returns:
            The fault to send with the call, or None for a plain call.
        """
        for i, f in enumerate(self.faults):
            if f.step != step or f.actor not in (actor, "all"):
                continue
            if self._used.get((i, actor), 0) >= f.times:
                continue
            target = None
            if f.kind == "nan":
                target = (step, f.task) if f.task is not None else (keys[0] if keys else None)
                if target is None or target not in keys:
                    continue
            self._used[(i, actor)] = self._used.get((i, actor), 0) + 1
            return Fault(f.kind, f.seconds, target)
        return None


def kill_self() -> None:
    """SIGKILL this process: no cleanup, no finally blocks, as a preempted node or an OOM kill would."""
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # pragma: no cover - the signal is delivered first


@contextlib.contextmanager
def poisoned(worker: Any, keys: set[tuple[int, int]]) -> Iterator[None]:
    """While open, the tasks ``keys`` get a NaN loss and meta-gradient on ``worker``, as if they had diverged.

    It shadows the Worker's per-group computation on this one instance, so the Worker's
    own NaN handling (finding the bad tasks, ``nan_policy: skip_task``) runs unchanged.
    """
    original = worker._group_grad

    def group_grad(params: Any, specs: Sequence[TaskSpec]) -> tuple[dict[str, np.ndarray], dict[str, list[float]]]:
        grad, metrics = original(params, specs)
        hit = [i for i, s in enumerate(specs) if task_key(s) in keys]
        if hit:
            grad = {n: g + np.asarray(np.nan, dtype=g.dtype) for n, g in grad.items()}
            for i in hit:
                metrics["loss"][i] = float("nan")
        return grad, metrics

    worker._group_grad = group_grad
    try:
        yield
    finally:
        del worker._group_grad  # the class's method again


class FaultyWorker:
    """A Worker that fails one call the way ``fault`` says; built per call, only when a call carries a fault."""

    def __init__(self, worker: Any, fault: Fault, where: str = "the worker") -> None:
        self.worker = worker
        self.fault = fault
        self.where = where

    def _before(self) -> None:
        kind = self.fault.kind
        if kind == "exit":
            os._exit(1)
        if kind == "kill":
            kill_self()
        if kind == "stall":
            time.sleep(self.fault.seconds)
        if kind == "raise":
            raise RuntimeError(f"injected fault in {self.where}")

    def meta_grad_groups(self, meta: dict[str, Any], groups: Sequence[Sequence[TaskSpec]], version: int = 0) -> list:
        """:meth:`Worker.meta_grad_groups`, failed as the fault says."""
        self._before()
        keys = {self.fault.task} if self.fault.kind == "nan" and self.fault.task is not None else set()
        with poisoned(self.worker, keys):
            results = self.worker.meta_grad_groups(meta, groups, version)
        if self.fault.kind == "stale":
            for r in results:
                r.version = version - 1
        return results

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, list[float]]:
        """:meth:`Worker.evaluate`, failed as the fault says."""
        self._before()
        return self.worker.evaluate(*args, **kwargs)


def check_actors(faults: Sequence[FaultConfig], actors: int) -> None:
    """Refuse a fault aimed at an actor the backend does not have (``faults.<i>.actor``)."""
    from distmeta.errors import ConfigError

    for i, f in enumerate(faults):
        if isinstance(f.actor, int) and f.actor >= actors:
            raise ConfigError(f"faults.{i}.actor={f.actor}: this backend has {actors} actor{'s' * (actors != 1)}")


def keys_of(groups: Sequence[Sequence[TaskSpec]]) -> list[tuple[int, int]]:
    """The task keys of a call's groups, in order (what a ``nan`` fault is aimed at)."""
    return [task_key(s) for g in groups for s in g]


class DrilledWorker:
    """The in-process Worker with a drill plan: each ``meta_grad_groups`` call asks ``plan`` for its fault (as actor 0).

    Everything else is the Worker's own (attribute access goes through), so the in-process
    backend cannot tell it from a Worker.
    """

    def __init__(self, worker: Any, plan: FaultPlan, where: str = "the in-process worker") -> None:
        self.worker, self.plan, self.where = worker, plan, where

    def __getattr__(self, name: str) -> Any:
        return getattr(self.worker, name)

    def meta_grad_groups(self, meta: dict[str, Any], groups: Sequence[Sequence[TaskSpec]], version: int = 0) -> list:
        """:meth:`Worker.meta_grad_groups`, failed as the plan says for this call."""
        fault = self.plan.take(version, 0, keys_of(groups))
        worker = self.worker if fault is None else FaultyWorker(self.worker, fault, self.where)
        return worker.meta_grad_groups(meta, groups, version)
