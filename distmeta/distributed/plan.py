"""How many actors of what size, and which actor computes which groups: pure functions, no Ray import.

The sweeps use the same functions to check, before Ray starts anything, that a trial fits
the cluster (:mod:`distmeta.sweeps.fit`).
"""
from __future__ import annotations

from distmeta.config import RayConfig, ResourcesConfig
from distmeta.errors import ConfigError


def fmt_resources(r: dict[str, float]) -> str:
    """``CPU=2, GPU=0``: the resources a message names."""
    return ", ".join(f"{k}={r.get(k, 0):g}" for k in ("CPU", "GPU"))


def bundle(cpus: float, gpus: float) -> dict[str, float]:
    """One actor's placement-group bundle (no ``GPU`` key without GPUs: Ray refuses zero-GPU bundles on CPU nodes)."""
    return {"CPU": cpus, **({"GPU": gpus} if gpus > 0 else {})}


def plan_workers(res: ResourcesConfig, cluster: dict[str, float]) -> tuple[int, float, float]:
    """``(actors, CPUs per actor, GPUs per actor)`` for ``res.workers`` on a cluster with ``cluster`` resources.

    ``resources.workers: auto`` is one actor per GPU (per ``gpus_per_worker`` GPUs when that is set)
    when the cluster has GPUs, else one per ``cpus_per_worker`` CPUs.

    Args:
        res: the run's ``resources`` section.
        cluster: the Ray cluster's total resources (``{"CPU": 8.0, "GPU": 1.0}``).

    Returns:
        How many actors, and the CPUs and GPUs each reserves.

    Raises:
        ConfigError: ``resources.workers: auto`` and not even one actor fits.
    """
    cpus, gpus = float(res.cpus_per_worker), float(res.gpus_per_worker)
    if res.workers != "auto":
        return int(res.workers), cpus, gpus
    total_cpu = float(cluster.get("CPU", 0.0))
    total_gpu = float(cluster.get("GPU", 0.0))
    by_cpu = int(total_cpu / cpus + 1e-9)
    if total_gpu > 0:
        gpus = gpus or 1.0
        n = min(int(total_gpu / gpus + 1e-9), by_cpu)
    else:
        n = by_cpu
    if n < 1:
        raise ConfigError(
            f"resources.workers=auto: the Ray cluster ({fmt_resources(cluster)}) cannot hold one worker of "
            f"resources.cpus_per_worker={cpus:g}, resources.gpus_per_worker={gpus:g}"
        )
    return n, cpus, gpus


def fitting(per_worker: dict[str, float], available: dict[str, float]) -> int:
    """How many more actors of ``per_worker`` the ``available`` resources hold."""
    return int(min(available.get(k, 0.0) / v for k, v in per_worker.items() if v > 0) + 1e-9)


def elastic_target(res: ResourcesConfig, ray_cfg: RayConfig) -> int | float | None:
    """How far an elastic pool grows (``ray.elastic``): ``resources.workers`` (unbounded for ``auto``), None if fixed."""
    setting = ray_cfg.elastic
    if setting is False or (setting == "auto" and res.workers != "auto"):
        return None
    return float("inf") if res.workers == "auto" else int(res.workers)


def shortfall(need: dict[str, float], resources: dict[str, float]) -> dict[str, float]:
    """The resources of ``need`` that the cluster's ``resources`` do not hold, with how much is missing."""
    return {k: v - resources.get(k, 0.0) for k, v in need.items() if v > resources.get(k, 0.0) + 1e-9}


def worker_bundles(bundles: list[dict[str, float]], n: int, per_worker: dict[str, float]) -> int:
    """Index of the first of the last ``n`` bundles of a placement group, checked to hold one worker each.

    A Ray Tune trial's group is ``[driver bundle (absent when empty), worker bundle x n]``,
    so the workers take its last ``n`` bundles.

    Raises:
        ConfigError: the group has no room for ``n`` workers of ``per_worker`` in its last bundles.
    """
    first = len(bundles) - n
    small = [i for i in range(max(first, 0), len(bundles))
             if any(bundles[i].get(k, 0.0) + 1e-9 < v for k, v in per_worker.items())]
    if first < 0 or small:
        raise ConfigError(
            f"this process runs in a placement group with bundles {bundles}, which has no room for "
            f"{n} workers of {fmt_resources(per_worker)} in its last {n} bundles; size it as "
            f"[driver bundle] + {n} x {per_worker} (the sweeps size trials this way)"
        )
    return first
