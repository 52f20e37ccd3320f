"""Fault injection: the ``faults`` config switch that kills, stalls or poisons a chosen actor at a chosen step.

For tests, benchmarks and fire drills; empty (no faults) by default. In YAML::

    faults:
      - {kind: kill,  actor: 1, step: 3}               # SIGKILL actor 1's process when it gets step-3 work
      - {kind: stall, actor: 0, step: 2, seconds: 600}  # actor 0 sleeps first: past ray.step_timeout it is replaced
      - {kind: stale, actor: all, step: 4, times: 9}    # every actor answers for the previous parameter version
      - {kind: nan,   actor: 1, step: 5, task: 6}       # task 6 of step 5 gets a NaN loss and meta-gradient

or on the command line: ``distmeta train 'faults=[{kind: kill, actor: 1, step: 3}]'``.

``step`` is the 0-based meta-batch index (the ``step`` of the task keys ``(step, index)``).
A fault hits the first ``times`` calls that the actor gets for that step (a retry that
lands on the same actor again counts), so ``actor: all`` with a large ``times`` makes
every attempt fail and spends the retry budget. Kinds:

* ``kill``: the actor's process SIGKILLs itself before computing. Ray restarts it; its
  groups are recomputed on another actor. With ``workers: 0`` the worker is the driver
  process, so this kills the run (a driver crash, for ``--resume`` drills).
* ``stall``: the actor sleeps ``seconds`` before computing (alive but silent). Past
  ``ray.step_timeout`` its groups go to another actor and it is killed and restarted.
  With ``workers: 0`` the driver just sleeps.
* ``stale``: the actor answers for parameter version ``step - 1``; the backend rejects
  the result and recomputes the groups elsewhere (Ray workers only).
* ``nan``: task ``task`` of the step (default: the first task the actor gets) has a NaN
  loss and meta-gradient, as a diverging task would; ``nan_policy`` decides what follows.
  Only the actor holding that task is affected.

The Ray backend applies faults itself, per call, through ``WorkerActor.inject_fault``
(:class:`FaultPlan` keeps the counts on the driver, so a restarted actor is not hit again);
:func:`with_faults` wraps the in-process backend.

The plan lives in the driver process: a run resumed with the same ``faults`` meets them
again at their steps (pass ``faults=[]`` to resume without them). Faults change no numbers
(except ``nan``, by design): a run with them gives the parameters of the run without.
"""
from __future__ import annotations

import os
import signal
import time
from typing import Any, Callable, Sequence

from distmeta.config import Config, FaultConfig
from distmeta.tasks.specs import TaskSpec, task_key

#: ``WorkerActor.inject_fault`` kinds for the config's kinds.
ACTOR_KIND = {"kill": "kill", "stall": "hang", "stale": "stale", "nan": "nan"}


class FaultPlan:
    """The configured faults and how many calls each has left, per actor."""

    def __init__(self, faults: Sequence[FaultConfig]) -> None:
        self.faults = list(faults)
        self._used: dict[tuple[int, int], int] = {}
        self.fired: list[dict[str, Any]] = []  # every fault injected: {"kind", "step", "actor", "task"}

    def __bool__(self) -> bool:
        return bool(self.faults)

    def take(self, step: int, actor: int, keys: Sequence[tuple[int, int]] = ()) -> tuple[FaultConfig, tuple[int, int] | None] | None:
        """The fault for ``actor``'s next call at ``step`` (consuming one of its ``times``), or None.

        ``keys``: the task keys of the call; a ``nan`` fault fires only on the call holding its
        task, and the second value is the task to poison.
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
            self.fired.append({"kind": f.kind, "step": step, "actor": actor, "task": target})
            return f, target
        return None


def kill_self() -> None:
    """SIGKILL this process: no cleanup, no finally blocks, as a preempted node or an OOM kill would."""
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # pragma: no cover - the signal is delivered first


class InProcessFaults:
    """``workers: 0`` with faults: the in-process backend, with its one Worker as actor 0 (in the driver's process)."""

    def __init__(self, backend: Any, plan: FaultPlan) -> None:
        self.backend = backend
        self.plan = plan

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def compute(self, meta: dict[str, Any], groups: Sequence[Sequence[TaskSpec]], version: int,
                overlap: Callable[[], Any] | None = None) -> list:
        keys = [task_key(s) for g in groups for s in g]
        hit = self.plan.take(version, 0, keys)
        if overlap is not None:
            overlap()
        if hit is None:
            return self.backend.compute(meta, groups, version)
        fault, target = hit
        if fault.kind == "kill":
            kill_self()
        if fault.kind == "stall":
            time.sleep(fault.seconds)
        worker = self.backend.worker
        worker.poisoned = {target} if fault.kind == "nan" else set()
        try:
            return self.backend.compute(meta, groups, version)
        finally:
            worker.poisoned = set()

    def close(self) -> None:
        self.backend.close()


def with_faults(backend: Any, cfg: Config) -> Any:
    """The backend, wrapped for ``cfg.faults`` when it is the in-process one (the Ray backend applies its own)."""
    if cfg.workers == 0 and cfg.faults:
        return InProcessFaults(backend, FaultPlan(cfg.faults))
    return backend
