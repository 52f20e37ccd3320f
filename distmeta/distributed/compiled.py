"""The Compiled Graph path: one execution of a Ray Compiled Graph over all actors per step.

For GPU actors on the driver's node (or ``ray.compiled_graph: true``) a step can go through
a compiled graph (shared-memory channels, a fraction of a plain call's round trip, bought
with a core per actor spinning while it waits; see
:func:`use_compiled_graph`). A step's outputs are read
together, so one failure hides every answer: the graph is torn down, the failure is
pinned on its actor (the one a death names, the ones still busy at the deadline, the one
whose compute raised), and the dispatcher re-sends every block as plain calls, counting
the failure only against its actor. Plain calls carry the steps while an actor is
suspect; the graph is rebuilt once all answer again, and after :data:`MAX_GRAPH_BREAKS`
tear-downs plain calls stay.
"""
from __future__ import annotations

import logging
import pickle
import re
import time
from typing import Any, Callable, Sequence

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayChannelError, RayTaskError

from distmeta.distributed.actor_pool import ActorPool
from distmeta.distributed.ray_errors import RETRIABLE, ActorLost, GraphCollateral

log = logging.getLogger(__name__)

#: Compiled graphs torn down by failures before a backend stays on plain calls.
MAX_GRAPH_BREAKS = 3

#: Reads one actor's answer to a graph step, or raises why it is lost.
Fetch = Callable[[], Any]


def use_compiled_graph(setting: bool | str, gpus_per_actor: float, actor_nodes: Sequence[str], driver_node: str) -> bool:
    """Whether steps go through a Ray Compiled Graph (``ray.compiled_graph``): never across nodes; ``auto`` for GPU actors.

    The graph's channels are shared memory on one node (cross-node channels hang on a
    ``cluster_utils.Cluster``). Its readers spin while they wait, which on CPU actors takes
    the very core that computes; hence ``auto`` means GPU actors only.
    """
    if setting is False or any(node != driver_node for node in actor_nodes):
        return False
    return setting is True or gpus_per_actor > 0



class CompiledGraph:
    """The compiled graph of ``compute_compiled`` over a pool's actors, built lazily and torn down on failure."""

    def __init__(self, pool: ActorPool) -> None:
        self.pool = pool
        self._graph: Any = None
        self.breaks = 0

    def wanted(self, setting: bool | str) -> bool:
        """Whether this step should go through the graph: asked for, no actor suspect, not broken too often."""
        if self.pool.suspect or self.breaks >= MAX_GRAPH_BREAKS:
            return False
        return use_compiled_graph(setting, self.pool.plan[2], self.pool.node_ids, self.pool.driver_node)

    def execute(self, generation: int, meta: dict[str, Any], blocks: Sequence[bytes], version: int) -> list[Any] | None:
        """Start one step (every actor's block of pickled specs); None when the graph cannot be built or started."""
        try:
            if self._graph is None:
                from ray.dag import InputNode, MultiOutputNode

                with InputNode() as request:
                    dag = MultiOutputNode([a.compute_compiled.bind(request) for a in self.pool.actors])
                self._graph = dag.experimental_compile()
            return self._graph.execute(pickle.dumps((generation, meta, list(blocks), version), protocol=5))
        except Exception as err:  # noqa: BLE001 - any failure here only means: use plain calls
            log.warning("compiled graph unavailable (%s: %s); this step uses plain actor calls", type(err).__name__, err)
            self.tear_down(broken=True)
            return None

    def answers(self, refs: list[Any], deadline: float, step_timeout: float) -> list[Fetch]:
        """Each actor's answer to a graph step, as a callable that returns it or raises why it is lost."""
        infos = self.pool.infos
        collateral = _raising(GraphCollateral())
        try:
            return [_returning(v) for v in ray.get(list(refs), timeout=max(0.0, deadline - time.monotonic()))]
        except RayTaskError as err:  # a Worker exception: raised again by its actor's block
            self.tear_down(broken=True)
            pid = _task_pid(err)
            return [_raising(err) if pid is None or info.get("pid") == pid else collateral for info in infos]
        except (GetTimeoutError, TimeoutError):
            hung = self.pool.busy()
            for k in hung:
                self.pool.restart(k)
            self.tear_down(broken=True)
            late = _raising(ActorLost(f"no answer within ray.step_timeout={step_timeout:g}s"))
            return [late if k in hung else collateral for k in range(len(self.pool.actors))]
        except (RayActorError, RayChannelError, *RETRIABLE) as err:
            self.tear_down(broken=True)
            culprit = getattr(err, "actor_id", None)
            lost = _raising(ActorLost(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"))
            return [lost if culprit is not None and info.get("actor_id") == culprit else collateral for info in infos]

    def tear_down(self, broken: bool = False) -> None:
        """Tear the graph down (``broken``: because of a failure, which counts towards :data:`MAX_GRAPH_BREAKS`)."""
        graph, self._graph = self._graph, None
        if graph is None:
            return
        self.breaks += int(broken)
        try:
            graph.teardown()
        except Exception as err:  # noqa: BLE001 - best effort: its actors may be gone
            log.debug("compiled graph teardown: %s", err)


def _returning(value: Any) -> Fetch:
    return lambda: value


def _raising(error: BaseException) -> Fetch:
    def fetch() -> Any:
        raise error
    return fetch


def _task_pid(err: RayTaskError) -> int | None:
    """The pid of the process whose task raised: ``err.pid``, or (a compiled graph's error can come without
    it, and Ray's wrapper then looks the name up on the cause) the ``pid=`` in its message; None if neither."""
    try:
        return int(err.pid)
    except (AttributeError, TypeError, ValueError):
        found = re.search(r"\bpid=(\d+)", str(err))
        return int(found.group(1)) if found else None
