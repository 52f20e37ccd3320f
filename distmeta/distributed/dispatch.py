"""One step's calls as an object: which block went to which actor at which attempt, until every group is filled.

A :class:`StepDispatch` sends actor ``k`` its contiguous block of groups
(:func:`~distmeta.distributed.plan.assign_blocks`), waits for the answers, checks each
one (:mod:`distmeta.distributed.answers`), and re-runs a block whose actor died, hung past
``ray.step_timeout`` or answered wrongly on the next healthy actor, at most
``ray.max_retries`` times per block. Each group's slot is filled exactly once and results
come back in group order, whatever order the actors finish in. Past the retry budget,
:class:`~distmeta.distributed.ray_errors.WorkerFailedError` names the actors, nodes and tasks.
"""
from __future__ import annotations

import logging
import pickle
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import ray
from ray.exceptions import RayTaskError

from distmeta.distributed import answers
from distmeta.distributed.actor_pool import ActorPool
from distmeta.distributed.node_sum import SumRequest
from distmeta.distributed.ray_errors import (
    RETRIABLE,
    ActorLost,
    GraphCollateral,
    WorkerFailedError,
)
from distmeta.distributed.transport import Delivery, ObjectStoreDelivery
from distmeta.distributed.wire import NEEDS_SETUP, Request
from distmeta.groups import assign_blocks
from distmeta.results import GroupResult, StepStats
from distmeta.tasks.specs import TaskSpec, task_key

log = logging.getLogger(__name__)

#: Times per block and step an actor may come back without its Worker before that counts as a failure.
MAX_REBUILDS = 3
#: Seconds a node's reducer may take past its blocks' deadline to sum and send (it stops waiting for its blocks
#: at that deadline itself): this share of ``ray.step_timeout``, within the bounds below. Past it the driver reads
#: the node's blocks directly, so a node cut off from the driver costs the step its timeout and little more.
NODE_SUM_GRACE_SHARE, NODE_SUM_GRACE_MIN_S, NODE_SUM_GRACE_MAX_S = 0.05, 2.0, 30.0

#: ``check(block, value) -> problem or None``: whether an answer is what was asked for.
Check = Callable[[range, Any], "str | None"]


@dataclass
class Call:
    """One attempt at one block: sent to ``actor``, answer due by ``deadline`` (monotonic seconds)."""

    block: int
    actor: int
    attempt: int
    deadline: float


@dataclass
class NodeBatch:
    """The first attempts of one node's blocks, handed to a reducer on that node (:mod:`.node_sum`)."""

    calls: list[tuple[Any, Call]]  # (ref of the block's answer, its call), in block order
    deadline: float


def describe_tasks(groups: Sequence[Sequence[TaskSpec]], block: range) -> str:
    """``groups 2..3 = tasks (step 0, task 4), ...``: what a failed block held, for error messages."""
    keys = [task_key(s) for i in block for s in groups[i]]
    shown = ", ".join(f"(step {s}, task {t})" for s, t in keys[:6])
    more = f" and {len(keys) - 6} more" if len(keys) > 6 else ""
    return f"groups {block.start}..{block.stop - 1} = tasks {shown}{more}"



