"""What a worker sends back for one task group: the summed meta-gradient and its bookkeeping.

Kept apart from :mod:`distmeta.worker` so the runtime's reduction, wire and answer checks
use the type without importing the compute.
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
    # (summed on a node, distmeta.runtime.tree), or 0 when another result's ``grad`` holds this group's.
    covers: int = 1


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
