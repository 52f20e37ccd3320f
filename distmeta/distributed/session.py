"""Connecting to (or starting) the Ray cluster a :class:`~distmeta.distributed.ray_backend.RayBackend` runs on.

Three cases, in order:

* Ray is already initialised in this process (tests, Ray Tune trials, a notebook):
  use it as it is and never shut it down.
* ``ray.address`` in the config, or ``RAY_ADDRESS`` in the environment: connect to
  that existing cluster (shut down the connection on close, not the cluster).
* Otherwise start a private single-node instance bound to 127.0.0.1 (every process it
  starts: :data:`LOOPBACK_ENV` is set for it alone, never for a cluster you join), with no
  dashboard, usage stats off and a modest object store, closed to other local users:
  token authentication with a fresh token in a 0600 file inside a 0700 directory made
  for this session (:func:`private_auth_dir`), which also holds Ray's temp dir (its
  sockets and logs). Never ``~/.ray/auth_token``, which Ray would otherwise generate
  with the default umask. The token leaves this process only through the environment
  of the Ray processes it starts; the directory is removed on close.
"""
from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field

from distmeta.config import RayConfig

# Set before Ray is imported anywhere in this process (setdefault: the user's choice wins).
RAY_ENV_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
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


#: Ray's auth environment while a private cluster runs; restored on close.
AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")
#: Set to "0" only while a private single-node Ray starts and runs: Ray then binds every process it starts
#: (GCS, raylet, agents) to 127.0.0.1 instead of all interfaces. Never set for a cluster you join: there it
#: would make ``ray start --address`` refuse to start and a driver name itself 127.0.0.1.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _set_cluster_mode(enabled: bool) -> bool:
    """Ray's multi-node mode in this process (its constant was read at import); returns what it was."""
    from ray._private import ray_constants

    previous, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, enabled
    return previous


def private_auth_dir() -> tuple[str, str]:
    """``(directory, token file)``: a fresh 0700 directory (``mkdtemp``) with a random token in a 0600 file.

    The directory is short (under ``/tmp``) because Ray's socket paths live below it.
    """
    directory = tempfile.mkdtemp(prefix="dmray-", dir="/tmp" if os.path.isdir("/tmp") else None)
    os.chmod(directory, 0o700)
    token_path = os.path.join(directory, "auth_token")
    fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return directory, token_path


def _refresh_ray_auth() -> None:
    """Make this process's Ray re-read ``RAY_AUTH_MODE`` and the token (both are cached at first use)."""
    from ray._raylet import AuthenticationTokenLoader
    from ray._raylet import Config as RayCConfig

    RayCConfig.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@dataclass
class RaySession:
    """How this process is attached to Ray; :meth:`close` undoes only what :func:`connect` did."""

    started: bool
    address: str | None
    auth_dir: str | None = None  # the private cluster's token and temp directory, removed on close
    saved_env: dict[str, str | None] = field(default_factory=dict)
    cluster_mode: bool = True  # Ray's multi-node mode before a private instance turned it off

    def close(self) -> None:
        import ray

        if self.started and ray.is_initialized():
            ray.shutdown()
        self.started = False
        if self.auth_dir is not None:
            _set_cluster_mode(self.cluster_mode)
            for key, value in self.saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            _refresh_ray_auth()
            shutil.rmtree(self.auth_dir, ignore_errors=True)
            self.auth_dir = None


def connect(ray_cfg: RayConfig) -> RaySession:
    """Attach to Ray as described in the module docstring.

    Args:
        ray_cfg: the config's ``ray`` section (``address``, ``object_store_memory``).

    Returns:
        The session; :meth:`RaySession.close` undoes what this call started.
    """
    set_ray_env()
    import ray

    if ray.is_initialized():
        return RaySession(started=False, address=None)
    address = ray_cfg.address or os.environ.get("RAY_ADDRESS") or None
    if address and address != "local":
        # An existing cluster: its resources and object store are its own business.
        ray.init(address=address, log_to_driver=True)
        return RaySession(started=True, address=address)
    auth_dir, token_path = private_auth_dir()
    session = RaySession(started=True, address="local", auth_dir=auth_dir,
                         saved_env={k: os.environ.get(k) for k in (*AUTH_ENV, LOOPBACK_ENV)})
    os.environ.pop("RAY_AUTH_TOKEN", None)  # it would win over the private token file
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token_path, LOOPBACK_ENV: "0"})
    try:
        session.cluster_mode = _set_cluster_mode(False)  # children read LOOPBACK_ENV, this process the constant
        _refresh_ray_auth()
        ray.init(
            address="local",
            include_dashboard=False,
            object_store_memory=ray_cfg.object_store_memory or default_object_store_memory(),
            _node_ip_address="127.0.0.1",
            _temp_dir=os.path.join(auth_dir, "ray"),
            log_to_driver=True,
            configure_logging=True,
            logging_level="warning",
        )
    except BaseException:
        session.close()
        raise
    return session
