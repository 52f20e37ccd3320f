"""How task specs and group results cross the driver/actor boundary.

Ray serialises arbitrary objects with cloudpickle plus one out-of-band buffer per numpy
array, which costs ~1 ms per call for a block of task-spec dataclasses or of group
results (24 small gradient arrays, say): several percent of a 40 ms step
(benchmarks/ray_overhead.py). Here an object travels as a plain pickle (protocol 5)
header plus *one* contiguous byte array holding every array buffer: one copy of the
gradients on the sending side, zero-copy views on the receiving side.
"""
from __future__ import annotations

import pickle
from typing import Any

import numpy as np

Packed = tuple[bytes, np.ndarray]
ALIGN = 64


def pack(obj: Any) -> Packed:
    """``obj`` as a pickle header plus one uint8 array with all its (contiguous) array buffers."""
    buffers: list[pickle.PickleBuffer] = []
    body = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    views = [b.raw() for b in buffers]
    sizes = [v.nbytes for v in views]
    starts = [0]
    for n in sizes[:-1]:
        starts.append(starts[-1] + -(-n // ALIGN) * ALIGN)  # every buffer starts aligned for any dtype
    blob = np.empty(starts[-1] + sizes[-1] if sizes else 0, dtype=np.uint8)
    for v, s, n in zip(views, starts, sizes):
        blob[s: s + n] = np.frombuffer(v, dtype=np.uint8)
    return pickle.dumps((starts, sizes, body), protocol=5), blob


def unpack(packed: Packed) -> Any:
    """The object :func:`pack` was given; its arrays are views of ``blob`` (read-only when from Ray's store)."""
    header, blob = packed
    starts, sizes, body = pickle.loads(header)
    buffers = [blob[s: s + n] for s, n in zip(starts, sizes)]
    return pickle.loads(body, buffers=buffers)
