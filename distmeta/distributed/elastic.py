"""Growing the actor pool while a run goes on, when nodes join the cluster (``ray.elastic``).

Every few seconds (and whenever a caller asks) :class:`Elastic` compares the capacity the
cluster has free with what the pool may still grow by (``resources.workers``, or without limit for
``resources.workers: auto``). New actors start in a placement group of their own and build their
Worker from the pool's object-store entry while the run goes on; once every one of them
has answered, the pool adopts them and they take blocks from the next step on. Because
groups and their summation do not depend on the actor count, the parameters do not
depend on when actors came. A node that leaves is a failure like any other: its actors'
blocks are re-run and Ray restarts them where there is room.

A joiner that fails (its set-up raises, it runs other library versions, its node goes away
while it joins, or it does not answer within the pool's start-up timeout) never reaches the
run: its actors are killed, its placement group freed, the failure logged (and kept in
:attr:`Elastic.failures`), and the pool tries to grow again after a backoff that doubles with
each failure in a row (:data:`RETRY_BASE_S` up to :data:`RETRY_MAX_S`).
"""
from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray.exceptions import RayError
from ray.util.placement_group import placement_group, remove_placement_group

from distmeta.distributed import answers
from distmeta.distributed.actor_pool import ActorPool
from distmeta.distributed.plan import elastic_target, fitting
from distmeta.errors import DistmetaError

log = logging.getLogger(__name__)

#: Seconds between looks at the cluster's free capacity.
CHECK_EVERY_S = 5.0
#: Seconds before growing again after a failed join; doubled per failure in a row, at most :data:`RETRY_MAX_S`.
RETRY_BASE_S = 30.0
RETRY_MAX_S = 600.0
#: What a failed joiner raises: Ray's errors (set-up raised, actor or node died, object lost) and version mismatches.
JOIN_ERRORS = (RayError, DistmetaError)


class Elastic:
    """Watches for room to grow ``pool`` and adopts new actors once their Workers are built."""

    def __init__(self, pool: ActorPool) -> None:
        self.pool = pool
        self._last_check = time.monotonic()
        self._pg: Any = None
        self._actors: list[Any] = []
        self._setups: list[Any] = []
        self._started_at = 0.0
        self._retry_at = 0.0  # no growth before this time (monotonic) after a failed join
        self._failed_in_row = 0
        self.failures: list[str] = []  # every failed join, as logged

    def poll(self, wait_s: float = 0.0, force: bool = False) -> int:
        """Start actors on free capacity (at most every :data:`CHECK_EVERY_S` unless ``force``); adopt ready ones.

        Never raises for a joiner's failure: the joiner is dropped (see the module docstring).

        Args:
            wait_s: how long to wait for started actors to finish building their Workers.
            force: look at the cluster now (still not before a failed join's backoff has passed).

        Returns:
            How many actors joined the pool.
        """
        now = time.monotonic()
        if not self._actors and now >= self._retry_at and (force or now - self._last_check >= CHECK_EVERY_S):
            self._last_check = now
            try:
                self._start()
            except JOIN_ERRORS as err:
                self._drop(f"starting them failed: {err}")
                return 0
        if not self._actors:
            return 0
        ready, _ = ray.wait(self._setups, num_returns=len(self._setups), timeout=wait_s)
        if len(ready) < len(self._setups):
            if time.monotonic() - self._started_at > self.pool.startup_timeout:
                self._drop(f"{len(self._setups) - len(ready)} did not build their Workers within "
                           f"{self.pool.startup_timeout:g}s")
            return 0
        try:
            infos = ray.get(self._setups)
            answers.check_versions(self.pool.infos + infos)
        except JOIN_ERRORS as err:
            self._drop(f"{type(err).__name__}: {err}")
            return 0
        return self._adopt(infos)

    def _adopt(self, infos: list[dict[str, Any]]) -> int:
        """Hand the joiners, their Workers built, to the pool."""
        actors, self._actors, self._setups = self._actors, [], []
        self.pool.adopt(actors, infos, self._pg)
        self._pg = None
        self._failed_in_row = 0
        log.info("elastic: %d actors joined (now %d) on nodes %s", len(actors), len(self.pool.actors),
                 sorted({i["node"][:8] for i in infos}))
        return len(actors)

    def _drop(self, why: str) -> None:
        """Kill the joiners and free their placement group, log why, and back off before growing again."""
        count = len(self._actors)
        self.close()
        self._failed_in_row += 1
        delay = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (self._failed_in_row - 1))
        self._retry_at = time.monotonic() + delay
        message = (f"elastic: {count} joining actors dropped, the run goes on with {len(self.pool.actors)}: "
                   f"{why.strip()[:2000]}; growing again in {delay:g}s")
        self.failures.append(message)
        log.warning(message)

    def _start(self) -> None:
        """Start as many actors as the free capacity holds, up to the pool's limit."""
        target = elastic_target(self.pool.resources, self.pool.ray_cfg)
        room = fitting(self.pool.per_worker, ray.available_resources())
        count = int(min(room, (target or 0) - len(self.pool.actors)))
        if count < 1:
            return
        self._pg = placement_group([dict(self.pool.per_worker) for _ in range(count)], strategy="SPREAD")
        first = len(self.pool.actors)
        self._started_at = time.monotonic()
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
