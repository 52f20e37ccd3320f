"""One step's calls as an object: which block went to which actor at which attempt, until every group is filled.

A :class:`StepDispatch` sends actor ``k`` its contiguous block of groups
(:func:`~distmeta.runtime.ray.plan.assign_blocks`), waits for the answers, checks each
one (:mod:`distmeta.runtime.answers`), and re-runs a block whose actor died, hung past
``ray.step_timeout`` or answered wrongly on the next healthy actor, at most
``ray.max_retries`` times per block. Each group's slot is filled exactly once and results
come back in group order, whatever order the actors finish in. Past the retry budget,
:class:`~distmeta.runtime.ray.errors.WorkerFailedError` names the actors, nodes and tasks.
"""
from __future__ import annotations

import logging
import pickle
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import ray
from ray.exceptions import RayTaskError

from distmeta.runtime import answers
from distmeta.runtime.backend import StepStats
from distmeta.runtime.faults import Fault, FaultPlan
from distmeta.runtime.ray.actor import NEEDS_SETUP, Request
from distmeta.runtime.ray.errors import RETRIABLE, ActorLost, GraphCollateral, WorkerFailedError
from distmeta.runtime.ray.plan import assign_blocks, describe_tasks
from distmeta.runtime.ray.pool import ActorPool
from distmeta.runtime.ray.transport import Delivery, ObjectStoreDelivery
from distmeta.tasks.specs import TaskSpec, task_key
from distmeta.worker import GroupResult

log = logging.getLogger(__name__)

#: Times per block and step an actor may come back without its Worker before that counts as a failure.
MAX_REBUILDS = 3

#: ``check(block, value) -> problem or None``: whether an answer is what was asked for.
Check = Callable[[range, Any], "str | None"]


@dataclass
class Call:
    """One attempt at one block: sent to ``actor``, answer due by ``deadline`` (monotonic seconds)."""

    block: int
    actor: int
    attempt: int
    deadline: float
    fault: Fault | None = None  # the drill fault the call carried


