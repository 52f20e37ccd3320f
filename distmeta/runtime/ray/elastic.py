"""Growing the actor pool while a run goes on, when nodes join the cluster (``ray.elastic``).

Every few seconds (and whenever a caller asks) :class:`Elastic` compares the capacity the
cluster has free with what the pool may still grow by (``workers``, or without limit for
``workers: auto``). New actors start in a placement group of their own and build their
Worker from the pool's object-store entry while the run goes on; once every one of them
has answered, the pool adopts them and they take blocks from the next step on. Because
groups and their summation do not depend on the actor count, the parameters do not
depend on when actors came. A node that leaves is a failure like any other: its actors'
blocks are re-run and Ray restarts them where there is room.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group

from distmeta.runtime import answers
from distmeta.runtime.ray.plan import elastic_target, fitting
from distmeta.runtime.ray.pool import ActorPool

log = logging.getLogger(__name__)

#: Seconds between looks at the cluster's free capacity.
CHECK_EVERY_S = 5.0


class Elastic:
    """Watches for room to grow ``pool`` and adopts new actors once their Workers are built."""

    def __init__(self, pool: ActorPool) -> None:
        self.pool = pool
        self._last_check = time.monotonic()
        self._pg: Any = None
        self._actors: list[Any] = []
        self._setups: list[Any] = []

    def poll(self, wait_s: float = 0.0, force: bool = False) -> int:
        """Start actors on free capacity (at most every :data:`CHECK_EVERY_S` unless ``force``); adopt ready ones.

        Args:
            wait_s: how long to wait for started actors to finish building their Workers.
            force: look at the cluster now.

        Returns:
            How many actors joined the pool.
        """
        now = time.monotonic()
        if not self._actors and (force or now - self._last_check >= CHECK_EVERY_S):
            self._last_check = now
            self._start()
        if not self._actors:
            return 0
        ready, _ = ray.wait(self._setups, num_returns=len(self._setups), timeout=wait_s)
        if len(ready) < len(self._setups):
            return 0
        infos = ray.get(self._setups)
        answers.check_versions(self.pool.infos + infos)
        actors, self._actors, self._setups = self._actors, [], []
        self.pool.adopt(actors, infos, self._pg)
        self._pg = None
        log.info("elastic: %d actors joined (now %d) on nodes %s", len(actors), len(self.pool.actors),
                 sorted({i["node"][:8] for i in infos}))
        return len(actors)

    def _start(self) -> None:
        """Start as many actors as the free capacity holds, up to the pool's limit."""
        target = elastic_target(self.pool.cfg)
        room = fitting(self.pool.per_worker, ray.available_resources())
        count = int(min(room, (target or 0) - len(self.pool.actors)))
        if count < 1:
            return
        self._pg = placement_group([dict(self.pool.per_worker) for _ in range(count)], strategy="SPREAD")
        first = len(self.pool.actors)
        self._actors = [self.pool.new_actor(first + j, self._pg, j) for j in range(count)]
        self._setups = [a.setup.remote(self.pool.args()) for a in self._actors]

    def close(self) -> None:
        """Stop actors still starting and free their placement group."""
        for a in self._actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if self._pg is not None:
            try:
                remove_placement_group(self._pg)
            except Exception:  # noqa: BLE001
                pass
        self._actors, self._setups, self._pg = [], [], None
