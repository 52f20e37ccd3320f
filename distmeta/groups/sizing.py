"""Peak memory of one group's meta-gradient, and ``algorithm.group_size: auto`` from a budget.

A group is the unit one actor computes at once, so its peak memory is what a per-actor
budget has to hold. ``group_size: auto`` measures groups of the first step's tasks (one
task, two tasks, then the predicted size) and keeps the largest that fits
``algorithm.memory_budget_mb``; it never changes anything else (the algorithm, its
paths, the inner loop). A budget that not even one task fits is an error naming both.

Peak memory is measured above the process's resting level: on CUDA from the caching
allocator's peak counter, on CPU from the kernel's peak resident set (``VmHWM``, reset
through ``/proc/self/clear_refs``) after returning freed heap to the system, with large
blocks mapped and unmapped one by one while measuring (glibc ``M_MMAP_THRESHOLD``).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import torch

MB = 1024 * 1024
T = TypeVar("T")


class MemoryBudgetError(RuntimeError):
    """A group does not fit ``algorithm.memory_budget_mb``."""


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return libc if libc is not None and hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def _trim_heap() -> None:
    """Give freed heap pages back to the system (glibc), so the resting level is the live memory."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def _mmap_threshold(size: int) -> None:
    """Serve allocations above ``size`` bytes with their own mappings, returned to the system when freed.

    glibc otherwise raises this threshold as large blocks are freed and then serves them from
    a heap it keeps, so the resident set would count freed tensors as live ones.
    """
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, size)


def cpu_peak_supported() -> bool:
    """Whether this process can reset its peak resident set (Linux ``/proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _status_kb("VmHWM")
        return True
    except (OSError, RuntimeError):
        return False


def peak_memory(fn: Callable[[], T], device: torch.device | str = "cpu") -> tuple[T, int]:
    """Run ``fn`` and return its result and its peak memory in bytes above the level before it.

    Args:
        fn: the computation (one group's meta-gradient, one peer's meta-batch).
        device: where it allocates: ``cuda`` reads the allocator's peak, ``cpu`` the peak resident set.

    Returns:
        ``(fn(), peak bytes)``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        return out, max(0, torch.cuda.max_memory_allocated(device) - base)
    if not cpu_peak_supported():
        raise MemoryBudgetError("cannot measure peak memory here: /proc/self/clear_refs is not writable (Linux only)")
    _mmap_threshold(128 * 1024)
    try:
        _trim_heap()
        base = _status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        out = fn()
        return out, max(0, _status_kb("VmHWM") - base) * 1024
    finally:
        _mmap_threshold(32 * MB)  # glibc's own ceiling for the threshold it adjusts


def choose_group_size(measure: Callable[[int], int], meta_batch: int, budget_bytes: float) -> tuple[int, dict[int, int]]:
    """The largest group size ``<= meta_batch`` whose measured peak fits ``budget_bytes``.

    Peak memory is about linear in the group size: ``peak(g) = base + g * per_task`` from
    groups of 1 and 2 predicts a size, which is measured; if it does not fit, bisection
    between the largest size that fits and the smallest that does not.

    Args:
        measure: ``g -> peak bytes`` of one group of ``g`` tasks.
        meta_batch: tasks per step (the largest group there is).
        budget_bytes: the per-actor budget.

    Returns:
        The group size and every measurement ``{g: peak bytes}``.

    Raises:
        MemoryBudgetError: one task alone is over the budget.
    """
    seen = {1: measure(1)}
    if seen[1] > budget_bytes:
        raise MemoryBudgetError(
            f"algorithm.group_size=auto: a group of 1 task peaks at {seen[1] / MB:.1f} MB, over "
            f"algorithm.memory_budget_mb={budget_bytes / MB:g}; raise the budget or lower the model's or the task's size")
    if meta_batch == 1:
        return 1, seen
    seen[2] = measure(2)
    per_task = max(seen[2] - seen[1], 1)
    base = seen[1] - per_task
    lo = max(g for g, p in seen.items() if p <= budget_bytes)  # the largest size known to fit
    hi = meta_batch + 1  # the smallest size known not to fit
    guess = max(1, min(meta_batch, math.floor((budget_bytes - base) / per_task)))
    while hi - lo > 1:
        size = guess if lo < guess < hi else (lo + hi) // 2
        seen[size] = seen.get(size) or measure(size)
        if seen[size] <= budget_bytes:
            lo = size
            if size == guess:
                break  # the linear prediction fits: nothing larger is predicted to
        else:
            hi = size
    return lo, seen


def resolve_group_size(cfg: Any, group_peak: Callable[[Sequence[Any]], int], specs: Sequence[Any]) -> int:
    """``algorithm.group_size`` as an integer, checked against ``algorithm.memory_budget_mb`` on ``specs``.

    ``auto``: :func:`choose_group_size` over groups of ``specs``' first tasks. A fixed size
    with a budget is measured once and is an error if over it. The measurements come from
    ``group_peak`` (a backend's :meth:`~distmeta.training.backend.Backend.group_peak`), so they
    are taken on the replicas' own device: a GPU actor measures its GPU.

    Args:
        cfg: the run's config.
        group_peak: ``specs -> peak bytes`` of one group's meta-gradient on a replica.
        specs: the first step's task specs.

    Returns:
        The group size to chunk every meta-batch with.
    """
    a = cfg.algorithm
    if a.memory_budget_mb is None:
        return int(a.group_size)

    def measure(g: int) -> int:
        return group_peak(list(specs[:g]))

    budget = a.memory_budget_mb * MB  # not rounded: the error names the budget as configured
    if a.group_size == "auto":
        return choose_group_size(measure, len(specs), budget)[0]
    size = int(a.group_size)
    peak = measure(min(size, len(specs)))
    if peak > budget:
        raise MemoryBudgetError(
            f"algorithm.group_size={size} peaks at {peak / MB:.1f} MB per actor, over algorithm.memory_budget_mb="
            f"{a.memory_budget_mb:g}; lower group_size or set it to auto")
    return size
