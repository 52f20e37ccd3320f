"""``RayBackend``: the :class:`~distmeta.training.backend.Backend` over a pool of Ray actors.

It only ties the parts together; one step reads:

1. :meth:`RayBackend.compute` makes a :class:`~.dispatch.StepDispatch` for the step's
   groups (actor ``k`` gets the contiguous block ``k``);
2. the dispatch asks the transport (:mod:`.transport`, chosen once per configuration:
   object store or shared memory) how this step's meta-parameters travel, and sends each
   actor one :class:`~.wire.Request` (or, on the compiled-graph path, :mod:`.compiled`
   sends all blocks in one graph execution);
3. each :class:`~.actor.WorkerActor` runs ``Worker.meta_grad_groups`` on its block and
   packs the :class:`~distmeta.results.GroupResult` s (:mod:`distmeta.distributed.wire`);
4. the dispatch reads and checks every answer (:mod:`distmeta.distributed.answers`), re-runs
   failed blocks on healthy actors (:mod:`.actor_pool`), and returns results in group order;
   the driver then sums them in that fixed order, so any actor count gives the same
   parameters bit for bit.

Typical use is through :class:`~distmeta.training.trainer.Trainer` (``resources.workers: N``); directly::

    backend = RayBackend(cfg, experiment.worker_args())
    results = backend.compute(meta, groups, version=step)
    backend.close()
"""
from __future__ import annotations

import logging
import pickle
import time
from typing import Any, Callable, Sequence

import numpy as np
import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from distmeta.config import Config
from distmeta.distributed import answers, session
from distmeta.distributed.actor_pool import ActorPool
from distmeta.distributed.compiled import CompiledGraph, use_compiled_graph
from distmeta.distributed.dispatch import (
    StepDispatch,
    collect_graph,
    graph_blocks,
    run_plain,
)
from distmeta.distributed.elastic import Elastic
from distmeta.distributed.plan import fmt_resources, plan_workers
from distmeta.distributed.ray_errors import WorkerFailedError
from distmeta.distributed.transport import ObjectStoreDelivery, choose_transport
from distmeta.errors import ConfigError
from distmeta.groups import assign_blocks
from distmeta.results import GroupResult, StepStats
from distmeta.tasks.specs import TaskSpec

__all__ = ["RayBackend", "WorkerFailedError", "assign_blocks", "plan_workers", "use_compiled_graph"]

log = logging.getLogger(__name__)


