"""An actor that never answers (its node cut off) costs the steps after its loss nothing.

Before: every ``pick`` sent the suspect a fresh ping and waited a second for it, so a step
with three blocks waited three seconds, and pings piled up at the unreachable actor. Now a
suspect has one ping in flight and ``pick`` takes whoever has answered already; a step's
blocks are cut over the healthy actors only, evenly.
"""
from __future__ import annotations

import threading
import time

import pytest

from distmeta.config import load_config
from distmeta.distributed.actor_pool import ActorPool
from distmeta.distributed.dispatch import StepDispatch
from distmeta.results import StepStats

pytestmark = pytest.mark.ray


class Answers:
    def ping(self) -> int:
        return 1


class NeverAnswers:
    """A threaded actor: counts pings, answers none (like an actor on a node cut off from the driver)."""

    def __init__(self) -> None:
        self.pings = 0
        self.lock = threading.Lock()

    def ping(self) -> int:
        with self.lock:
            self.pings += 1
        time.sleep(3600)
        return 1

    def count(self) -> int:
        return self.pings


@pytest.fixture
def pool(ray_local):
    ray = ray_local
    actors = [ray.remote(Answers).options(num_cpus=0).remote(),
              ray.remote(NeverAnswers).options(num_cpus=0, max_concurrency=8).remote(),
              ray.remote(Answers).options(num_cpus=0).remote()]
    ray.get(actors[0].ping.remote())
    p = ActorPool.__new__(ActorPool)  # the health bookkeeping only: no placement group, no Workers
    p.ray_cfg = load_config(None, ["ray.step_timeout=30"]).ray
    p.actors, p.suspect, p._pings, p.order = actors, {1}, {}, [0, 1, 2]
    yield p
    for a in actors:
        ray.kill(a)


def test_a_suspect_that_never_answers_is_pinged_once_and_waited_for_never(pool, ray_local):
    t0 = time.monotonic()
    picks = [pool.pick(1, time.monotonic() + 30) for _ in range(6)]
    elapsed = time.monotonic() - t0
    assert picks == [2] * 6, "the next healthy actor after the suspect"
    assert elapsed < 1.0, f"{elapsed:.1f}s for 6 picks: each waited for the unreachable actor"
    time.sleep(0.5)  # let Ray deliver whatever pings were sent
    assert ray_local.get(pool.actors[1].count.remote()) == 1, "one ping in flight per suspect"
    assert pool.suspect == {1}


def test_a_step_is_cut_evenly_over_the_healthy_actors(pool):
    groups = [[] for _ in range(8)]
    dispatch = StepDispatch(pool, "compute", groups, (0,), check=lambda b, v: None, delivery=lambda blocks: None,
                            stats=StepStats(), failures=[])
    assert dispatch.assignees == [0, 2]
    assert [len(b) for b in dispatch.blocks] == [4, 4], "the lost actor's groups are not piled onto one actor"


def test_a_compiled_graph_task_error_is_pinned_on_its_process():
    """Ray hands a Worker exception over as ``RayTaskError(cause)`` whose ``pid`` lookup falls through to the
    cause (AttributeError: the compiled-graph step then failed with that instead of naming the actor); the pid
    is read from the error's own header instead."""
    from ray.exceptions import RayTaskError

    from distmeta.distributed.compiled import _task_pid

    err = RayTaskError("compute_compiled", "ray::WorkerActor() (pid=77, ip=127.0.0.1)\nTraceback ...",
                       RuntimeError("injected fault in actor 0"), pid=77).as_instanceof_cause()
    with pytest.raises(AttributeError):
        err.pid  # noqa: B018 - what the old code read
    assert _task_pid(err) == 77
