"""The Ray backend: a pool of :class:`~distmeta.worker.Worker` replicas, one per actor.

What travels, and when:

* once per backend: the config and ``worker_args`` (the tokenised corpus), one
  ``ray.put``. Every actor, and every restart of one, builds its Worker from that object
  (zero-copy numpy on the same node), so the dataset never travels per step. Calls carry
  the backend's generation; an actor without that generation's Worker (restarted by Ray,
  or reconfigured) answers :data:`NEEDS_SETUP` and is sent :meth:`WorkerActor.setup` first;
* once per step: the meta-parameters. Below ``INLINE_META_BYTES`` (Ray's own limit for
  inlining small objects in a call) they ride inside the request: a put and its fetch
  cost ~2.5 ms, far more than a few kilobytes sent twice. Larger, actors on the driver's
  node read them from a shared-memory slab (:mod:`distmeta.runtime.shm`), others from
  one ``ray.put`` of a dict of numpy arrays;
* per step and actor: that actor's contiguous block of task specs (a few hundred bytes
  per task, pickled) and the parameter version; back come the block's
  :class:`~distmeta.worker.GroupResult` s (one summed gradient per group) as a pickle
  header plus one blob (:mod:`distmeta.runtime.wire`): written into the actor's region
  of a shared-memory slab on the driver's node, else through Ray's object store.

How: one plain actor call per block; or, for GPU actors on the driver's node (or
``ray.compiled_graph: true``), one execution of a Ray Compiled Graph over the actors
(shared-memory channels, ~0.4 ms per round trip instead of ~2 ms, bought with a core
per actor spinning while it waits; see :func:`use_compiled_graph`). A failure tears the
graph down; plain calls carry the steps while an actor is suspect, the graph is rebuilt
once all answer again, and after ``MAX_GRAPH_BREAKS`` tear-downs plain calls stay.

Group ``g`` of ``G`` goes to actor ``k = the block holding g`` where actor ``k`` owns
groups ``[k*G//n, (k+1)*G//n)``: deterministic and balanced to within one group.
Results are returned in group order whatever order actors finish in, so the driver's
fixed-order reduction gives bit-identical parameters for any number of actors.

Failures: an actor that dies (``RayActorError``), hangs past ``ray.step_timeout`` or
answers for the wrong parameter version has its block re-run on another actor (actors
are restarted by Ray, ``max_restarts=-1``), at most ``ray.max_retries`` times per block;
each group's slot is filled exactly once. Past that, :class:`WorkerFailedError` names
the actor, its node and the tasks.
"""
from __future__ import annotations

import logging
import os
import pickle
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from distmeta.config import Config
from distmeta.errors import ConfigError, DistmetaError
from distmeta.runtime import answers
from distmeta.runtime.faults import ACTOR_KIND, FaultPlan
from distmeta.runtime.ray_session import RaySession, connect, set_ray_env
from distmeta.runtime.shm import ShmUnavailable, Slab, SlabMaps, shared_memory_available
from distmeta.runtime.wire import ALIGN, Packed, pack, pack_into, unpack
from distmeta.tasks.specs import TaskSpec, task_key
from distmeta.worker import GroupResult

set_ray_env()

import ray  # noqa: E402
from ray.exceptions import (  # noqa: E402
    GetTimeoutError,
    NodeDiedError,
    ObjectLostError,
    RayActorError,
    RayChannelError,
    RayTaskError,
    WorkerCrashedError,
)
from ray.util.placement_group import placement_group, remove_placement_group  # noqa: E402
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy  # noqa: E402

log = logging.getLogger(__name__)

# A call that failed with one of these is re-run elsewhere: the actor, its process or its
# node went away. Anything else (an exception raised by the Worker code) is a bug or a bad
# input that would fail again, so it is raised at once.
RETRIABLE = (RayActorError, WorkerCrashedError, ObjectLostError, NodeDiedError)

_READONLY_WARNING = "The given NumPy array is not writable"
# Starting an actor (a Python process importing torch) and building its Worker; ray.step_timeout if longer.
STARTUP_TIMEOUT = 300.0
# Meta-parameters smaller than this travel inside each call rather than as one ray.put
# (Ray's max_direct_call_object_size: it inlines objects this small itself).
INLINE_META_BYTES = 100 * 1024
#: An actor's answer when it holds no Worker of the request's generation (see WorkerActor).
NEEDS_SETUP = "needs-setup"
MAX_REBUILDS = 3  # per block and dispatch: more means the actor keeps losing its Worker
MAX_GRAPH_BREAKS = 3  # compiled graphs torn down by failures before a backend stays on plain calls


class _CompiledFailure(Exception):
    """This actor's answer to a compiled-graph step is lost through its own fault (died, hung); the graph is torn down."""


class _GraphCollateral(Exception):
    """This actor's answer is lost because the graph broke elsewhere (another actor died): not its failure."""


class WorkerFailedError(DistmetaError, RuntimeError):
    """A block of task groups could not be computed by any actor within ``ray.max_retries`` retries."""


# ---------------------------------------------------------------------- planning


