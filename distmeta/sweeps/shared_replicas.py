"""One pool of model replicas lent to the runs of a sweep, one run after another.

Starting Ray actors costs seconds each (a Python process importing torch). With
``reuse_actors`` Ray Tune runs the next trial of the same size (a search's trial, a grid's
cell) in a finished trial's process and placement group; it borrows the replicas of the
previous run, rebuilt for the new config
(:meth:`~distmeta.training.backend.ReusableBackend.reconfigure`), through
:meth:`BackendPool.factory`, a :data:`~distmeta.training.backend.BackendFactory`::

    pool = BackendPool()
    try:
        for cfg in configs:
            with Trainer(cfg, overwrite=True, backend_factory=pool.factory) as trainer:
                trainer.fit()          # closing the Trainer keeps the replicas
    finally:
        pool.close()

Only the public backend interface is used: a pooled backend is reused while it is open,
of the same size and in the same placement group; anything else is closed and replaced.
In-process runs (``resources.workers: 0``) are not pooled.
"""
from __future__ import annotations

import logging
from typing import Any

from distmeta.config import Config
from distmeta.experiment import Experiment
from distmeta.training.backend import Backend, Lent, ReusableBackend, make_backend

log = logging.getLogger(__name__)


def _current_placement_group() -> str:
    """The hex id of the placement group this process runs in (a Tune trial's), or ``""``."""
    import ray

    pg = ray.util.get_current_placement_group()
    return pg.id.hex() if pg is not None else ""


class BackendPool:
    """Holds at most one :class:`~distmeta.training.backend.ReusableBackend` and lends it run after run."""

    def __init__(self) -> None:
        self._held: ReusableBackend | None = None
        self._key: tuple[Any, ...] | None = None

    @property
    def backend(self) -> ReusableBackend | None:
        """The backend held now (None before the first Ray run, or after :meth:`close`)."""
        return self._held

    def factory(self, cfg: Config, exp: Experiment) -> Backend:
        """A backend for one run: the held one rebuilt for ``cfg`` when it fits, else a new one (then held).

        Args:
            cfg: the run's config.
            exp: its prepared experiment (``exp.worker_args()`` builds the replicas).

        Returns:
            A :class:`~distmeta.training.backend.Lent` view whose ``close()`` keeps the replicas;
            for ``resources.workers: 0``, a plain in-process backend of the run's own.
        """
        res = cfg.resources
        if res.workers == 0:
            return make_backend(cfg, exp)
        # A run with fault drills gets a drilled backend, one without a plain one: never each other's.
        key = (_current_placement_group(), res.workers, res.cpus_per_worker, res.gpus_per_worker, bool(cfg.faults))
        held, self._held = self._held, None
        if held is not None and self._key == key and not held.closed:
            try:
                held.reconfigure(cfg, exp.worker_args())
                self._held = held
                return Lent(held)
            except Exception as err:  # noqa: BLE001 - a pool that failed to rebuild is replaced, never trusted
                log.warning("the pooled backend could not be rebuilt for the next run (%s); starting a new one", err)
        if held is not None:
            held.close()
        backend = make_backend(cfg, exp)
        if not isinstance(backend, ReusableBackend):
            return backend
        self._held, self._key = backend, key
        return Lent(backend)

    def placement(self) -> dict[str, Any]:
        """Where the held replicas are, for a trial's reports.

        Returns:
            ``{"trial_pg": this process's placement group id or "", "workers_in_trial_pg": whether
            the replicas live in it, "ray_workers": how many there are}``.
        """
        pg = _current_placement_group()
        where = self._held.placement() if self._held is not None and not self._held.closed else {}
        inside = bool(pg and where and not where["owns_placement_group"] and where["placement_group"] == pg)
        return {"trial_pg": pg, "workers_in_trial_pg": inside, "ray_workers": int(where.get("workers", 0))}

    def close(self) -> None:
        """Close the held backend (its actors and placement group); the pool stays usable."""
        held, self._held, self._key = self._held, None, None
        if held is not None:
            held.close()


#: The pool of this process. Tune trial processes use it across the trials Tune runs in them
#: (``reuse_actors``); its actors end with the process.
PROCESS_POOL = BackendPool()
