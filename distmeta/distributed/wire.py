"""How a call and its answer cross the driver/actor boundary: the request, and task specs and results packed.

Ray serialises arbitrary objects with cloudpickle plus one out-of-band buffer per numpy
array, a cost per call that grows with the number of task-spec dataclasses and small
gradient arrays in it (``python -m benchmarks.speed.ray_overhead`` measures it). Here an object travels as a plain pickle (protocol 5)
header plus *one* contiguous byte array holding every array buffer: one copy of the
gradients on the sending side, zero-copy views on the receiving side.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

Packed = tuple[bytes, np.ndarray]
ALIGN = 64
#: An actor's answer when it holds no Worker of the request's generation.
NEEDS_SETUP = "needs-setup"


@dataclass
class Request:
    """One call: a block of task groups and where its inputs and outputs travel.

    ``shm`` is None or ``{"meta": (path, header) or None, "out": (path, offset, capacity) or None}``:
    where the driver put the meta-parameters and where this call's gradients go
    (:mod:`distmeta.distributed.transport`).
    """

    generation: int
    meta: dict[str, Any] | None  # inline meta-parameters; None: in shared memory or the object store
    specs: bytes  # the pickled block of groups
    shm: dict[str, Any] | None
    args: tuple  # (version,) for compute; (inner_steps, cache_key, baseline) for evaluate

    def dumps(self) -> bytes:
        return pickle.dumps(self, protocol=5)


def _layout(obj: Any) -> tuple[bytes, list[memoryview], list[int], int]:
    """``(pickle body, array buffers, aligned start of each, total bytes)`` of ``obj``."""
    buffers: list[pickle.PickleBuffer] = []
    body = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    views = [b.raw() for b in buffers]
    starts = [0]
    for v in views[:-1]:
        starts.append(starts[-1] + -(-v.nbytes // ALIGN) * ALIGN)  # every buffer starts aligned for any dtype
    return body, views, starts, starts[-1] + views[-1].nbytes if views else 0


def _write(views: list[memoryview], starts: list[int], out: np.ndarray) -> None:
    for v, s in zip(views, starts):
        out[s: s + v.nbytes] = np.frombuffer(v, dtype=np.uint8)


def pack(obj: Any) -> Packed:
    """``obj`` as a pickle header plus one uint8 array with all its (contiguous) array buffers."""
    body, views, starts, total = _layout(obj)
    blob = np.empty(total, dtype=np.uint8)
    _write(views, starts, blob)
    return pickle.dumps((starts, [v.nbytes for v in views], body), protocol=5), blob


def pack_into(obj: Any, out: np.ndarray | Callable[[int], np.ndarray]) -> tuple[bytes, int] | None:
    """:func:`pack` writing the blob into ``out`` (a uint8 array: shared memory, say): ``(header, bytes used)``.

    ``out`` may be a function giving a large enough array for a byte count. None, with
    nothing written, when ``out`` is too small.
    """
    body, views, starts, total = _layout(obj)
    if callable(out):
        out = out(total)
    if total > out.nbytes:
        return None
    _write(views, starts, out)
    return pickle.dumps((starts, [v.nbytes for v in views], body), protocol=5), total


def unpack(packed: Packed) -> Any:
    """The object :func:`pack` was given; its arrays are views of ``blob`` (read-only when from Ray's store)."""
    header, blob = packed
    starts, sizes, body = pickle.loads(header)
    buffers = [blob[s: s + n] for s, n in zip(starts, sizes)]
    return pickle.loads(body, buffers=buffers)