def assign_blocks(num_groups: int, num_actors: int) -> list[range]:
    """Actor ``k`` gets groups ``[k*G//n, (k+1)*G//n)``: contiguous, deterministic, sizes differ by at most one."""
    return [range(k * num_groups // num_actors, (k + 1) * num_groups // num_actors) for k in range(num_actors)]


def plan_workers(cfg: Config, resources: dict[str, float]) -> tuple[int, float, float]:
    """(actors, CPUs per actor, GPUs per actor) for ``cfg.workers`` on a cluster with ``resources``.

    ``workers: auto`` is one actor per GPU (per ``gpus_per_worker`` GPUs when that is set)
    when the cluster has GPUs, else one per ``cpus_per_worker`` CPUs.
    """
    cpus, gpus = float(cfg.cpus_per_worker), float(cfg.gpus_per_worker)
    if cfg.workers != "auto":
        return int(cfg.workers), cpus, gpus
    total_cpu = float(resources.get("CPU", 0.0))
    total_gpu = float(resources.get("GPU", 0.0))
    by_cpu = int(total_cpu / cpus + 1e-9)
    if total_gpu > 0:
        gpus = gpus or 1.0
        n = min(int(total_gpu / gpus + 1e-9), by_cpu)
    else:
        n = by_cpu
    if n < 1:
        raise ConfigError(
            f"workers=auto: the Ray cluster ({_fmt_resources(resources)}) cannot hold one worker of "
            f"cpus_per_worker={cpus:g}, gpus_per_worker={gpus:g}"
        )
    return n, cpus, gpus


def _fmt_resources(r: dict[str, float]) -> str:
    return ", ".join(f"{k}={r.get(k, 0):g}" for k in ("CPU", "GPU"))


def _bundle(cpus: float, gpus: float) -> dict[str, float]:
    return {"CPU": cpus, **({"GPU": gpus} if gpus > 0 else {})}


def _worker_bundles(bundles: list[dict[str, float]], n: int, per_worker: dict[str, float]) -> int:
    """Index of the first of the last ``n`` bundles of a given placement group, checked to hold one worker each.

    A Ray Tune trial's group is ``[driver bundle (absent when empty), worker bundle x n]``
    (``distmeta.tune.trial_resources``), so the workers take its last ``n`` bundles.
    """
    first = len(bundles) - n
    small = [i for i in range(max(first, 0), len(bundles))
             if any(bundles[i].get(k, 0.0) + 1e-9 < v for k, v in per_worker.items())]
    if first < 0 or small:
        raise ConfigError(
            f"this process runs in a placement group with bundles {bundles}, which has no room for "
            f"workers={n} of {_fmt_resources(per_worker)} in its last {n} bundles; size it as "
            f"[driver bundle] + {n} x {per_worker} (distmeta.tune.trial_resources does)"
        )
    return first


def _publish(meta: dict[str, Any], nbytes: int) -> tuple[dict[str, Any] | None, Any]:
    """``(inline, ref)``: small meta-parameters ride inside each request, larger ones are one shared ``ray.put``."""
    return (meta, None) if nbytes < INLINE_META_BYTES else (None, ray.put(meta))


def use_compiled_graph(setting: bool | str, gpus_per_actor: float, actor_nodes: Sequence[str], driver_node: str) -> bool:
    """Whether steps go through the compiled graph (``ray.compiled_graph``): never across nodes; ``auto`` for GPU actors.

    The graph's channels are shared memory on one node (a two-node ``cluster_utils.Cluster``
    hangs reading cross-node channels with Ray 2.60). Its readers spin: an idle actor keeps
    a core at 100%, which on CPU actors is the core that computes (measured here: 2.9
    CPU-seconds per 3 s per idle actor).
    """
    if setting is False or any(node != driver_node for node in actor_nodes):
        return False
    return setting is True or gpus_per_actor > 0


def _describe_tasks(groups: Sequence[Sequence[TaskSpec]], block: range) -> str:
    keys = [task_key(s) for i in block for s in groups[i]]
    shown = ", ".join(f"(step {s}, task {t})" for s, t in keys[:6])
    more = f" and {len(keys) - 6} more" if len(keys) > 6 else ""
    return f"groups {block.start}..{block.stop - 1} = tasks {shown}{more}"


# ---------------------------------------------------------------------- the actor


class WorkerActor:
    """One Ray actor holding one :class:`~distmeta.worker.Worker` (made an actor by ``ray.remote`` in :class:`RayBackend`).

    The constructor takes only small values. The Worker is built by :meth:`setup` from
    ``args = [ref, generation]``, ``ref`` pointing at ``{"cfg", "worker_args"}`` in the
    object store; in a list, the ref is not resolved on the way in. (A ref among
    constructor arguments of a restartable actor is not lineage-counted by Ray,
    ray-project/ray#53727, so none is passed there.)

    A step's call is one pickled request ``(generation, inline meta or None, pickled
    specs, shared-memory places or None, *args)`` plus, for large meta-parameters that do
    not come through shared memory, the ``ray.put`` ref (resolved by Ray): each extra
    argument or nested ref costs ~0.3 ms per call in Ray. An actor that
    holds no Worker of the request's generation (Ray restarted it, or the backend was
    reconfigured) answers :data:`NEEDS_SETUP`, and the driver sends :meth:`setup` first.
    """

    def __init__(self, index: int, device: str, threads: int) -> None:
        # Objects from the store are zero-copy, read-only numpy arrays; the Worker only reads them.
        warnings.filterwarnings("ignore", message=_READONLY_WARNING)
        self.index, self.device, self.threads = index, device, threads
        self.node_id = ray.get_runtime_context().get_node_id()
        self.worker: Any = None
        self.generation = -1
        self.builds = 0
        self._fault: tuple[str, int, float] | None = None
        self._nan_task: tuple[int, int] | None = None
        self._busy = False
        self._slabs = SlabMaps()

    def setup(self, args: list[Any]) -> dict[str, Any]:
        """Build the Worker (unless this process has one of ``args``' generation) and describe the replica."""
        ref, generation = args
        if self.worker is None or self.generation != generation:
            from distmeta.worker import Worker

            self.worker = None  # free the old replica first
            payload = ray.get(ref)
            self.worker = Worker(payload["cfg"], **payload["worker_args"], device=self.device, threads=self.threads)
            self.generation = generation
            self.builds += 1
        return {
            "actor": self.index, "actor_id": ray.get_runtime_context().get_actor_id(),
            "node": self.node_id, "pid": os.getpid(), "device": str(self.worker.device),
            "threads": torch.get_num_threads(), "builds": self.builds, **answers.local_versions(),
        }

    def initial_meta(self, args: list[Any]) -> dict[str, np.ndarray]:
        self.setup(args)
        return {n: t.numpy() for n, t in self.worker.initial_meta.items()}

    def _open(self, request: bytes, meta_ref: Any) -> tuple[dict[str, Any], list[list[TaskSpec]], Any, list[Any]] | None:
        """``(meta, groups, shm, args)`` of a request, or None when this process lacks the request's Worker.

        ``shm`` is None or ``{"meta": (path, header) or None, "out": (path, offset, capacity) or None}``:
        where the driver put the meta-parameters and where this call's gradients go
        (:mod:`distmeta.runtime.shm`).
        """
        generation, inline_meta, specs, shm, *args = pickle.loads(request)
        if self.worker is None or generation != self.generation:
            return None
        if shm is not None and shm["meta"] is not None:
            path, header = shm["meta"]
            # Copied out: the driver rewrites the slab two steps on, and nothing here may alias it.
            meta = {n: np.array(a) for n, a in unpack((header, self._slabs.get(path))).items()}
        else:
            meta = inline_meta if meta_ref is None else meta_ref
        return meta, pickle.loads(specs), shm, args

    def compute(self, request: bytes, meta_ref: Any = None) -> Packed | tuple[bytes, tuple[str, int, int]] | str:
        """The GroupResults of the request's block of groups, packed (:mod:`distmeta.runtime.wire`).

        With a shared-memory destination in the request, the gradients are written there
        and the answer is ``(header, (path, offset, nbytes))``; when they do not fit, they
        come back through Ray as usual.
        """
        opened = self._open(request, meta_ref)
        if opened is None:
            return NEEDS_SETUP
        meta, groups, shm, (version,) = opened
        results = self._compute(meta, groups, version)
        if shm is not None and shm["out"] is not None:
            path, offset, capacity = shm["out"]
            written = pack_into(results, self._slabs.get(path)[offset: offset + capacity])
            if written is not None:
                header, nbytes = written
                return header, (path, offset, nbytes)
        return pack(results)

    def compute_compiled(self, request: bytes) -> Packed | str:
        """:meth:`compute` as a Compiled Graph node: one request holds every actor's block; this takes its own."""
        generation, meta, blocks, version = pickle.loads(request)
        if self.worker is None or generation != self.generation:
            return NEEDS_SETUP
        return pack(self._compute(meta, pickle.loads(blocks[self.index]), version))

    def busy(self) -> bool:
        """Whether a compute is running (in the compiled graph's thread): a plain call answers meanwhile."""
        return self._busy

    def _compute(self, meta: dict[str, Any], groups: list[list[TaskSpec]], version: int) -> list[GroupResult]:
        self._busy = True
        try:
            return self._compute_block(meta, groups, version)
        finally:
            self._busy = False

    def _compute_block(self, meta: dict[str, Any], groups: list[list[TaskSpec]], version: int) -> list[GroupResult]:
        fault = self._take_fault()
        t0 = time.perf_counter()
        if fault == "nan":
            self.worker.poisoned = {self._nan_task}
        try:
            results = self.worker.meta_grad_groups(meta, groups, version)
        finally:
            self.worker.poisoned = set()
        block_s = time.perf_counter() - t0
        for r in results:
            r.extra.update(actor=self.index, node=self.node_id, pid=os.getpid(), actor_compute_s=block_s)
            if fault == "stale":
                r.version = version - 1
        return results

    def evaluate(self, request: bytes, meta_ref: Any = None) -> Packed | str:
        """Per-episode metrics of each episode group of the request, packed."""
        opened = self._open(request, meta_ref)
        if opened is None:
            return NEEDS_SETUP
        meta, groups, _, (inner_steps, cache_key, baseline) = opened
        self._take_fault()
        return pack([self.worker.evaluate(meta, g, inner_steps, cache_key, baseline) for g in groups])

    # ------------------------------------------------------------------ fault injection (tests)
    def inject_fault(self, kind: str, times: int = 1, seconds: float = 60.0, task: tuple[int, int] | None = None) -> None:
        """Make the next ``times`` compute/evaluate calls of this process fail.

        ``exit``: the process dies (Ray restarts the actor); ``kill``: it SIGKILLs itself;
        ``hang``: sleep ``seconds`` first; ``stale``: answer for the previous parameter
        version; ``nan``: task ``task`` (a key) gets a NaN loss and meta-gradient;
        ``raise``: an exception from the compute itself; ``none``: clear.
        The ``faults`` config switch (:mod:`distmeta.runtime.faults`) drives this.
        """
        if kind not in ("exit", "kill", "hang", "stale", "nan", "raise", "none"):
            raise ValueError(f"unknown fault kind {kind!r}")
        self._fault = None if kind == "none" else (kind, times, seconds)
        self._nan_task = tuple(task) if task is not None else None  # type: ignore[assignment]

    def _take_fault(self) -> str | None:
        if self._fault is None:
            return None
        kind, times, seconds = self._fault
        self._fault = (kind, times - 1, seconds) if times > 1 else None
        if kind == "exit":
            os._exit(1)
        if kind == "kill":
            from distmeta.runtime.faults import kill_self

            kill_self()
        if kind == "hang":
            time.sleep(seconds)
        if kind == "raise":
            raise RuntimeError(f"injected fault in actor {self.index}")
        return kind

    def ping(self) -> int:
        return os.getpid()


# ---------------------------------------------------------------------- the backend


@dataclass
class _Call:
    block: int
    actor: int
    attempt: int
    deadline: float


@dataclass
class _SharedStep:
    """Where one step's meta-parameters and gradients go in shared memory (actors on the driver's node only)."""

    meta: tuple[str, bytes] | None  # (slab path, wire header) of the meta-parameters; None: they go the Ray way
    out_path: str
    out: np.ndarray  # the driver's map of the out slab
    regions: list[tuple[int, int]]  # (offset, capacity) of each block's gradients in the out slab
    local: set[int]  # actors on the driver's node

    def request(self, block: int, actor: int, attempt: int) -> dict[str, Any] | None:
        """The shared-memory part of a call; a re-run block (attempt > 0) sends its gradients the Ray way.

        A first attempt's region belongs to one call only, so an actor that was given up on
        (hung, then killed) can never write over a re-run's answer.
        """
        if actor not in self.local:
            return None
        return {"meta": self.meta, "out": (self.out_path, *self.regions[block]) if attempt == 0 else None}


@dataclass
class StepStats:
    """What the last :meth:`RayBackend.compute` moved and how long each actor worked."""

    meta_bytes: int = 0
    spec_bytes: int = 0  # pickled task specs sent
    result_bytes: int = 0  # gradient bytes returned
    calls: int = 0
    retries: int = 0
    compiled_graph: bool = False  # the step went through the compiled graph (not plain actor calls)
    shared_memory_calls: int = 0  # calls whose gradients came back through shared memory
    actor_compute_s: dict[int, float] = field(default_factory=dict)
    actor_nodes: dict[int, str] = field(default_factory=dict)
    wall_s: float = 0.0


class RayBackend:
    """Ray actor pool with the :class:`~distmeta.runtime.local.LocalBackend` interface."""

    def __init__(self, cfg: Config, worker_args: dict[str, Any]) -> None:
        self.cfg = cfg
        self.actors: list[Any] = []
        self.infos: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []  # every failed attempt, for logs and the fault-tolerance layer
        self.last_step = StepStats()
        self._pg = None
        self._owns_pg = True  # False when the actors live in a placement group made by someone else (a Tune trial)
        self._args_ref: Any = None
        self._generation = 0
        self._suspect: set[int] = set()  # actors that failed a call and have not answered since
        self._graph: Any = None  # the compiled graph of compute_compiled over the actors, built lazily
        self._graph_breaks = 0
        self._driver_node = ""
        self._slabs: dict[str, Slab] = {}  # shared-memory slabs by role and step parity (see _shared_step)
        self._shared_steps = 0
        self._shm_off = False  # shared memory failed (no space, unsafe directory): Ray's store from then on
        self._closed = False
        self._session: RaySession | None = connect(cfg)
        try:
            self._start(worker_args)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ set-up
    def _start(self, worker_args: dict[str, Any]) -> None:
        cfg = self.cfg
        resources = ray.cluster_resources()
        n, cpus, gpus = plan_workers(cfg, resources)
        if cfg.device == "cuda" and gpus == 0:
            raise ConfigError("device=cuda with Ray workers needs gpus_per_worker > 0 (Ray hides GPUs from actors without one)")
        device = "cuda" if gpus > 0 else "cpu"
        threads = cfg.threads or max(1, int(cpus))
        self.num_workers = n
        self.resources_per_worker = _bundle(cpus, gpus)

        # Inside a placement group (a Ray Tune trial's): the actors go into its last n bundles, no new group.
        trial_pg = ray.util.get_current_placement_group()
        if trial_pg is not None:
            self._pg, self._owns_pg = trial_pg, False
            first = _worker_bundles(trial_pg.bundle_specs, n, self.resources_per_worker)
        else:
            self._reserve(n, cpus, gpus, resources)
            first = 0
        self._plan = (n, cpus, gpus)
        actor_cls = ray.remote(WorkerActor)
        self.actors = [
            actor_cls.options(
                num_cpus=cpus, num_gpus=gpus, max_restarts=-1, max_task_retries=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=self._pg, placement_group_bundle_index=first + k),
            ).remote(k, device, threads)
            for k in range(n)
        ]
        self._load(cfg, worker_args)
        log.info("RayBackend: %d actors (%s each, %d torch threads) on nodes %s", n,
                 _fmt_resources(self.resources_per_worker), threads, sorted({i["node"][:8] for i in self.infos}))

    def _reserve(self, n: int, cpus: float, gpus: float, resources: dict[str, float]) -> None:
        """A placement group of n worker bundles of this backend's own."""
        cfg = self.cfg
        # Reserve every actor's share at once, spread over nodes; an impossible request fails now, not as a hang.
        need = {k: v * n for k, v in self.resources_per_worker.items()}
        short = {k: v for k, v in need.items() if v > resources.get(k, 0.0) + 1e-9}
        remote_cluster = bool(cfg.ray.address or os.environ.get("RAY_ADDRESS")) and cfg.ray.address != "local"
        if short and not remote_cluster:
            raise ConfigError(
                f"workers={cfg.workers} needs {n} x (cpus_per_worker={cpus:g}, gpus_per_worker={gpus:g}) = "
                f"{_fmt_resources(need)}, but the Ray cluster has {_fmt_resources(resources)}; "
                f"lower workers or cpus_per_worker/gpus_per_worker"
            )
        self._pg = placement_group([dict(self.resources_per_worker) for _ in range(n)], strategy="SPREAD")
        try:
            ray.get(self._pg.ready(), timeout=cfg.ray.step_timeout)
        except GetTimeoutError:
            raise WorkerFailedError(
                f"the Ray cluster ({_fmt_resources(ray.cluster_resources())}) did not grant {n} workers of "
                f"{_fmt_resources(self.resources_per_worker)} within ray.step_timeout={cfg.ray.step_timeout:g}s"
            ) from None

    def _load(self, cfg: Config, worker_args: dict[str, Any]) -> None:
        """Put config and dataset in the object store (once for all actors and restarts); every actor builds its Worker."""
        self._teardown_graph()
        self._generation += 1
        self._faults = FaultPlan(cfg.faults)  # the config's injected faults, counted here so restarts are not hit again
        for i, f in enumerate(cfg.faults):
            if isinstance(f.actor, int) and f.actor >= len(self.actors):
                raise ConfigError(f"faults.{i}.actor={f.actor}: this backend has {len(self.actors)} actors")
        self._args_ref = ray.put({"cfg": cfg, "worker_args": worker_args})
        self.cfg = cfg
        timeout = max(cfg.ray.step_timeout, STARTUP_TIMEOUT)
        refs = [a.setup.remote(self._args()) for a in self.actors]
        infos = []
        for k, ref in enumerate(refs):
            try:
                infos.append(ray.get(ref, timeout=timeout))
            except (RayActorError, RayTaskError, GetTimeoutError) as err:
                raise WorkerFailedError(f"Ray actor {k} failed to build its Worker: {err}") from err
        answers.check_versions(infos)  # as DDP checks shapes across ranks: one version everywhere, or nothing starts
        self.infos = infos
        self._driver_node = ray.get_runtime_context().get_node_id()
        meta = ray.get(self.actors[0].initial_meta.remote(self._args()), timeout=timeout)
        self._initial_meta = {name: torch.from_numpy(np.array(v, copy=True)) for name, v in meta.items()}

    def _args(self) -> list[Any]:
        return [self._args_ref, self._generation]

    def reconfigure(self, cfg: Config, worker_args: dict[str, Any]) -> None:
        """Rebuild every actor's Worker for another config on the same actors (sweeps, Tune trials, tests).

        Saves the process start-up (seconds per actor: Python, torch); the config must
        ask for the same number and size of actors.
        """
        if self._closed:
            raise WorkerFailedError("the Ray backend is closed")
        plan = plan_workers(cfg, ray.cluster_resources())
        if plan != self._plan:
            raise ConfigError(f"reconfigure needs the same actors (workers, cpus, gpus) {self._plan}, got {plan}")
        self._load(cfg, worker_args)

    @property
    def initial_meta(self) -> dict[str, torch.Tensor]:
        return self._initial_meta

    @property
    def node_ids(self) -> list[str]:
        return [i["node"] for i in self.infos]

    # ------------------------------------------------------------------ the step
    def compute(self, meta: dict[str, Any], groups: Sequence[Sequence[TaskSpec]], version: int,
                overlap: Callable[[], Any] | None = None) -> list[GroupResult]:
        """Summed meta-gradients of every group, in group order, all computed at parameter ``version``.

        ``overlap`` runs on the driver once every actor has its work (the next step's task
        sampling, say): driver time hidden behind the actors' compute.
        """
        t0 = time.perf_counter()
        groups = [list(g) for g in groups]
        stats = StepStats(meta_bytes=sum(np.asarray(v).nbytes for v in meta.values()))

        spec = answers.meta_spec(meta)  # every gradient must match these names, shapes and dtypes

        def check(block: range, value: Any) -> str | None:
            return answers.group_results_problem(block, value, groups, version, spec)

        results = self._dispatch("compute", meta, groups, (version,), check, stats, overlap)
        for r in results:
            stats.result_bytes += sum(g.nbytes for g in r.grad.values())
            stats.actor_compute_s[r.extra["actor"]] = r.extra["actor_compute_s"]
            stats.actor_nodes[r.extra["actor"]] = r.extra["node"]
        stats.wall_s = time.perf_counter() - t0
        self.last_step = stats
        return results

    def evaluate(self, meta: dict[str, Any], groups: Sequence[Sequence[TaskSpec]], inner_steps: int,
                 cache_key: str | None = None, baseline: bool = False) -> list[dict[str, list[float]]]:
        """Per-episode metrics of each episode group, in group order (``cache_key``, ``baseline``: see :meth:`Worker.evaluate`)."""
        groups = [list(g) for g in groups]

        def check(block: range, value: Any) -> str | None:
            return answers.evaluation_problem(block, value, groups)

        return self._dispatch("evaluate", meta, groups, (inner_steps, cache_key, baseline), check, StepStats())

    def _dispatch(self, method: str, meta: dict[str, Any], groups: list[list[TaskSpec]], args: tuple,
                  check: Callable[[range, Any], str | None], stats: StepStats,
                  overlap: Callable[[], Any] | None = None) -> list[Any]:
        """One call per actor with its block; re-run failed blocks elsewhere; results in group order."""
        if not self.actors:
            raise WorkerFailedError("the Ray backend is closed")
        n = len(self.actors)
        timeout = self.cfg.ray.step_timeout
        blocks = assign_blocks(len(groups), n)
        out: list[Any] = [None] * len(groups)
        filled = [False] * len(groups)
        attempts = [0] * n
        reasons: list[list[str]] = [[] for _ in range(n)]
        pending: dict[Any, _Call] = {}

        published: list[Any] = []  # (inline meta, ref), made on the first call that needs them
        rebuilds = [0] * n
        shared: list[_SharedStep | None] = [None]  # this step's shared-memory places, made with the first plain call

        def submit(b: int, actor: int, inject: bool = True, wait_s: float = timeout) -> None:
            block = [groups[i] for i in blocks[b]]
            specs = pickle.dumps(block, protocol=5)
            stats.spec_bytes += len(specs)
            if method == "compute" and self._faults and inject:
                self._inject(args[0], actor, block)
            if method == "compute" and stats.calls == 0:
                shared[0] = self._shared_step(meta, blocks)
            shm = shared[0].request(b, actor, attempts[b]) if shared[0] is not None else None
            if shm is not None and shm["meta"] is not None:
                inline_meta, meta_ref = None, None
            else:
                if not published:
                    published.append(_publish(meta, sum(np.asarray(v).nbytes for v in meta.values())))
                inline_meta, meta_ref = published[0]
            request = pickle.dumps((self._generation, inline_meta, specs, shm, *args), protocol=5)
            ref = getattr(self.actors[actor], method).remote(request, meta_ref)
            pending[ref] = _Call(b, actor, attempts[b], time.monotonic() + wait_s)
            stats.calls += 1

        def failed(call: _Call, reason: str) -> None:
            b = call.block
            info = self.infos[call.actor] if call.actor < len(self.infos) else {}
            where = f"actor {call.actor} (node {str(info.get('node', '?'))[:12]}, pid {info.get('pid', '?')})"
            reasons[b].append(f"attempt {call.attempt + 1} on {where}: {reason}")
            self.failures.append({"method": method, "block": b, "actor": call.actor, "attempt": call.attempt,
                                  "groups": (blocks[b].start, blocks[b].stop), "reason": reason, "time": time.time()})
            self._suspect.add(call.actor)
            attempts[b] += 1
            if attempts[b] > self.cfg.ray.max_retries:
                raise WorkerFailedError(
                    f"{method}: {_describe_tasks(groups, blocks[b])} failed on every attempt "
                    f"(ray.max_retries={self.cfg.ray.max_retries}):\n  " + "\n  ".join(reasons[b])
                )
            # The next actor that answers (with one actor: the same one, once Ray has restarted it).
            nxt = self._pick((call.actor + 1) % n, time.monotonic() + timeout)
            log.warning("%s: %s; re-running its %d groups on actor %d", method, reasons[b][-1], len(blocks[b]), nxt)
            stats.retries += 1
            submit(b, nxt)

        def receive(call: _Call, fetch: Callable[[], Any]) -> None:
            """Read one actor's answer for a block: fill its groups, or count the failure and re-send the block."""
            try:
                answer = fetch()
            except RETRIABLE as err:
                failed(call, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
                return
            except _CompiledFailure as err:
                failed(call, str(err))
                return
            except _GraphCollateral:  # re-sent as a plain call to the same actor; not counted as its failure
                submit(call.block, call.actor, inject=False)
                return
            except RayTaskError as err:
                raise WorkerFailedError(
                    f"{method} raised on actor {call.actor} for {_describe_tasks(groups, blocks[call.block])}: {err}"
                ) from err
            if isinstance(answer, str) and answer == NEEDS_SETUP:  # a restarted (or reconfigured) process
                rebuilds[call.block] += 1
                if rebuilds[call.block] > MAX_REBUILDS:
                    failed(call, f"lost its Worker {MAX_REBUILDS} times in a row")
                    return
                self.actors[call.actor].setup.remote(self._args())  # runs before the re-sent call (actor order)
                submit(call.block, call.actor, inject=False, wait_s=max(timeout, STARTUP_TIMEOUT))
                return
            if isinstance(answer, tuple) and len(answer) == 2 and isinstance(answer[1], tuple):  # gradients in shared memory
                expected = shared[0].request(call.block, call.actor, call.attempt) if shared[0] is not None else None
                problem = answers.shm_answer_problem(answer, expected["out"] if expected is not None else None)
                if problem is not None:
                    failed(call, problem)
                    return
                header, (path, offset, nbytes) = answer
                # Copied out: the slab is rewritten two steps on, and results may be kept longer.
                answer = header, np.array(shared[0].out[offset: offset + nbytes])
                stats.shared_memory_calls += 1
            value, problem = answers.open_answer(answer)
            problem = problem or check(blocks[call.block], value)
            if problem is not None:
                failed(call, problem)
                return
            for i, r in zip(blocks[call.block], value):
                assert not filled[i], f"group {i} answered twice"
                filled[i] = True
                out[i] = r
                if isinstance(r, GroupResult):
                    r.extra["attempt"] = call.attempt
                    self.infos[call.actor]["pid"] = r.extra["pid"]  # a restarted actor has a new process

        deadline = time.monotonic() + timeout
        graph_refs = self._execute_graph(meta, groups, blocks, args, stats) if method == "compute" else None
        if graph_refs is None:
            for b in range(n):
                if len(blocks[b]):
                    submit(b, self._pick(b, deadline))  # actor b, unless it is dead or restarting
        if overlap is not None:
            overlap()
        if graph_refs is not None:  # actor b computed block b (empty blocks included: the graph runs every actor)
            for b, fetch in enumerate(self._graph_answers(graph_refs, deadline)):
                receive(_Call(b, b, 0, deadline), fetch)
        while pending:
            now = time.monotonic()
            wait_s = max(0.0, min(c.deadline for c in pending.values()) - now)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=wait_s)
            if not ready:
                now = time.monotonic()
                for ref, call in list(pending.items()):
                    if call.deadline <= now and ref in pending:
                        del pending[ref]  # a late answer is never read: each group is counted once
                        try:
                            ray.kill(self.actors[call.actor], no_restart=False)  # Ray restarts the hung actor
                        except Exception:  # pragma: no cover - already gone
                            pass
                        failed(call, f"no answer within ray.step_timeout={timeout:g}s")
                continue
            ref = ready[0]
            call = pending.pop(ref)
            receive(call, lambda r=ref: ray.get(r))
        return out

    # ------------------------------------------------------------------ the shared-memory path
    def _shared_step(self, meta: dict[str, Any], blocks: list[range]) -> _SharedStep | None:
        """This step's shared-memory places (:mod:`distmeta.runtime.shm`), or None when no actor can use them.

        Two sets of slabs, used by alternate steps: the driver starts writing a step's
        meta-parameters only once the previous step's answers are all in, and an actor
        given up on in step ``s`` is killed long before step ``s + 2`` writes its slabs.
        """
        local = {k for k, node in enumerate(self.node_ids) if node == self._driver_node}
        if self._shm_off or not (self.cfg.ray.shared_memory and local and shared_memory_available()):
            return None
        try:
            return self._shared_places(meta, blocks, local)
        except ShmUnavailable as err:  # /dev/shm full or unsafe: never a SIGBUS, never a failed step
            warnings.warn(f"shared memory unavailable ({err.strerror}); parameters and gradients go through Ray's "
                          f"object store from now on", RuntimeWarning, stacklevel=2)
            self._shm_off = True
            return None

    def _shared_places(self, meta: dict[str, Any], blocks: list[range], local: set[int]) -> _SharedStep:
        """:meth:`_shared_step`'s slabs, written; raises :class:`ShmUnavailable` when they cannot be made."""
        parity = self._shared_steps % 2
        self._shared_steps += 1
        meta = {name: np.ascontiguousarray(v) for name, v in meta.items()}
        meta_bytes = sum(v.nbytes for v in meta.values())
        meta_part = None
        if meta_bytes >= INLINE_META_BYTES:  # smaller ones ride inside the request
            slab = self._slabs.setdefault(f"meta{parity}", Slab(f"meta{parity}"))
            written = pack_into(meta, slab.ensure)
            assert written is not None and slab.path is not None
            meta_part = (slab.path, written[0])
        # Room for each group's gradients (as large as the meta-parameters) plus alignment.
        regions, offset = [], 0
        for block in blocks:
            capacity = len(block) * (meta_bytes + ALIGN * len(meta)) + 4096
            regions.append((offset, capacity))
            offset += -(-capacity // ALIGN) * ALIGN
        out = self._slabs.setdefault(f"out{parity}", Slab(f"out{parity}"))
        out_array = out.ensure(offset)
        assert out.path is not None
        return _SharedStep(meta_part, out.path, out_array, regions, local)

    # ------------------------------------------------------------------ the compiled-graph path
    def _execute_graph(self, meta: dict[str, Any], groups: list[list[TaskSpec]], blocks: list[range],
                       args: tuple, stats: StepStats) -> list[Any] | None:
        """Start a step on the compiled graph; None when the plain calls should carry it instead.

        Plain calls carry it when :func:`use_compiled_graph` says no (``ray.compiled_graph``,
        actors on other nodes), with injected faults from the config (whose order against
        graph steps is not guaranteed), while an actor is suspect, and when the graph
        cannot be built or started.
        """
        wanted = use_compiled_graph(self.cfg.ray.compiled_graph, self._plan[2], self.node_ids, self._driver_node)
        if (not wanted or self._faults or self._suspect
                or self._graph_breaks >= MAX_GRAPH_BREAKS or len(blocks) != len(self.actors)):
            return None
        try:
            if self._graph is None:
                from ray.dag import InputNode, MultiOutputNode

                with InputNode() as request:
                    dag = MultiOutputNode([a.compute_compiled.bind(request) for a in self.actors])
                self._graph = dag.experimental_compile()
            specs = [pickle.dumps([groups[i] for i in block], protocol=5) for block in blocks]
            stats.spec_bytes += sum(len(x) for x in specs)
            stats.calls += len(specs)
            stats.compiled_graph = True
            return self._graph.execute(pickle.dumps((self._generation, meta, specs, *args), protocol=5))
        except Exception as err:  # noqa: BLE001 - any failure here only means: use plain calls
            log.warning("compiled graph unavailable (%s: %s); this step uses plain actor calls", type(err).__name__, err)
            self._break_graph()
            return None

    def _graph_answers(self, refs: list[Any], deadline: float) -> list[Callable[[], Any]]:
        """Each actor's answer to a graph step, as a callable that returns it or raises why it is lost.

        A graph step's outputs are read together, so one failure hides every answer; the
        graph is torn down and the failure is pinned on its actor: the one a death names,
        the ones still busy (hung) at the deadline, the one whose compute raised. The
        others' blocks are re-sent as plain calls without counting against them.
        """
        def value(v: Any) -> Callable[[], Any]:
            return lambda: v

        def error(e: BaseException) -> Callable[[], Any]:
            def fetch() -> Any:
                raise e
            return fetch

        collateral = error(_GraphCollateral())
        try:
            return [value(v) for v in ray.get(list(refs), timeout=max(0.0, deadline - time.monotonic()))]
        except RayTaskError as err:  # a Worker exception: raised again by its actor's block
            self._break_graph()
            return [error(err) if info.get("pid") == err.pid else collateral for info in self.infos]
        except (GetTimeoutError, TimeoutError):
            hung = self._busy_actors()
            for k in hung:
                try:
                    ray.kill(self.actors[k], no_restart=False)  # Ray restarts the hung actor
                except Exception:  # pragma: no cover - already gone
                    pass
            self._break_graph()
            late = error(_CompiledFailure(f"no answer within ray.step_timeout={self.cfg.ray.step_timeout:g}s"))
            return [late if k in hung else collateral for k in range(len(self.actors))]
        except (RayActorError, RayChannelError, *RETRIABLE) as err:
            self._break_graph()
            culprit = getattr(err, "actor_id", None)
            lost = error(_CompiledFailure(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"))
            return [lost if culprit is not None and info.get("actor_id") == culprit else collateral for info in self.infos]

    def _busy_actors(self, wait_s: float = 2.0) -> set[int]:
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

    def _break_graph(self) -> None:
        if self._graph is not None:
            self._graph_breaks += 1
        self._teardown_graph()

    def _teardown_graph(self) -> None:
        graph, self._graph = self._graph, None
        if graph is not None:
            try:
                graph.teardown()
            except Exception as err:  # noqa: BLE001 - best effort: its actors may be gone
                log.debug("compiled graph teardown: %s", err)

    def _inject(self, version: int, actor: int, block: list[list[TaskSpec]]) -> None:
        """Arm the configured fault (if any) for the call about to go to ``actor`` (calls run in order)."""
        hit = self._faults.take(version, actor, [task_key(s) for g in block for s in g])
        if hit is not None:
            fault, task = hit
            log.warning("injecting fault %s into actor %d at step %d", fault.kind, actor, version)
            self.actors[actor].inject_fault.remote(ACTOR_KIND[fault.kind], 1, fault.seconds, task)

    # ------------------------------------------------------------------ actor health
    def _healthy(self, wait_s: float = 1.0) -> list[int]:
        """Actors believed alive. A suspect (it failed a call) is cleared when it answers a ping within ``wait_s``.

        A restarting actor refuses calls at once (``ActorUnavailableError``), a hung one
        does not answer: both stay suspect, and get no new work until they answer.
        """
        if self._suspect:
            pings = {self.actors[k].ping.remote(): k for k in sorted(self._suspect)}
            ready, _ = ray.wait(list(pings), num_returns=len(pings), timeout=wait_s)
            for ref in ready:
                try:
                    ray.get(ref)
                except RETRIABLE + (RayTaskError,):
                    continue
                self._suspect.discard(pings[ref])
        return [k for k in range(len(self.actors)) if k not in self._suspect]

    def _pick(self, preferred: int, deadline: float) -> int:
        """``preferred`` if it is healthy, else the next healthy actor after it; waits (until ``deadline``) if none is."""
        n = len(self.actors)
        order = [(preferred + j) % n for j in range(n)]
        while True:
            healthy = set(self._healthy())
            for k in order:
                if k in healthy:
                    return k
            if time.monotonic() > deadline:
                raise WorkerFailedError(
                    f"none of the {n} Ray actors is available (dead or restarting) "
                    f"within ray.step_timeout={self.cfg.ray.step_timeout:g}s"
                )
            time.sleep(0.25)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until every actor answers (after restarts); :class:`WorkerFailedError` past ``timeout``."""
        deadline = time.monotonic() + (timeout if timeout is not None else max(self.cfg.ray.step_timeout, STARTUP_TIMEOUT))
        self._suspect.update(range(len(self.actors)))
        while self._healthy() != list(range(len(self.actors))):
            if time.monotonic() > deadline:
                raise WorkerFailedError(f"Ray actors {sorted(self._suspect)} did not come back within {timeout}s")
            time.sleep(0.25)

    # ------------------------------------------------------------------ tear-down
    def close(self) -> None:
        """Kill the actors, free the placement group, and shut Ray down only if this backend started it."""
        if self._closed:
            return
        self._closed = True
        self._teardown_graph()
        for slab in self._slabs.values():
            slab.close()
        if ray.is_initialized():
            for a in self.actors:
                try:
                    ray.kill(a, no_restart=True)
                except Exception:  # pragma: no cover - already dead
                    pass
            if self._pg is not None and self._owns_pg:
                try:
                    remove_placement_group(self._pg)
                except Exception:  # pragma: no cover
                    pass
        self.actors = []
        self._pg = None
        self._args_ref = None
        if self._session is not None:
            self._session.close()
            self._session = None

    def __del__(self) -> None:  # pragma: no cover - best effort when a caller forgets close()
        try:
            if not self._closed and self.actors and ray.is_initialized():
                for a in self.actors:
                    ray.kill(a, no_restart=True)
        except Exception:
            pass
