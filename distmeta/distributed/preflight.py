"""Does the run's actor plan fit this machine? Checked before any cache is built or Ray starts.

Without ``ray.address`` / ``RAY_ADDRESS`` distmeta starts a private Ray on this machine, with
the CPUs Ray counts here and the GPUs torch sees. ``workers x cpus_per_worker`` (and
``gpus_per_worker``) beyond that would be refused by the actor pool only after the run
directory, the tokenizer and the prefix cache were built and Ray had started; this check
refuses it first, so a wrong ``workers=`` costs nothing and leaves nothing behind. A cluster
distmeta joins, or a Ray already running in this process (a Tune trial, a test's cluster),
sizes itself: nothing is checked then.
"""
from __future__ import annotations

import os
import sys

from distmeta.config import Config
from distmeta.distributed.plan import (
    bundle,
    elastic_target,
    fmt_resources,
    plan_workers,
    shortfall,
)
from distmeta.errors import ConfigError


def joins_cluster(cfg: Config) -> bool:
    """Whether the run joins an existing cluster (``ray.address`` or ``RAY_ADDRESS``, not ``local``), as
    :func:`distmeta.distributed.session.connect` decides."""
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or None
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


def fit_problem(cfg: Config, resources: dict[str, float]) -> str | None:
    """Why ``cfg``'s actors cannot fit a private Ray with ``resources``, or None when they fit.

    An elastic pool (``ray.elastic``) starts with what fits, so it needs room for one actor.
    """
    try:
        n, cpus, gpus = plan_workers(cfg, resources)
    except ConfigError as err:  # workers=auto with not even one actor's room
        return str(err)
    first = 1 if elastic_target(cfg) is not None else n
    need = {k: v * first for k, v in bundle(cpus, gpus).items()}
    if not shortfall(need, resources):
        return None
    return (f"workers={cfg.workers} needs {first} x (cpus_per_worker={cpus:g}, gpus_per_worker={gpus:g}) = "
            f"{fmt_resources(need)}, but this machine has {fmt_resources(resources)} for the private Ray distmeta "
            f"starts (no ray.address / RAY_ADDRESS); lower workers (workers=auto takes what fits, workers=0 runs "
            f"in-process) or cpus_per_worker/gpus_per_worker, or join a cluster with ray.address")


def check_local_fit(cfg: Config) -> None:
    """Refuse, before anything is built, a plan of Ray actors that cannot fit the private Ray on this machine.

    Nothing is checked for ``workers: 0``, a cluster to join, or a Ray already running here.

    Raises:
        ConfigError: naming the plan, what this machine has and the keys to change.
    """
    if cfg.workers == 0 or joins_cluster(cfg) or _ray_running():
        return
    problem = fit_problem(cfg, local_resources())
    if problem is not None:
        raise ConfigError(problem)
