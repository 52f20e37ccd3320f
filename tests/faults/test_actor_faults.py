"""Dying, stale and stalled actors and a spent retry budget, end to end through the Trainer and the ``faults`` switch.

Each run is compared with the run without the fault: the parameters must be bit-identical
and every task of every step reduced exactly once (from the task keys of the
GroupResults the driver reduced).
"""
from __future__ import annotations

import time

import pytest

from distmeta.distributed.ray_backend import WorkerFailedError
from distmeta.training.metrics import read_metrics
from tests.faults.conftest import (
    BASE,
    RAY2,
    assert_bit_identical,
    fit,
    reference_params,
)

pytestmark = pytest.mark.ray


def test_no_fault_reference_is_the_plain_loop(no_fault_params, tmp_path):
    """The two references agree: the no-fault Trainer run is the plainest loop's result, bit for bit."""
    from tests.faults.conftest import cfg_of

    assert_bit_identical(no_fault_params, reference_params(cfg_of(BASE, tmp_path)), "no-fault run vs plain loop")


def test_killed_actor_is_restarted_with_current_parameters_and_stale_answers_are_rejected(pooled, no_fault_params, tmp_path):
    """Actor 1 is SIGKILLed mid-step 1 and answers for stale parameters at step 3: same parameters, each task once."""
    faults = "faults=[{kind: kill, actor: 1, step: 1}, {kind: stale, actor: 1, step: 3}]"

    def on_step(step: int, trainer) -> None:
        if step == 1:  # let Ray bring actor 1 back before step 2 (it would otherwise sit out a step or two)
            trainer.backend.backend.wait_ready(240)  # the pooled backend behind the lent one

    f0 = {k: len(b.failures) for k, b in pooled.items()}
    params, log, trainer = fit([*BASE, *RAY2, faults], tmp_path / "run", on_step, backend_factory=pooled)

    log.assert_each_task_once(4, 8)
    assert [s["retries"] for s in log.steps] == [0, 1, 0, 1]
    by_step = {s["step"]: s for s in log.steps}
    old_pid = by_step[0]["pids"][2]
    # Step 1: actor 1 died; its groups (2, 3) were recomputed by actor 0, once.
    assert by_step[0]["actors"] == [0, 0, 1, 1] and by_step[1]["actors"] == [0, 0, 0, 0]
    # Step 2: the restarted actor (a new process) computed its own groups again, for the current parameters.
    assert by_step[2]["actors"] == [0, 0, 1, 1] and by_step[2]["pids"][2] != old_pid
    assert all(v == s["step"] for s in log.steps for v in s["versions"]), "every result reduced is for its step's parameters"
    # Step 3: its stale answer was rejected and recomputed on actor 0.
    assert by_step[3]["actors"] == [0, 0, 0, 0]
    failures = pooled[2].failures[f0.get(2, 0):]
    assert [f["actor"] for f in failures] == [1, 1] and [f["groups"] for f in failures] == [(2, 4), (2, 4)]
    assert "Actor" in failures[0]["reason"] and "stale result" in failures[1]["reason"]
    assert [r["train/retries"] for r in read_metrics(tmp_path / "run") if "train/retries" in r] == [0, 1, 0, 1]
    assert_bit_identical(no_fault_params, params, "kill + stale vs no fault")


