"""What runs inside each Ray actor: one :class:`~distmeta.worker.Worker`, and the wire format of its calls.

The constructor takes only small values. The Worker is built by :meth:`WorkerActor.setup`
from ``args = [ref, generation]``, ``ref`` pointing at ``{"cfg", "worker_args"}`` in the
object store (in a list, so the ref is not resolved on the way in; a ref among the
constructor arguments of a restartable actor is not lineage-counted by Ray,
ray-project/ray#53727). Every restart of the actor, and every reconfiguration of the
backend, rebuilds the Worker from that one object: the corpus never travels per step.

A step's call is one pickled :class:`Request` plus, when the meta-parameters went into
the object store, their ref (resolved by Ray). An actor that holds no Worker of the
request's generation (Ray restarted it, or the backend was reconfigured) answers
:data:`NEEDS_SETUP`, and the dispatcher sends :meth:`WorkerActor.setup` first.
"""
from __future__ import annotations

import os
import pickle
import time
import warnings
from typing import Any

import numpy as np
import torch

from distmeta.distributed import answers
from distmeta.distributed.shm import SlabMaps
from distmeta.distributed.wire import (
    NEEDS_SETUP,
    Packed,
    Request,
    pack,
    pack_into,
    unpack,
)
from distmeta.tasks.specs import TaskSpec

_READONLY_WARNING = "The given NumPy array is not writable"


class WorkerActor:
    """One Ray actor holding one Worker (made an actor by ``ray.remote`` in :class:`~.actor_pool.ActorPool`)."""

    def __init__(self, index: int, device: str, threads: int) -> None:
        import ray

        # Objects from the store are zero-copy, read-only numpy arrays; the Worker only reads them.
        warnings.filterwarnings("ignore", message=_READONLY_WARNING)
        self.index, self.device, self.threads = index, device, threads
        self.node_id = ray.get_runtime_context().get_node_id()
        self.worker: Any = None
        self.generation = -1
        self.builds = 0
        self._busy = False
        self._slabs = SlabMaps()

    def setup(self, args: list[Any]) -> dict[str, Any]:
        """Build the Worker (unless this process has one of ``args``' generation) and describe the replica."""
        import ray

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
        """The Worker's initial meta-parameters (the same on every replica: built from the config's seed)."""
        self.setup(args)
        return {n: t.numpy() for n, t in self.worker.initial_meta.items()}

    def group_peak(self, args: list[Any], meta: dict[str, Any], specs: bytes) -> int:
        """Peak bytes of one group's meta-gradient on this actor's device (:meth:`Worker.group_peak`)."""
        self.setup(args)
        return int(self.worker.group_peak(meta, pickle.loads(specs)))

    def _meta(self, request: Request, meta_ref: Any) -> dict[str, Any]:
        shm = request.shm
        if shm is not None and shm["meta"] is not None:
            path, header = shm["meta"]
            # Copied out: the driver rewrites the slab two steps on, and nothing here may alias it.
            return {n: np.array(a) for n, a in unpack((header, self._slabs.get(path))).items()}
        return request.meta if meta_ref is None else meta_ref

    def compute_worker(self, groups: list[list[TaskSpec]], version: int) -> Any:
        """The Worker that computes ``groups`` at ``version``: this actor's own (a drill's subclass may wrap it)."""
        return self.worker

    def compute(self, data: bytes, meta_ref: Any = None) -> Packed | tuple[bytes, tuple[str, int, int]] | str:
        """The GroupResults of the request's block of groups, packed (:mod:`distmeta.distributed.wire`).

        With a shared-memory destination in the request, the gradients are written there
        and the answer is ``(header, (path, offset, nbytes))``; when they do not fit, they
        come back through Ray as usual.
        """
        request: Request = pickle.loads(data)
        if self.worker is None or request.generation != self.generation:
            return NEEDS_SETUP
        results = self._compute(self._meta(request, meta_ref), pickle.loads(request.specs), request.args[0])
        out = request.shm["out"] if request.shm is not None else None
        if out is not None:
            path, offset, capacity = out
            written = pack_into(results, self._slabs.get(path)[offset: offset + capacity])
            if written is not None:
                header, nbytes = written
                return header, (path, offset, nbytes)
        return pack(results)

    def compute_compiled(self, data: bytes) -> Packed | str:
        """:meth:`compute` as a Compiled Graph node: one request holds every actor's block; this takes its own."""
        generation, meta, blocks, version = pickle.loads(data)
        if self.worker is None or generation != self.generation:
            return NEEDS_SETUP
        return pack(self._compute(meta, pickle.loads(blocks[self.index]), version))

    def evaluate(self, data: bytes, meta_ref: Any = None) -> Packed | str:
        """Per-episode metrics of each episode group of the request, packed."""
        request: Request = pickle.loads(data)
        if self.worker is None or request.generation != self.generation:
            return NEEDS_SETUP
        meta, worker = self._meta(request, meta_ref), self.worker
        inner_steps, cache_key, baseline = request.args
        return pack([worker.evaluate(meta, g, inner_steps, cache_key, baseline) for g in pickle.loads(request.specs)])

    def _compute(self, meta: dict[str, Any], groups: list[list[TaskSpec]], version: int) -> list:
        self._busy = True
        t0 = time.perf_counter()
        try:
            results = self.compute_worker(groups, version).meta_grad_groups(meta, groups, version)
        finally:
            self._busy = False
        block_s = time.perf_counter() - t0
        for r in results:
            r.extra.update(actor=self.index, node=self.node_id, pid=os.getpid(), actor_compute_s=block_s)
        return results

    def sum_blocks(self, data: bytes, refs: list[Any]) -> Packed:
        """As this node's reducer: sum the node's blocks of a step (:mod:`distmeta.distributed.node_sum`).

        ``refs`` (in a list, so Ray does not resolve them on the way in) are the answers of
        the node's actors for those blocks; this one's own among them.
        """
        from distmeta.distributed.node_sum import sum_blocks

        return sum_blocks(pickle.loads(data), refs)

    def busy(self) -> bool:
        """Whether a compute is running (in the compiled graph's thread): a plain call answers meanwhile."""
        return self._busy

    def ping(self) -> int:
        """This actor's process id: it answers, so it is alive."""
        return os.getpid()
