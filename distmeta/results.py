"""What a worker sends back for one task group, and what a backend reports about a step.

Kept apart from :mod:`distmeta.worker` so the reduction, the wire format, the answer checks
and every backend use these types without importing the compute.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
from torch import Tensor


@dataclass
class GroupResult:
    """One task group's summed meta-gradient, per-task metrics and bookkeeping."""

    grad: dict[str, np.ndarray]
    metrics: dict[str, list[float]]
    tasks: list[tuple[int, int]]
    version: int = 0
    compute_s: float = 0.0
    finite: bool = True  # every task's loss and meta-gradient were finite
    extra: dict[str, Any] = field(default_factory=dict)
    bad_tasks: list[tuple[int, int]] = field(default_factory=list)  # keys of the tasks that were not
    skipped: list[tuple[int, int]] = field(default_factory=list)  # keys left out of ``grad`` (nan_policy=skip_task)
    # How many groups, from this one on, ``grad`` sums: 1 (its own), a whole subtree of the reduction tree
    # (summed on a node, distmeta.groups), or 0 when another result's ``grad`` holds this group's.
    covers: int = 1


@dataclass
class StepStats:
    """What the last :meth:`Backend.compute` moved and how long each worker computed.

    The in-process backend fills only ``calls``, ``actor_compute_s`` and ``wall_s``.
    """

    meta_bytes: int = 0  # meta-parameter bytes of the step
    spec_bytes: int = 0  # pickled task specs sent
    result_bytes: int = 0  # gradient bytes returned
    calls: int = 0
    retries: int = 0  # blocks re-run after a failed attempt
    compiled_graph: bool = False  # the step went through a Ray Compiled Graph (not plain actor calls)
    shared_memory_calls: int = 0  # calls whose gradients came back through shared memory
    node_sums: int = 0  # nodes whose groups were summed there (ray.node_reduce)
    actor_compute_s: dict[int, float] = field(default_factory=dict)
    actor_nodes: dict[int, str] = field(default_factory=dict)
    wall_s: float = 0.0


def all_finite(arrays: Iterable[np.ndarray | Tensor]) -> bool:
    """Whether every element of every array (numpy, or a torch tensor on any device) is finite.

    CPU tensors are checked through numpy, which is much faster than ``torch.isfinite(t).all()``
    on CPU: this is driver time while every worker waits.
    """
    for a in arrays:
        if isinstance(a, Tensor):
            if a.device.type != "cpu" or a.dtype == torch.bfloat16:  # numpy has no bfloat16
                if not bool(torch.isfinite(a).all()):
                    return False
                continue
            a = a.detach().numpy()
        if not np.isfinite(a).all():
            return False
    return True