class StepDispatch:
    """The calls of one ``compute`` or ``evaluate``: attempts, retries and deadlines as explicit state.

    Args:
        pool: the actors.
        method: ``"compute"`` or ``"evaluate"`` (the actor method called).
        groups: the step's task groups.
        args: the method's arguments after the specs (``(version,)`` for compute).
        check: validates an opened answer for its block.
        delivery: ``delivery(blocks)`` makes the step's transport parts (called on the first plain call).
        stats: filled as calls go out and answers come in.
        failures: every failed attempt is appended here (the backend keeps them for logs).
    """

    def __init__(self, pool: ActorPool, method: str, groups: list[list[TaskSpec]], args: tuple, check: Check,
                 delivery: Callable[[list[range]], Delivery], stats: StepStats,
                 failures: list[dict[str, Any]], node_sums: answers.MetaSpec | None = None) -> None:
        self.pool, self.method, self.groups, self.args, self.check = pool, method, groups, args, check
        self.stats, self.failures = stats, failures
        self.node_sums = node_sums  # the meta-parameters' spec when nodes sum their own groups (compute only)
        self.batches: dict[Any, NodeBatch] = {}  # a node's summing call, by its ref
        self._make_delivery = delivery
        self._delivery: Delivery | None = None
        self.timeout = pool.ray_cfg.step_timeout
        # Blocks go to the actors believed healthy now, in node order: after a loss the step is cut evenly over
        # those that remain instead of piling the lost actor's blocks onto one of them. Groups and their
        # summation do not depend on this, so neither do the parameters.
        order = pool.order or list(range(len(pool.actors)))
        healthy = set(pool.healthy()) if pool.suspect else set(order)
        self.assignees = [k for k in order if k in healthy] or order  # none healthy: pick() waits for a restart
        self.blocks = assign_blocks(len(groups), len(self.assignees))
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

    @property
    def delivery(self) -> Delivery:
        if self._delivery is None:
            self._delivery = self._make_delivery(self.blocks)
        return self._delivery

    def submit(self, b: int, actor: int, wait_s: float | None = None) -> None:
        """Send block ``b`` to ``actor``, its answer due in ``wait_s`` (default ``ray.step_timeout``)."""
        specs = pickle.dumps(self.block_specs(b), protocol=5)
        self.stats.spec_bytes += len(specs)
        parts = self.delivery.parts(b, actor, self.attempts[b])
        request = Request(self.pool.generation, parts.meta, specs, parts.shm, self.args)
        ref = getattr(self.pool.actors[actor], self.method).remote(request.dumps(), parts.meta_ref)
        self.pending[ref] = Call(b, actor, self.attempts[b], time.monotonic() + (wait_s or self.timeout))
        self.stats.calls += 1

    def submit_all(self) -> None:
        """The first attempt of every non-empty block, to its own actor unless that one is dead or restarting."""
        deadline = time.monotonic() + self.timeout
        for b, block in enumerate(self.blocks):
            if len(block):
                self.submit(b, self.pool.pick(self.assignees[b], deadline))
        if self.node_sums is not None:
            self._start_node_sums()

    def _start_node_sums(self) -> None:
        """Hand each other node's blocks to a reducer there; the driver then waits for one answer per node."""
        by_node: dict[str, list[tuple[Any, Call]]] = {}
        for ref, call in self.pending.items():
            node = self.pool.node_ids[call.actor]
            if node != self.pool.driver_node:
                by_node.setdefault(node, []).append((ref, call))
        for calls in by_node.values():
            calls.sort(key=lambda rc: rc[1].block)
            blocks = [self.blocks[c.block] for _, c in calls]
            request = SumRequest(blocks, {i: self.groups[i] for b in blocks for i in b}, self.args[0],
                                 self.node_sums, len(self.groups),
                                 max(0.0, max(c.deadline for _, c in calls) - time.monotonic()))
            reducer = min(c.actor for _, c in calls)
            ref = self.pool.actors[reducer].sum_blocks.remote(request.dumps(), [r for r, _ in calls])
            for r, _ in calls:
                del self.pending[r]
            grace = min(NODE_SUM_GRACE_MAX_S, max(NODE_SUM_GRACE_MIN_S, NODE_SUM_GRACE_SHARE * self.timeout))
            self.batches[ref] = NodeBatch(calls, max(c.deadline for _, c in calls) + grace)

    def _receive_batch(self, batch: NodeBatch, ref: Any) -> None:
        """A node's sums: fill the runs that check out; the driver reads any other block of the node itself."""
        try:
            value, problem = answers.open_answer(ray.get(ref))
        except Exception as err:  # noqa: BLE001 - the reducer died or raised: every block is read directly
            value, problem = None, f"{type(err).__name__}"
        done: set[int] = set()
        if problem is None and isinstance(value, dict):
            by_start = {self.blocks[c.block].start: (r, c) for r, c in batch.calls}
            for lo, hi, results in value.get("runs", []):
                calls, pos = [], lo
                while pos in by_start and pos < hi:
                    calls.append(by_start[pos][1])
                    pos = self.blocks[calls[-1].block].stop
                if pos != hi or self.check_sum(range(lo, hi), results) is not None:
                    continue  # not whole blocks of this batch, or a bad sum: read them directly
                for call in calls:
                    block = self.blocks[call.block]
                    self._fill(call, results[block.start - lo: block.stop - lo])
                    done.add(call.block)
            self.stats.node_sums += int(bool(done))
        self._read_directly([(r, c) for r, c in batch.calls if c.block not in done])

    def check_sum(self, run: range, results: Any) -> str | None:
        """Why a node's sum of the groups ``run`` cannot be used, or None."""
        assert self.node_sums is not None
        return answers.group_results_problem(run, results, self.groups, self.args[0], self.node_sums, len(self.groups))

    def _read_directly(self, calls: list[tuple[Any, Call]]) -> None:
        """Blocks the driver reads itself: those already answered now, the others when they answer."""
        if not calls:
            return
        ready, _ = ray.wait([r for r, _ in calls], num_returns=len(calls), timeout=0)
        for ref, call in calls:
            if ref in ready:
                self.receive(call, lambda ref=ref: ray.get(ref))
            else:
                self.pending[ref] = call

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
        retries = self.pool.ray_cfg.max_retries
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
            return self.submit(call.block, call.actor)
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
        self.submit(call.block, call.actor, wait_s=self.pool.startup_timeout)

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
        for ref, batch in list(self.batches.items()):
            if batch.deadline <= now:  # the reducer hung: its node's blocks are read directly, or time out
                del self.batches[ref]
                self._read_directly(batch.calls)
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
        """Wait for every pending call and node sum (re-running failures); the results in group order."""
        while self.pending or self.batches:
            deadlines = [c.deadline for c in self.pending.values()] + [b.deadline for b in self.batches.values()]
            wait_s = max(0.0, min(deadlines) - time.monotonic())
            ready, _ = ray.wait([*self.pending, *self.batches], num_returns=1, timeout=wait_s)
            if not ready:
                self.expire()
            elif ready[0] in self.batches:
                self._receive_batch(self.batches.pop(ready[0]), ready[0])
            else:
                call = self.pending.pop(ready[0])
                self.receive(call, lambda ref=ready[0]: ray.get(ref))
        return self.out


def run_plain(dispatch: StepDispatch, overlap: Callable[[], Any] | None = None) -> list[Any]:
    """A whole step as plain actor calls: send every block, run ``overlap`` meanwhile, collect in group order."""
    dispatch.submit_all()
    if overlap is not None:
        overlap()
    return dispatch.drain()


def graph_blocks(dispatch: StepDispatch) -> list[bytes]:
    """Every actor's pickled block for a compiled-graph step (actor ``k`` computes block ``k``)."""
    blocks = [pickle.dumps(dispatch.block_specs(b), protocol=5) for b in range(len(dispatch.blocks))]
    dispatch.stats.spec_bytes += sum(len(x) for x in blocks)
    dispatch.stats.calls += len(blocks)
    return blocks


def collect_graph(dispatch: StepDispatch, fetches: Sequence[Callable[[], Any]], deadline: float) -> list[Any]:
    """Read a compiled-graph step's answers (a lost one is re-run as plain calls), then any re-runs."""
    for b, fetch in enumerate(fetches):
        dispatch.receive(Call(b, b, 0, deadline), fetch)
    return dispatch.drain()