class RayBackend:
    """A pool of Ray actors, each with one Worker; implements :class:`~distmeta.training.backend.ReusableBackend`.

    The backend distributes a whole experiment, so it takes the whole ``cfg`` and ships it to
    every actor (it is what each Worker is built from). For itself it reads only the
    ``resources`` section (the pool's size), the ``ray`` section (``ray_cfg``: cluster,
    transport, timeouts) and whether ``faults`` are set (refused: drills have their own backend).

    Args:
        cfg: the run's config.
        worker_args: :meth:`~distmeta.experiment.Experiment.worker_args`, put in the object
            store once and read by every actor (and every restart of one).
    """

    def __init__(self, cfg: Config, worker_args: dict[str, Any]) -> None:
        self._refuse_drills(cfg)
        self.ray_cfg = cfg.ray
        self.failures: list[dict[str, Any]] = []  # every failed attempt, for logs and tests
        self._stats = StepStats()
        self._closed = False
        self.pool: ActorPool | None = None
        self.elastic: Elastic | None = None
        self._session: Any = session.connect(cfg.ray)
        try:
            self.pool = ActorPool(cfg.resources, cfg.ray, self.actor_class())
            self.graph = CompiledGraph(self.pool)
            self.elastic = Elastic(self.pool) if self.pool.elastic else None
            self._load(cfg, worker_args)
        except BaseException:
            self.close()
            raise
        log.info("RayBackend: %d actors (%s each) on nodes %s", self.num_workers, fmt_resources(self.pool.per_worker),
                 sorted({n[:8] for n in self.pool.node_ids}))

    def _refuse_drills(self, cfg: Config) -> None:
        """A config with ``faults`` on a backend that runs no drills is an error, never ignored in silence."""
        if cfg.faults and type(self).actor_class is RayBackend.actor_class:
            raise ConfigError("faults: this Ray backend runs no drills; make_backend builds the drilled one "
                              "(distmeta.drills.ray_drill.DrilledRayBackend) for a config with faults")

    def actor_class(self) -> type | None:
        """The class every actor runs (None: :class:`~.actor.WorkerActor`); called once Ray is up.

        The one extension point for what runs in the actors: fault drills
        (:mod:`distmeta.drills.ray_drill`) return a subclass that wraps the Worker.
        """
        return None

    def _load(self, cfg: Config, worker_args: dict[str, Any]) -> None:
        """Every actor builds its Worker for ``cfg``; the transport follows the config."""
        assert self.pool is not None
        self.graph.tear_down()
        self._initial_meta = self.pool.load(cfg, worker_args)
        self.ray_cfg = cfg.ray
        self._pool_changed()

    def _pool_changed(self) -> None:
        """The actors or their config changed: the transport is chosen again, a compiled graph rebuilt."""
        assert self.pool is not None
        self.graph.tear_down()
        local = {k for k, node in enumerate(self.pool.node_ids) if node == self.pool.driver_node}
        if getattr(self, "transport", None) is not None:
            self.transport.close()
        self.transport = choose_transport(self.ray_cfg, local)

    def grow(self, wait_s: float = 0.0) -> int:
        """Look for room to grow the pool now (``ray.elastic``), waiting up to ``wait_s`` for new actors.

        New actors that fail to join (set-up raised, other versions, node lost) are dropped and
        logged, and the pool tries again after a backoff (:mod:`.elastic`); the run is not affected.

        Returns:
            How many actors joined; they take blocks from the next step on.
        """
        if self.elastic is None:
            return 0
        joined = self.elastic.poll(wait_s, force=True)
        if joined:
            self._pool_changed()
        return joined

    # ------------------------------------------------------------------ the Backend interface
    @property
    def num_workers(self) -> int:
        return len(self.pool.actors) if self.pool is not None else 0

    @property
    def initial_meta(self) -> dict[str, torch.Tensor]:
        return self._initial_meta

    def compute(self, meta: dict[str, Any], groups: Sequence[Sequence[TaskSpec]], version: int,
                overlap: Callable[[], Any] | None = None) -> list[GroupResult]:
        """Summed meta-gradients of every group, in group order, all computed at parameter ``version``.

        ``overlap`` runs on the driver once every actor has its work (the next step's task
        sampling, say): driver time hidden behind the actors' compute.
        """
        t0 = time.perf_counter()
        if self.elastic is not None and self.elastic.poll():  # actors that joined take work from this step on
            self._pool_changed()
        groups = [list(g) for g in groups]
        stats = StepStats(meta_bytes=sum(np.asarray(v).nbytes for v in meta.values()))
        spec = answers.meta_spec(meta)  # every gradient must match these names, shapes and dtypes
        dispatch = self._dispatch("compute", groups, (version,), stats,
                                  lambda b, v: answers.group_results_problem(b, v, groups, version, spec),
                                  lambda blocks: self.transport.step(meta, blocks),
                                  node_sums=spec if self._node_reduce() else None)
        results = self._run(dispatch, meta, version, overlap)
        for r in results:
            stats.result_bytes += sum(g.nbytes for g in r.grad.values())
            stats.actor_compute_s[r.extra["actor"]] = r.extra["actor_compute_s"]
            stats.actor_nodes[r.extra["actor"]] = r.extra["node"]
        stats.shared_memory_calls = dispatch.shared_memory_calls
        stats.wall_s = time.perf_counter() - t0
        self._stats = stats
        return results

    def _run(self, dispatch: StepDispatch, meta: dict[str, Any], version: int,
             overlap: Callable[[], Any] | None) -> list[Any]:
        """The step on the compiled graph when it should and can, else as plain calls."""
        deadline = time.monotonic() + self.ray_cfg.step_timeout
        refs = None
        if len(dispatch.blocks) == self.num_workers and self.graph.wanted(self.ray_cfg.compiled_graph):
            blocks = graph_blocks(dispatch)
            refs = self.graph.execute(self.pool.generation, meta, blocks, version)
            dispatch.stats.compiled_graph = refs is not None
        if refs is None:
            return run_plain(dispatch, overlap)
        if overlap is not None:
            overlap()
        return collect_graph(dispatch, self.graph.answers(refs, deadline, self.ray_cfg.step_timeout), deadline)

    def evaluate(self, meta: dict[str, Any], groups: Sequence[Sequence[TaskSpec]], inner_steps: int,
                 cache_key: str | None = None, baseline: bool = False) -> list[dict[str, list[float]]]:
        """Per-episode metrics of each episode group, in group order (``cache_key``, ``baseline``: see :meth:`Worker.evaluate`).

        Evaluation calls go the object-store way: they are few, and their answers are small.
        """
        groups = [list(g) for g in groups]
        dispatch = self._dispatch("evaluate", groups, (inner_steps, cache_key, baseline), StepStats(),
                                  lambda b, v: answers.evaluation_problem(b, v, groups), lambda blocks: ObjectStoreDelivery(meta))
        return run_plain(dispatch)

    def group_peak(self, meta: dict[str, Any], specs: Sequence[TaskSpec]) -> int:
        """Peak bytes of one group's meta-gradient, measured in the first actor on its own device.

        Every actor holds the same replica on the same kind of device, so one measures for all.
        """
        if self._closed or self.pool is None or not self.pool.actors:
            raise WorkerFailedError("the Ray backend is closed")
        k = self.pool.order[0]
        ref = self.pool.actors[k].group_peak.remote(self.pool.args(), meta, pickle.dumps(list(specs), protocol=5))
        try:
            return int(ray.get(ref, timeout=self.pool.startup_timeout))
        except RayTaskError as err:  # the Worker's own error (a budget it cannot measure) is the caller's
            cause = getattr(err, "cause", None)
            raise (cause if isinstance(cause, Exception) else WorkerFailedError(str(err))) from None
        except (RayActorError, GetTimeoutError) as err:
            raise WorkerFailedError(f"Ray actor {k} failed while measuring a group's peak memory: {err}") from err

    def _dispatch(self, method: str, groups: list[list[TaskSpec]], args: tuple, stats: StepStats,
                  check: Callable[[range, Any], str | None], delivery: Callable[[list[range]], Any],
                  node_sums: Any = None) -> StepDispatch:
        if self._closed or self.pool is None or not self.pool.actors:
            raise WorkerFailedError("the Ray backend is closed")
        return StepDispatch(self.pool, method, groups, args, check, delivery, stats, self.failures,
                            node_sums)

    def _node_reduce(self) -> bool:
        """Whether nodes other than the driver's sum their own groups (``ray.node_reduce``)."""
        setting = self.ray_cfg.node_reduce
        return setting is True or (setting == "auto" and len(set(self.node_ids)) > 1)

    def stats(self) -> StepStats:
        """What the last :meth:`compute` moved, retried and computed where."""
        return self._stats

    # ------------------------------------------------------------------ reuse (sweeps, tests)
    @property
    def closed(self) -> bool:
        return self._closed

    def reconfigure(self, cfg: Config, worker_args: dict[str, Any]) -> None:
        """Rebuild every actor's Worker for another config on the same actors (sweeps, Tune trials, tests).

        Saves the process start-up (Python, torch) per actor; the config must ask for the
        same number and size of actors.
        """
        if self._closed or self.pool is None:
            raise WorkerFailedError("the Ray backend is closed")
        plan = plan_workers(cfg.resources, ray.cluster_resources())
        if plan[1:] != self.pool.plan[1:] or (plan[0] != self.pool.plan[0] and not self.pool.elastic):
            raise ConfigError(f"reconfigure needs the same actors (workers, cpus, gpus) {self.pool.plan}, got {plan}")
        self._refuse_drills(cfg)
        self._load(cfg, worker_args)

    def placement(self) -> dict[str, Any]:
        """Where the actors live: their placement group, whether this backend made it, how many actors."""
        pg = self.pool.pg if self.pool is not None else None
        return {"placement_group": pg.id.hex() if pg is not None else "",
                "owns_placement_group": bool(self.pool and self.pool.owns_pg), "workers": self.num_workers}

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until every actor answers (after restarts)."""
        if self.pool is not None:
            self.pool.wait_ready(timeout)

    # ------------------------------------------------------------------ where the actors are (start-up summary, logs)
    @property
    def actors(self) -> list[Any]:
        return self.pool.actors if self.pool is not None else []

    @property
    def infos(self) -> list[dict[str, Any]]:
        """Per actor: node, pid, device, threads, Worker builds and library versions."""
        return self.pool.infos if self.pool is not None else []

    @property
    def node_ids(self) -> list[str]:
        return self.pool.node_ids if self.pool is not None else []

    # ------------------------------------------------------------------ tear-down
    def close(self) -> None:
        """Kill the actors, free the placement group, and shut Ray down only if this backend started it."""
        if self._closed:
            return
        self._closed = True
        if self.pool is not None:
            self.graph.tear_down()
            if self.elastic is not None:
                self.elastic.close()
            if getattr(self, "transport", None) is not None:
                self.transport.close()
            self.pool.close()
        if self._session is not None:
            self._session.close()
            self._session = None

    def __del__(self) -> None:  # pragma: no cover - best effort when a caller forgets close()
        try:
            if not self._closed and self.pool is not None and ray.is_initialized():
                for a in self.pool.actors:
                    ray.kill(a, no_restart=True)
        except Exception:  # noqa: BLE001
            pass
