"""Which Ray failures are retried, and the errors the Ray backend raises.

A call that failed with one of :data:`RETRIABLE` is re-run elsewhere: the actor, its
process or its node went away. Anything else (an exception raised by the Worker code)
is a bug or a bad input that would fail again, so it is raised at once.
"""
from __future__ import annotations

from ray.exceptions import (
    NodeDiedError,
    ObjectLostError,
    RayActorError,
    WorkerCrashedError,
)

from distmeta.errors import DistmetaError

RETRIABLE = (RayActorError, WorkerCrashedError, ObjectLostError, NodeDiedError)


class WorkerFailedError(DistmetaError, RuntimeError):
    """A block of task groups could not be computed by any actor within ``ray.max_retries`` retries."""


class ActorLost(Exception):
    """This actor's answer is lost through its own fault (died, hung): its block is re-run elsewhere."""


class GraphCollateral(Exception):
    """This actor's answer is lost because a compiled graph broke elsewhere: re-sent, not its failure."""
