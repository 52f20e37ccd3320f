"""Does the run's actor plan fit this machine? Checked before any cache is built or Ray starts.

Without ``ray.address`` / ``RAY_ADDRESS`` distmeta starts a private Ray on this machine, with
the CPUs Ray counts here and the GPUs torch sees. ``resources.workers x cpus_per_worker`` (and
``gpus_per_worker``) of the ``resources`` section beyond that would be refused by the actor pool only after the run
directory, the tokenizer and the prefix cache were built and Ray had started; this check
refuses it first, so a wrong ``resources.workers=`` costs nothing and leaves nothing behind. A cluster
distmeta joins, or a Ray already running in this process (a Tune trial, a test's cluster),
sizes itself: nothing is checked then.
"""
from __future__ import annotations

import os
import sys

from distmeta.config import RayConfig, ResourcesConfig
from distmeta.distributed.plan import (
    bundle,
    elastic_target,
    fmt_resources,
    plan_workers,
    shortfall,
)
from distmeta.errors import ConfigError


def joins_cluster(ray_cfg: RayConfig) -> bool:
    """Whether the run joins an existing cluster (``ray.address`` or ``RAY_ADDRESS``, not ``local``), as
    :func:`distmeta.distributed.session.connect` decides."""
    address = ray_cfg.address or os.environ.get("RAY_ADDRESS") or None
    return bool(address) and address != "local"


def local_resources() -> dict[str, float]:
    """The CPUs and GPUs a private Ray started in this process would have (Ray's own CPU count)."""
    import torch

    try:
        from ray._private.utils import (
            get_num_cpus,  # honours cgroup quotas, as ray.init does
        )

        cpus = float(get_num_cpus())
    except Exception:  # a Ray without it: the OS's count
        cpus = float(os.cpu_count() or 1)
    return {"CPU": cpus, "GPU": float(torch.cuda.device_count() if torch.cuda.is_available() else 0)}


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and bool(ray.is_initialized())


def fit_problem(res: ResourcesConfig, ray_cfg: RayConfig, local: dict[str, float]) -> str | None:
    """Why the actors of ``res`` cannot fit a private Ray with ``local`` resources, or None when they fit.

    An elastic pool (``ray.elastic``) starts with what fits, so it needs room for one actor.
    """
    try:
        n, cpus, gpus = plan_workers(res, local)
    except ConfigError as err:  # workers=auto with not even one actor's room
        return str(err)
    first = 1 if elastic_target(res, ray_cfg) is not None else n
    need = {k: v * first for k, v in bundle(cpus, gpus).items()}
    if not shortfall(need, local):
        return None
    return (f"resources.workers={res.workers} needs {first} x (cpus_per_worker={cpus:g}, "
            f"gpus_per_worker={gpus:g}) = {fmt_resources(need)}, but this machine has "
            f"{fmt_resources(local)} for the private Ray distmeta starts (no ray.address / RAY_ADDRESS); lower "
            f"resources.workers (auto takes what fits, 0 runs in-process) or resources.cpus_per_worker / "
            f"gpus_per_worker, or join a cluster with ray.address")


def check_local_fit(res: ResourcesConfig, ray_cfg: RayConfig) -> None:
    """Refuse, before anything is built, a plan of Ray actors that cannot fit the private Ray on this machine.

    Nothing is checked for ``resources.workers: 0``, a cluster to join, or a Ray already running here.

    Args:
        res: the run's ``resources`` section.
        ray_cfg: its ``ray`` section (the cluster to join, the elastic setting).

    Raises:
        ConfigError: naming the plan, what this machine has and the keys to change.
    """
    if res.workers == 0 or joins_cluster(ray_cfg) or _ray_running():
        return
    problem = fit_problem(res, ray_cfg, local_resources())
    if problem is not None:
        raise ConfigError(problem)
