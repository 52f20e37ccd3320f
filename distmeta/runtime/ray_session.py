"""Connecting to (or starting) the Ray cluster a :class:`~distmeta.runtime.actors.RayBackend` runs on.

Three cases, in order:

* Ray is already initialised in this process (tests, Ray Tune trials, a notebook):
  use it as it is and never shut it down.
* ``ray.address`` in the config, or ``RAY_ADDRESS`` in the environment: connect to
  that existing cluster (shut down the connection on close, not the cluster).
* Otherwise start a private single-node instance bound to 127.0.0.1, with no
  dashboard, usage stats off and a modest object store.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from distmeta.config import Config

# Set before Ray is imported anywhere in this process (setdefault: the user's choice wins).
RAY_ENV_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}

MIN_OBJECT_STORE = 256 * 1024**2
MAX_DEFAULT_OBJECT_STORE = 2 * 1024**3


def set_ray_env() -> None:
    """Environment defaults Ray reads at import / init time."""
    for k, v in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)


def default_object_store_memory() -> int:
    """10% of RAM, clamped to [256 MiB, 2 GiB]: meta-parameters and gradients, never the dataset per step."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        total = 8 * 1024**3
    return int(min(MAX_DEFAULT_OBJECT_STORE, max(MIN_OBJECT_STORE, total // 10)))


@dataclass
class RaySession:
    """How this process is attached to Ray; :meth:`close` undoes only what :func:`connect` did."""

    started: bool
    address: str | None

    def close(self) -> None:
        import ray

        if self.started and ray.is_initialized():
            ray.shutdown()
        self.started = False


def connect(cfg: Config) -> RaySession:
    """Attach to Ray as described in the module docstring."""
    set_ray_env()
    import ray

    if ray.is_initialized():
        return RaySession(started=False, address=None)
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or None
    if address and address != "local":
        # An existing cluster: its resources and object store are its own business.
        ray.init(address=address, log_to_driver=True)
        return RaySession(started=True, address=address)
    ray.init(
        address="local",
        include_dashboard=False,
        object_store_memory=cfg.ray.object_store_memory or default_object_store_memory(),
        _node_ip_address="127.0.0.1",
        log_to_driver=True,
        configure_logging=True,
        logging_level="warning",
    )
    return RaySession(started=True, address="local")
