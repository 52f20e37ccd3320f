"""How one step's meta-parameters reach the actors and their gradients come back, chosen once per backend.

Two transports, behind one small interface (``step(meta, blocks) -> Delivery``; a
delivery gives each call its :class:`Parts` and reads each answer):

* :class:`ObjectStoreTransport`: meta-parameters smaller than :data:`INLINE_META_BYTES`
  ride inside each request (Ray inlines objects this small itself, and a put plus its
  fetch costs more than sending a few kilobytes twice); larger ones are one ``ray.put``
  per step. Gradients come back as Ray return values.
* :class:`SharedMemoryTransport` (``ray.shared_memory``, actors on the driver's node): the
  driver writes large meta-parameters into a ``/dev/shm`` slab that those actors map, and
  each writes its packed gradients into its own region of another slab
  (:mod:`distmeta.distributed.shm`); only headers travel through Ray. Actors on other nodes,
  and re-runs of a failed block, use the object-store way within the same step. If
  ``/dev/shm`` fills up or is unsafe, it warns once and carries on as the object store.

``python -m benchmarks.speed.ray_overhead`` measures the two against each other.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import ray

from distmeta.config import RayConfig
from distmeta.distributed import answers
from distmeta.distributed.shm import ShmUnavailable, Slab, shared_memory_available
from distmeta.distributed.wire import ALIGN, pack_into

#: Meta-parameters smaller than this travel inside each call (Ray's own inlining limit).
INLINE_META_BYTES = 100 * 1024


@dataclass
class Parts:
    """What one call carries besides its specs: inline meta-parameters, or a ref to them, and shared-memory places."""

    meta: dict[str, Any] | None = None
    meta_ref: Any = None
    shm: dict[str, Any] | None = None


class Delivery(Protocol):
    """One step's way in and out."""

    shared_memory_calls: int  # answers read from shared memory

    def parts(self, block: int, actor: int, attempt: int) -> Parts:
        """The transport parts of the call sending ``block`` to ``actor`` (``attempt`` 0 is the first)."""
        ...

    def receive(self, answer: Any, block: int, actor: int, attempt: int) -> tuple[Any, str | None]:
        """``(packed answer, None)``, or ``(None, why it cannot be read)``."""
        ...


def _nbytes(meta: dict[str, Any]) -> int:
    return sum(np.asarray(v).nbytes for v in meta.values())


class ObjectStoreDelivery:
    """Meta-parameters inline or one ``ray.put`` (made on the first call that needs it); answers as Ray returns them."""

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta
        self.shared_memory_calls = 0
        self._parts: Parts | None = None

    def parts(self, block: int, actor: int, attempt: int) -> Parts:
        if self._parts is None:
            small = _nbytes(self.meta) < INLINE_META_BYTES
            self._parts = Parts(meta=self.meta) if small else Parts(meta_ref=ray.put(self.meta))
        return self._parts

    def receive(self, answer: Any, block: int, actor: int, attempt: int) -> tuple[Any, str | None]:
        if _is_shm_answer(answer):  # an actor may not answer through shared memory it was never given
            return None, answers.shm_answer_problem(answer, None)
        return answer, None


def _is_shm_answer(answer: Any) -> bool:
    return isinstance(answer, tuple) and len(answer) == 2 and isinstance(answer[1], tuple)


class ObjectStoreTransport:
    """Everything through Ray's object store (or inline in the call)."""

    name = "object-store"

    def step(self, meta: dict[str, Any], blocks: list[range]) -> Delivery:
        return ObjectStoreDelivery(meta)

    def close(self) -> None:
        """Nothing held."""