def test_stalled_actor_is_replaced_and_its_tasks_computed_elsewhere(pooled, no_fault_params, tmp_path):
    """Actor 1 sleeps through step 1 (alive, silent): past ray.step_timeout its groups go to actor 0; it is replaced."""
    import ray

    timeout = 6.0
    faults = "faults=[{kind: stall, actor: 1, step: 1, seconds: 300}]"
    times: dict[int, float] = {}
    t = [time.monotonic()]

    def on_step(step: int, trainer) -> None:
        times[step], t[0] = time.monotonic() - t[0], time.monotonic()

    f0 = {k: len(b.failures) for k, b in pooled.items()}
    params, log, _ = fit([*BASE, *RAY2, faults, f"ray.step_timeout={timeout}"], tmp_path / "run", on_step, backend_factory=pooled)

    log.assert_each_task_once(4, 8)
    by_step = {s["step"]: s for s in log.steps}
    assert by_step[1]["retries"] == 1 and by_step[1]["actors"] == [0, 0, 0, 0]
    assert timeout <= times[1] < timeout + 60, f"step 1 took {times[1]:.1f}s: waited for the deadline, not for the sleeper"
    failure = pooled[2].failures[f0.get(2, 0):][0]
    assert failure["actor"] == 1 and f"no answer within ray.step_timeout={timeout:g}s" in failure["reason"]
    stalled_pid = by_step[0]["pids"][2]
    pooled[2].wait_ready(240)
    assert ray.get(pooled[2].actors[1].ping.remote()) != stalled_pid, "the stalled process was killed and replaced"
    assert_bit_identical(no_fault_params, params, "stall vs no fault")


def test_spent_retry_budget_is_a_typed_error_naming_actors_and_tasks(pooled, tmp_path):
    """Every attempt at step 1 fails: WorkerFailedError names actors and tasks; step 1 is never applied, not even in part."""
    faults = "faults=[{kind: stale, actor: all, step: 1, times: 10}]"
    overrides = [*BASE, *RAY2, faults, "ray.max_retries=2", "run.checkpoint_every=1"]
    import distmeta
    from tests.faults.conftest import StepLog, cfg_of

    log = StepLog()
    with pytest.raises(WorkerFailedError) as err:
        with distmeta.Trainer(cfg_of(overrides, tmp_path / "run"), callbacks=[log], backend_factory=pooled) as trainer:
            trainer.fit()
    msg = str(err.value)
    assert "ray.max_retries=2" in msg and "actor 0" in msg and "actor 1" in msg, msg
    assert "(step 1, task 0)" in msg or "(step 1, task 4)" in msg, msg
    assert [s["step"] for s in log.steps] == [0], "no step past the failing one, and no partial meta-batch"
    assert trainer.step == 1
    assert_bit_identical(reference_params(cfg_of(BASE, tmp_path), steps=1), trainer.meta_params, "after the failed step")
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step_00000001"]


@pytest.mark.slow
def test_spent_retry_budget_with_killed_actors(pooled, tmp_path):
    """As above with every attempt SIGKILLed (actors restart between attempts): slow, seconds per restart."""
    faults = "faults=[{kind: kill, actor: all, step: 1, times: 10}]"
    with pytest.raises(WorkerFailedError, match=r"ray.max_retries=1"):
        fit([*BASE, *RAY2, faults, "ray.max_retries=1", "ray.step_timeout=120"], tmp_path / "run", backend_factory=pooled)


def test_driver_refuses_a_meta_batch_with_a_task_missing_or_counted_twice():
    """Whatever a backend returns, the driver applies nothing unless every task came back exactly once."""
    import numpy as np

    from distmeta.errors import DistmetaError
    from distmeta.tasks.specs import SinusoidSpec
    from distmeta.training.reduce import check_tasks
    from distmeta.worker import GroupResult

    specs = [SinusoidSpec(3, i, 1.0, 0.0, (0.0,), (1.0,)) for i in range(4)]

    def group(*idx):
        return GroupResult(grad={"w": np.zeros(1)}, metrics={"loss": [0.0] * len(idx)}, tasks=[(3, i) for i in idx])

    check_tasks([group(0, 1), group(2, 3)], specs, 3)
    with pytest.raises(DistmetaError, match=r"3 task results for a meta-batch of 4 \(missing \[\(3, 3\)\]"):
        check_tasks([group(0, 1), group(2)], specs, 3)
    with pytest.raises(DistmetaError, match=r"repeated \[\(3, 1\)\]"):
        check_tasks([group(0, 1), group(1, 2), group(3)], specs, 3)
