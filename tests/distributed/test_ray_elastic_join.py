"""The elastic pool survives a bad joiner: dropped (actors killed, placement group freed), logged, retried later.

On the session's one-node Ray (2 CPUs) a placement group holds one CPU while the run starts,
so ``workers: 4`` of half a CPU starts with two actors. After step 1 the CPU is freed and the
pool grows; the first joiners are made bad by wrapping :meth:`ActorPool.new_actor` (production
code is untouched: the wrapper starts a subclass of the real actor for them). The run must
go on, grow with good actors on the next try, and end with the in-process run's parameters.
"""
from __future__ import annotations

import logging
import os
import time

import pytest

import distmeta
from distmeta.config import load_config
from distmeta.distributed import actor_pool as pool_mod
from distmeta.distributed import elastic as elastic_mod
from tests.distributed.test_ray_backend import SINUSOID, assert_bit_identical, train

OVERRIDES = [o for o in SINUSOID if not o.startswith("train.steps")] + ["train.steps=4"]


def bad_actor_class(kind: str) -> type:
    """A :class:`WorkerActor` whose set-up fails the way ``kind`` says (defined here, so Ray ships it by value)."""
    base = pool_mod.WorkerActor

    class BadJoiner(base):  # type: ignore[misc, valid-type]
        def setup(self, args):
            if kind == "raise":
                raise RuntimeError("drill: this joiner's set-up fails")
            if kind == "preempted":
                os._exit(1)  # the process dies mid-join, as on a node taken back
            return {**base.setup(self, args), "torch_version": "0.0-drill"}  # kind == "version"

    return BadJoiner


def _wait_for_cpus(ray_module, cpus: float, timeout_s: float = 60.0) -> None:
    """Wait until Ray's view of free CPUs reaches ``cpus`` (it lags behind actors killed and groups removed)."""
    deadline = time.monotonic() + timeout_s
    while ray_module.available_resources().get("CPU", 0.0) < cpus and time.monotonic() < deadline:
        time.sleep(0.1)


@pytest.mark.ray
@pytest.mark.parametrize("kind, names", [("raise", "drill: this joiner's set-up fails"), ("version", "0.0-drill"),
                                         ("preempted", "Actor")])
def test_a_bad_joiner_is_dropped_and_retried_and_the_parameters_do_not_change(ray_local, tmp_path, monkeypatch,
                                                                               caplog, kind, names):
    from ray.util.placement_group import (
        placement_group,
        placement_group_table,
        remove_placement_group,
    )

    monkeypatch.setattr(elastic_mod, "RETRY_BASE_S", 0.0)  # the next forced look may retry at once
    monkeypatch.setattr(elastic_mod, "CHECK_EVERY_S", 1e9)  # only the forced looks below grow the pool
    bad_class, real_new_actor, bad = bad_actor_class(kind), pool_mod.ActorPool.new_actor, []

    def new_actor(self, k, pg, bundle_index):
        if k < 2 or len(bad) >= 2:  # the starting actors, and the joiners of the second try
            return real_new_actor(self, k, pg, bundle_index)
        good, pool_mod.WorkerActor = pool_mod.WorkerActor, bad_class
        try:
            bad.append((real_new_actor(self, k, pg, bundle_index), pg))
        finally:
            pool_mod.WorkerActor = good
        return bad[-1][0]

    monkeypatch.setattr(pool_mod.ActorPool, "new_actor", new_actor)
    # Start from an idle Ray: an earlier test's actors still releasing their CPUs would make the
    # pool start with fewer than two actors and the growth below bigger than two.
    _wait_for_cpus(ray_local, 2.0)
    blocker = placement_group([{"CPU": 1.0}])
    ray_local.get(blocker.ready(), timeout=60)
    steps, joined = [], []

    def on_event(event, trainer, payload):
        if event != "step":
            return
        steps.append(sorted(trainer.backend.stats().actor_compute_s))
        if payload["step"] == 1:
            remove_placement_group(blocker)
        if payload["step"] in (1, 2):
            _wait_for_cpus(ray_local, 1.0)  # Ray's view of free resources catches up with what was freed
            joined.append(trainer.backend.grow(wait_s=120))

    cfg = load_config(None, OVERRIDES + ["resources.workers=4", "resources.cpus_per_worker=0.5", "ray.elastic=true",
                                         f"run.dir={tmp_path / 'run'}"])
    with caplog.at_level(logging.WARNING, logger=elastic_mod.__name__), \
            distmeta.Trainer(cfg, callbacks=[on_event]) as trainer:
        trainer.fit()
        failures = list(trainer.backend.elastic.failures)
        params = trainer.meta_params
    ref, _, _ = train(tmp_path / "local", OVERRIDES, workers=0)

    assert steps[0] == [0, 1], "the run started with two actors"
    assert joined == [0, 2], "the bad joiners were dropped, the next try grew the pool by two good actors"
    assert steps[0] == steps[1] == [0, 1] and steps[-1] == [0, 1, 2, 3]
    assert len(failures) == 1 and names in failures[0] and "2 joining actors dropped" in failures[0]
    assert any(r.getMessage() == failures[0] for r in caplog.records), "the failure is logged"
    assert placement_group_table(bad[0][1])["state"] == "REMOVED", "the joiners' placement group is freed"
    for actor, _ in bad:
        with pytest.raises(ray_local.exceptions.RayActorError):
            ray_local.get(actor.ping.remote(), timeout=30)
    assert_bit_identical(ref, params, f"pool grown after a bad joiner ({kind}) vs workers=0")