class SlabDelivery(ObjectStoreDelivery):
    """One step through the shared-memory slabs for the actors in ``local``; the object store for the rest."""

    def __init__(self, meta: dict[str, Any], meta_place: tuple[str, bytes] | None, out_path: str, out: np.ndarray,
                 regions: list[tuple[int, int]], local: set[int]) -> None:
        super().__init__(meta)
        self.meta_place, self.out_path, self.out, self.regions, self.local = meta_place, out_path, out, regions, local

    def _shm(self, block: int, actor: int, attempt: int) -> dict[str, Any] | None:
        """A first attempt's region belongs to one call only: an actor given up on never writes over a re-run's answer."""
        if actor not in self.local:
            return None
        return {"meta": self.meta_place, "out": (self.out_path, *self.regions[block]) if attempt == 0 else None}

    def parts(self, block: int, actor: int, attempt: int) -> Parts:
        shm = self._shm(block, actor, attempt)
        if shm is not None and shm["meta"] is not None:
            return Parts(shm=shm)
        return Parts(meta=(base := super().parts(block, actor, attempt)).meta, meta_ref=base.meta_ref, shm=shm)

    def receive(self, answer: Any, block: int, actor: int, attempt: int) -> tuple[Any, str | None]:
        if not _is_shm_answer(answer):
            return answer, None
        given = self._shm(block, actor, attempt)
        problem = answers.shm_answer_problem(answer, given["out"] if given is not None else None)
        if problem is not None:
            return None, problem
        header, (_, offset, nbytes) = answer
        self.shared_memory_calls += 1
        # Copied out: the slab is rewritten two steps on, and results may be kept longer.
        return (header, np.array(self.out[offset: offset + nbytes])), None


class SharedMemoryTransport:
    """Slabs in ``/dev/shm`` for the actors on the driver's node (``local``), two sets used by alternate steps.

    The driver writes a step's slabs only once the previous step's answers are all in,
    and an actor given up on in step ``s`` is killed long before step ``s + 2`` reuses them.
    """

    name = "shared-memory"

    def __init__(self, local: set[int]) -> None:
        self.local = local
        self._slabs: dict[str, Slab] = {}
        self._steps = 0
        self._off = False  # /dev/shm failed: the object store from then on

    def step(self, meta: dict[str, Any], blocks: list[range]) -> Delivery:
        if self._off:
            return ObjectStoreDelivery(meta)
        try:
            return self._places(meta, blocks)
        except ShmUnavailable as err:  # /dev/shm full or unsafe: never a SIGBUS, never a failed step
            warnings.warn(f"shared memory unavailable ({err.strerror}); parameters and gradients go through Ray's "
                          f"object store from now on", RuntimeWarning, stacklevel=2)
            self._off = True
            return ObjectStoreDelivery(meta)

    def _places(self, meta: dict[str, Any], blocks: list[range]) -> SlabDelivery:
        parity = self._steps % 2
        self._steps += 1
        contiguous = {name: np.ascontiguousarray(v) for name, v in meta.items()}
        meta_bytes = _nbytes(contiguous)
        meta_place = None
        if meta_bytes >= INLINE_META_BYTES:  # smaller ones ride inside the request
            slab = self._slabs.setdefault(f"meta{parity}", Slab(f"meta{parity}"))
            written = pack_into(contiguous, slab.ensure)
            assert written is not None and slab.path is not None
            meta_place = (slab.path, written[0])
        # Room for each group's gradients (as large as the meta-parameters) plus alignment.
        regions, offset = [], 0
        for block in blocks:
            capacity = len(block) * (meta_bytes + ALIGN * len(meta)) + 4096
            regions.append((offset, capacity))
            offset += -(-capacity // ALIGN) * ALIGN
        out = self._slabs.setdefault(f"out{parity}", Slab(f"out{parity}"))
        out_array = out.ensure(offset)
        assert out.path is not None
        return SlabDelivery(meta, meta_place, out.path, out_array, regions, self.local)

    def close(self) -> None:
        """Unlink the slabs."""
        for slab in self._slabs.values():
            slab.close()
        self._slabs = {}


def choose_transport(ray_cfg: RayConfig, local: set[int]) -> ObjectStoreTransport | SharedMemoryTransport:
    """Shared memory when ``ray.shared_memory`` is on, some actors share the driver's node and ``/dev/shm`` is safe."""
    if ray_cfg.shared_memory and local and shared_memory_available():
        return SharedMemoryTransport(local)
    return ObjectStoreTransport()