class StepDispatch:
    """The calls of one ``compute`` or ``evaluate``: attempts, retries and deadlines as explicit state.

    Args:
        pool: the actors.
        method: ``"compute"`` or ``"evaluate"`` (the actor method called).
        groups: the step's task groups.
        args: the method's arguments after the specs (``(version,)`` for compute).
        check: validates an opened answer for its block.
        delivery: ``delivery(blocks)`` makes the step's transport parts (called on the first plain call).
        faults: the drill plan (empty in production); consulted per compute call.
        stats: filled as calls go out and answers come in.
        failures: every failed attempt is appended here (the backend keeps them for logs).
    """

    def __init__(self, pool: ActorPool, method: str, groups: list[list[TaskSpec]], args: tuple, check: Check,
                 delivery: Callable[[list[range]], Delivery], faults: FaultPlan, stats: StepStats,
                 failures: list[dict[str, Any]]) -> None:
        self.pool, self.method, self.groups, self.args, self.check = pool, method, groups, args, check
        self.faults, self.stats, self.failures = faults, stats, failures
        self._make_delivery = delivery
        self._delivery: Delivery | None = None
        self.timeout = pool.cfg.ray.step_timeout
        self.blocks = assign_blocks(len(groups), len(pool.actors))
        n = len(self.blocks)
        self.out: list[Any] = [None] * len(groups)
        self.filled = [False] * len(groups)
        self.attempts = [0] * n
        self.rebuilds = [0] * n
        self.reasons: list[list[str]] = [[] for _ in range(n)]
        self.pending: dict[Any, Call] = {}

    # ------------------------------------------------------------------ sending
    def block_specs(self, b: int) -> list[list[TaskSpec]]:
        return [self.groups[i] for i in self.blocks[b]]

    def fault_for(self, b: int, actor: int) -> Fault | None:
        """The drill fault this call carries (compute calls only; None without a plan)."""
        if self.method != "compute" or not self.faults:
            return None
        fault = self.faults.take(self.args[0], actor, [task_key(s) for g in self.block_specs(b) for s in g])
        if fault is not None:
            log.warning("injecting fault %s into actor %d at step %d", fault.kind, actor, self.args[0])
        return fault

    @property
    def delivery(self) -> Delivery:
        if self._delivery is None:
            self._delivery = self._make_delivery(self.blocks)
        return self._delivery

    def submit(self, b: int, actor: int, fault: Fault | None | str = "plan", wait_s: float | None = None) -> None:
        """Send block ``b`` to ``actor``.

        ``fault``: ``"plan"`` asks the drill plan; a re-send that is no one's failure passes
        None, and one whose first try never ran (the actor had to rebuild) passes that try's fault.
        """
        specs = pickle.dumps(self.block_specs(b), protocol=5)
        self.stats.spec_bytes += len(specs)
        parts = self.delivery.parts(b, actor, self.attempts[b])
        carried = self.fault_for(b, actor) if fault == "plan" else fault
        assert carried is None or isinstance(carried, Fault)
        request = Request(self.pool.generation, parts.meta, specs, parts.shm, carried, self.args)
        ref = getattr(self.pool.actors[actor], self.method).remote(request.dumps(), parts.meta_ref)
        self.pending[ref] = Call(b, actor, self.attempts[b], time.monotonic() + (wait_s or self.timeout), carried)
        self.stats.calls += 1

    def submit_all(self) -> None:
        """The first attempt of every non-empty block, to its own actor unless that one is dead or restarting."""
        deadline = time.monotonic() + self.timeout
        for b, block in enumerate(self.blocks):
            if len(block):
                self.submit(b, self.pool.pick(b, deadline))

    # ------------------------------------------------------------------ receiving
    def failed(self, call: Call, reason: str) -> None:
        """Count a failed attempt; re-send the block to the next healthy actor, or raise past the budget."""
        b = call.block
        self.reasons[b].append(f"attempt {call.attempt + 1} on {self.pool.where(call.actor)}: {reason}")
        self.failures.append({"method": self.method, "block": b, "actor": call.actor, "attempt": call.attempt,
                              "groups": (self.blocks[b].start, self.blocks[b].stop), "reason": reason,
                              "time": time.time()})
        self.pool.suspect.add(call.actor)
        self.attempts[b] += 1
        retries = self.pool.cfg.ray.max_retries
        if self.attempts[b] > retries:
            raise WorkerFailedError(
                f"{self.method}: {describe_tasks(self.groups, self.blocks[b])} failed on every attempt "
                f"(ray.max_retries={retries}):\n  " + "\n  ".join(self.reasons[b])
            )
        # The next actor that answers (with one actor: the same one, once Ray has restarted it).
        nxt = self.pool.pick((call.actor + 1) % len(self.pool.actors), time.monotonic() + self.timeout)
        log.warning("%s: %s; re-running its %d groups on actor %d", self.method, self.reasons[b][-1],
                    len(self.blocks[b]), nxt)
        self.stats.retries += 1
        self.submit(b, nxt)

    def receive(self, call: Call, fetch: Callable[[], Any]) -> None:
        """Read one actor's answer for a block: fill its groups, or count the failure and re-send the block."""
        try:
            answer = fetch()
        except RETRIABLE as err:
            return self.failed(call, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        except ActorLost as err:
            return self.failed(call, str(err))
        except GraphCollateral:  # re-sent as a plain call to the same actor; not counted as its failure
            return self.submit(call.block, call.actor, fault=None)
        except RayTaskError as err:
            raise WorkerFailedError(f"{self.method} raised on actor {call.actor} for "
                                    f"{describe_tasks(self.groups, self.blocks[call.block])}: {err}") from err
        if isinstance(answer, str) and answer == NEEDS_SETUP:  # a restarted (or reconfigured) process
            return self._rebuild(call)
        # A graph step's answers need no delivery (none is made for them); plain calls' answers read through theirs.
        delivery = self._delivery if self._delivery is not None else ObjectStoreDelivery({})
        answer, problem = delivery.receive(answer, call.block, call.actor, call.attempt)
        value = None
        if problem is None:
            value, problem = answers.open_answer(answer)
        problem = problem or self.check(self.blocks[call.block], value)
        if problem is not None:
            return self.failed(call, problem)
        self._fill(call, value)

    def _rebuild(self, call: Call) -> None:
        self.rebuilds[call.block] += 1
        if self.rebuilds[call.block] > MAX_REBUILDS:
            return self.failed(call, f"lost its Worker {MAX_REBUILDS} times in a row")
        self.pool.setup(call.actor)  # runs before the re-sent call (an actor runs calls in order)
        self.submit(call.block, call.actor, fault=call.fault, wait_s=self.pool.startup_timeout)

    def _fill(self, call: Call, value: list[Any]) -> None:
        for i, r in zip(self.blocks[call.block], value):
            assert not self.filled[i], f"group {i} answered twice"
            self.filled[i] = True
            self.out[i] = r
            if isinstance(r, GroupResult):
                r.extra["attempt"] = call.attempt
                self.pool.infos[call.actor]["pid"] = r.extra["pid"]  # a restarted actor has a new process

    def expire(self) -> None:
        """Give up on calls past their deadline: kill (Ray restarts) their actors and re-send their blocks."""
        now = time.monotonic()
        for ref, call in list(self.pending.items()):
            if call.deadline <= now and ref in self.pending:
                del self.pending[ref]  # a late answer is never read: each group is counted once
                self.pool.restart(call.actor)
                self.failed(call, f"no answer within ray.step_timeout={self.timeout:g}s")

    @property
    def shared_memory_calls(self) -> int:
        """Answers that came back through shared memory."""
        return self._delivery.shared_memory_calls if self._delivery is not None else 0

    def drain(self) -> list[Any]:
        """Wait for every pending call (re-running failures); the results in group order."""
        while self.pending:
            wait_s = max(0.0, min(c.deadline for c in self.pending.values()) - time.monotonic())
            ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=wait_s)
            if not ready:
                self.expire()
                continue
            call = self.pending.pop(ready[0])
            self.receive(call, lambda ref=ready[0]: ray.get(ref))
        return self.out


def run_plain(dispatch: StepDispatch, overlap: Callable[[], Any] | None = None) -> list[Any]:
    """A whole step as plain actor calls: send every block, run ``overlap`` meanwhile, collect in group order."""
    dispatch.submit_all()
    if overlap is not None:
        overlap()
    return dispatch.drain()


def graph_blocks(dispatch: StepDispatch) -> tuple[list[bytes], list[Fault | None]]:
    """Every actor's pickled block and drill fault for a compiled-graph step (actor ``k`` computes block ``k``)."""
    blocks = [pickle.dumps(dispatch.block_specs(b), protocol=5) for b in range(len(dispatch.blocks))]
    dispatch.stats.spec_bytes += sum(len(x) for x in blocks)
    dispatch.stats.calls += len(blocks)
    return blocks, [dispatch.fault_for(b, b) for b in range(len(blocks))]


def collect_graph(dispatch: StepDispatch, fetches: Sequence[Callable[[], Any]], faults: Sequence[Fault | None],
                  deadline: float) -> list[Any]:
    """Read a compiled-graph step's answers (a lost one is re-run as plain calls), then any re-runs."""
    for b, (fetch, fault) in enumerate(zip(fetches, faults)):
        dispatch.receive(Call(b, b, 0, deadline, fault), fetch)
    return dispatch.drain()
