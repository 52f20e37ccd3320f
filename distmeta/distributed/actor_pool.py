"""The actor pool: a placement group, one :class:`~.actor.WorkerActor` per bundle, and which of them are healthy.

Actors are restarted by Ray (``max_restarts=-1``); the pool only tracks which ones failed
a call and have not answered since (``suspect``), so no new work goes to them until they
do. Every actor builds its Worker from one object-store entry per :meth:`ActorPool.load`
(a *generation*); a restarted actor answers ``NEEDS_SETUP`` until it is sent
:meth:`ActorPool.setup` again.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from distmeta.config import Config, RayConfig, ResourcesConfig
from distmeta.distributed import answers
from distmeta.distributed.actor import WorkerActor
from distmeta.distributed.plan import (
    bundle,
    elastic_target,
    fitting,
    fmt_resources,
    plan_workers,
    shortfall,
    worker_bundles,
)
from distmeta.distributed.preflight import joins_cluster
from distmeta.distributed.ray_errors import RETRIABLE, WorkerFailedError
from distmeta.errors import ConfigError

log = logging.getLogger(__name__)

#: Starting an actor (a Python process importing torch) and building its Worker; ``ray.step_timeout`` if longer.
STARTUP_TIMEOUT = 300.0


class ActorPool:
    """``n`` actors of ``cpus``/``gpus`` each, in this pool's placement group or the enclosing Tune trial's.

    Args:
        resources: the run's ``resources`` section: how many actors, what each reserves, where it computes.
        ray_cfg: its ``ray`` section (``address``, ``step_timeout``, ``elastic``; a later :meth:`load` may
            bring a new one, as a sweep's next trial does).
        actor_class: what each actor runs (default :class:`~.actor.WorkerActor`; drills pass a subclass).
    """

    def __init__(self, resources: ResourcesConfig, ray_cfg: RayConfig, actor_class: type | None = None) -> None:
        self.resources, self.ray_cfg = resources, ray_cfg
        self.actor_class = actor_class  # None: WorkerActor (looked up when an actor starts)
        self.actors: list[Any] = []
        self.infos: list[dict[str, Any]] = []
        self.suspect: set[int] = set()  # failed a call and have not answered since
        self._pings: dict[int, Any] = {}  # suspect -> its ping in flight (see healthy)
        self.pg: Any = None
        self.owns_pg = True  # False inside a Tune trial's placement group
        self.generation = 0
        self.order: list[int] = []  # the actor computing each block (see load)
        self._args_ref: Any = None
        n, cpus, gpus = self.plan = plan_workers(resources, ray.cluster_resources())
        if resources.device == "cuda" and gpus == 0:
            raise ConfigError("resources.device=cuda with Ray workers needs resources.gpus_per_worker > 0 (Ray hides "
                              "GPUs from actors without one)")
        self.per_worker = bundle(cpus, gpus)
        self.driver_node = ray.get_runtime_context().get_node_id()
        self.elastic = elastic_target(resources, ray_cfg) is not None
        if self.elastic and resources.workers != "auto":  # ray.elastic: start with what fits now, grow up to workers
            n = max(1, min(n, fitting(self.per_worker, ray.available_resources())))
            self.plan = (n, cpus, gpus)
        first = self._place(n)
        self.actors = [self.new_actor(k, self.pg, first + k) for k in range(n)]
        self.extra_pgs: list[Any] = []  # placement groups of actors added by growth (elastic)

    def new_actor(self, k: int, pg: Any, bundle_index: int) -> Any:
        """Start actor ``k`` in bundle ``bundle_index`` of ``pg`` (it builds its Worker when sent ``setup``)."""
        cpus, gpus = self.plan[1], self.plan[2]
        return ray.remote(self.actor_class or WorkerActor).options(
            num_cpus=cpus, num_gpus=gpus, max_restarts=-1, max_task_retries=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=bundle_index),
        ).remote(k, "cuda" if gpus > 0 else "cpu", self.resources.threads or max(1, int(cpus)))

    def adopt(self, actors: list[Any], infos: list[dict[str, Any]], pg: Any) -> None:
        """Take actors started by growth (their Workers built) into the pool, from the next step on."""
        self.actors.extend(actors)
        self.infos.extend(infos)
        self.extra_pgs.append(pg)
        self.plan = (len(self.actors), self.plan[1], self.plan[2])
        self._order()

    # ------------------------------------------------------------------ placement
    def _place(self, n: int) -> int:
        """Use the Tune trial's placement group (its last ``n`` bundles) or reserve one; the first bundle index."""
        trial_pg = ray.util.get_current_placement_group()
        if trial_pg is not None:
            self.pg, self.owns_pg = trial_pg, False
            return worker_bundles(trial_pg.bundle_specs, n, self.per_worker)
        resources = ray.cluster_resources()
        need = {k: v * n for k, v in self.per_worker.items()}
        if shortfall(need, resources) and not joins_cluster(self.ray_cfg):  # an impossible request fails now, not as a hang
            raise ConfigError(
                f"resources.workers={self.resources.workers} needs {n} x (cpus_per_worker={self.plan[1]:g}, "
                f"gpus_per_worker={self.plan[2]:g}) = {fmt_resources(need)}, but the Ray cluster has "
                f"{fmt_resources(resources)}; lower resources.workers or resources.cpus_per_worker/gpus_per_worker"
            )
        self.pg = placement_group([dict(self.per_worker) for _ in range(n)], strategy="SPREAD")
        try:
            ray.get(self.pg.ready(), timeout=self.ray_cfg.step_timeout)
        except GetTimeoutError:
            raise WorkerFailedError(
                f"the Ray cluster ({fmt_resources(ray.cluster_resources())}) did not grant {n} workers of "
                f"{fmt_resources(self.per_worker)} within ray.step_timeout={self.ray_cfg.step_timeout:g}s"
            ) from None
        return 0

    # ------------------------------------------------------------------ Workers
    def load(self, cfg: Config, worker_args: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Put the experiment and its data in the object store once; every actor builds its Worker from them.

        Args:
            cfg: the experiment every Worker computes (shipped whole: it is what the actors build);
                the pool itself takes only its ``ray`` section from it, for the timeouts of the calls to come.
            worker_args: the data the Workers share (tokenised texts, splits).

        Returns:
            The initial meta-parameters, from actor 0.
        """
        self.generation += 1
        self._args_ref = ray.put({"cfg": cfg, "worker_args": worker_args})
        self.ray_cfg = cfg.ray
        timeout = self.startup_timeout
        refs = [a.setup.remote(self.args()) for a in self.actors]
        infos = []
        for k, ref in enumerate(refs):
            try:
                infos.append(ray.get(ref, timeout=timeout))
            except (RayActorError, RayTaskError, GetTimeoutError) as err:
                raise WorkerFailedError(f"Ray actor {k} failed to build its Worker: {err}") from err
        answers.check_versions(infos)  # as DDP checks shapes across ranks: one version everywhere, or nothing starts
        self.infos = infos
        self._order()
        meta = ray.get(self.actors[0].initial_meta.remote(self.args()), timeout=timeout)
        return {name: torch.from_numpy(np.array(v, copy=True)) for name, v in meta.items()}

    def _order(self) -> None:
        """Block k goes to actor ``order[k]``: the actors of one node take consecutive blocks, so a node's
        groups are contiguous and can be summed there (:mod:`.node_sum`); on one node, actor k takes block k."""
        rank: dict[str, int] = {}
        for info in self.infos:
            rank.setdefault(info["node"], len(rank))
        self.order = sorted(range(len(self.infos)), key=lambda k: (rank[self.infos[k]["node"]], k))

    def args(self) -> list[Any]:
        """What :meth:`WorkerActor.setup` takes: ``[ref of {cfg, worker_args}, generation]``."""
        return [self._args_ref, self.generation]

    def setup(self, k: int) -> None:
        """Have actor ``k`` rebuild its Worker (after a restart); it runs before any call sent to it later."""
        self.actors[k].setup.remote(self.args())

    @property
    def startup_timeout(self) -> float:
        return max(self.ray_cfg.step_timeout, STARTUP_TIMEOUT)

    @property
    def node_ids(self) -> list[str]:
        return [i["node"] for i in self.infos]

    def where(self, k: int) -> str:
        """``actor 1 (node 3f2a..., pid 1234)``: an actor as messages name it."""
        info = self.infos[k] if k < len(self.infos) else {}
        return f"actor {k} (node {str(info.get('node', '?'))[:12]}, pid {info.get('pid', '?')})"

    # ------------------------------------------------------------------ health
    def restart(self, k: int) -> None:
        """Kill actor ``k`` (hung); Ray restarts it and it is suspect until it answers."""
        self.suspect.add(k)
        try:
            ray.kill(self.actors[k], no_restart=False)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def healthy(self, wait_s: float = 0.0) -> list[int]:
        """Actors believed alive. A suspect is cleared when its ping answers (waiting up to ``wait_s``).

        Each suspect has at most one ping in flight, kept across calls: an actor on a node
        that cannot be reached (a partition) never answers, and a fresh ping per call would
        both pile up calls Ray keeps trying to deliver and make every caller wait for it. A
        restarting actor refuses a ping at once (``ActorUnavailableError``); the next call
        pings it again.
        """
        for k in sorted(self.suspect):
            if k not in self._pings:
                self._pings[k] = self.actors[k].ping.remote()
        if self._pings:
            owner = {ref: k for k, ref in self._pings.items()}
            ready, _ = ray.wait(list(owner), num_returns=len(owner), timeout=wait_s)
            for ref in ready:
                k = owner[ref]
                del self._pings[k]
                try:
                    ray.get(ref)
                except RETRIABLE + (RayTaskError,):
                    continue
                self.suspect.discard(k)
        return [k for k in range(len(self.actors)) if k not in self.suspect]

    def pick(self, preferred: int, deadline: float) -> int:
        """``preferred`` if it is healthy, else the next healthy actor after it; waits (until ``deadline``) if none is."""
        n = len(self.actors)
        order = [(preferred + j) % n for j in range(n)]
        wait_s = 0.0  # the first look takes what has answered already; later ones wait a little
        while True:
            healthy = set(self.healthy(wait_s))
            wait_s = 0.25
            for k in order:
                if k in healthy:
                    return k
            if time.monotonic() > deadline:
                raise WorkerFailedError(
                    f"none of the {n} Ray actors is available (dead or restarting) "
                    f"within ray.step_timeout={self.ray_cfg.step_timeout:g}s"
                )
            time.sleep(0.25)

    def busy(self, wait_s: float = 2.0) -> set[int]:
        """Actors still inside a compute (or not answering at all): the hung ones after a graph step's deadline."""
        asks = {self.actors[k].busy.remote(): k for k in range(len(self.actors))}
        ready, _ = ray.wait(list(asks), num_returns=len(asks), timeout=wait_s)
        idle = set()
        for ref in ready:
            try:
                if not ray.get(ref):
                    idle.add(asks[ref])
            except Exception:  # noqa: BLE001 - a dead actor counts as not idle
                pass
        return set(range(len(self.actors))) - idle

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until every actor answers (after restarts); :class:`WorkerFailedError` past ``timeout``."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.startup_timeout)
        self.suspect.update(range(len(self.actors)))
        while self.healthy(wait_s=0.25) != list(range(len(self.actors))):
            if time.monotonic() > deadline:
                raise WorkerFailedError(f"Ray actors {sorted(self.suspect)} did not come back within {timeout}s")
            time.sleep(0.25)

    # ------------------------------------------------------------------ tear-down
    def close(self) -> None:
        """Kill the actors and free the placement group if it is this pool's own."""
        if ray.is_initialized():
            for a in self.actors:
                try:
                    ray.kill(a, no_restart=True)
                except Exception:  # noqa: BLE001 - already dead
                    pass
            for pg in [self.pg] * self.owns_pg + getattr(self, "extra_pgs", []):
                try:
                    remove_placement_group(pg)
                except Exception:  # noqa: BLE001
                    pass
        self.actors = []
        self._pings = {}
        self.pg = None
        self._args_ref = None
