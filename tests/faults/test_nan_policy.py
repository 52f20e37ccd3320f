"""NaN/Inf in a task's loss or meta-gradient: caught before aggregation, per task, under ``nan_policy``.

``raise`` names the task (step, index) and the actor and leaves the parameters as they
were; ``skip_task`` recomputes the task's group without it and divides the mean by the
tasks used; ``skip_step`` makes no update. References: :func:`reference_params` with
the same tasks or steps left out, and the run without the fault.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import distmeta
from distmeta.training.metrics import read_metrics
from distmeta.training.reduce import NonFiniteError, NonFiniteWarning
from tests.faults.conftest import (
    BASE,
    RAY2,
    StepLog,
    assert_bit_identical,
    cfg_of,
    fit,
    reference_params,
)

NAN_STEP1_TASK5 = "faults=[{kind: nan, step: 1, task: 5}]"


def run_raising(overrides, run_dir, backend_factory=None):
    log = StepLog()
    with pytest.raises(NonFiniteError) as err:
        with distmeta.Trainer(cfg_of(overrides, run_dir), callbacks=[log], backend_factory=backend_factory) as trainer:
            trainer.fit()
    return str(err.value), log, trainer


def test_raise_names_task_and_actor_and_leaves_parameters_untouched(tmp_path):
    msg, log, trainer = run_raising([*BASE, NAN_STEP1_TASK5, "nan_policy=raise"], tmp_path / "run")
    assert "(step 1, task 5) on actor 0" in msg and "nan_policy=raise" in msg, msg
    assert [s["step"] for s in log.steps] == [0] and trainer.step == 1
    after_one = reference_params(cfg_of(BASE, tmp_path), steps=1)
    assert_bit_identical(after_one, trainer.meta_params, "parameters after the refused step")
    assert all(torch.isfinite(p).all() for p in trainer.meta_params.values())


def test_skip_task_recomputes_the_group_without_it_and_divides_by_tasks_used(tmp_path):
    with pytest.warns(NonFiniteWarning, match=r"\(step 1, task 5\) on actor 0.*divides by 7 tasks"):
        params, log, _ = fit([*BASE, NAN_STEP1_TASK5, "nan_policy=skip_task"], tmp_path / "run")
    log.assert_each_task_once(4, 8, skipped={1: {5}})
    assert log.steps[1]["skipped"] == [(1, 5)]
    ref = reference_params(cfg_of(BASE, tmp_path), skip_tasks={1: {5}})
    assert_bit_identical(ref, params, "skip_task vs the plain loop without task (1, 5)")
    rows = {r["step"]: r for r in read_metrics(tmp_path / "run") if "train/skipped_tasks" in r}
    assert [rows[s]["train/skipped_tasks"] for s in (1, 2, 3, 4)] == [0, 1, 0, 0]
    assert np.isfinite(rows[2]["train/loss"]), "the step's loss is the mean over the tasks used"


def test_skip_step_makes_no_update(tmp_path):
    with pytest.warns(NonFiniteWarning, match=r"skipping step 1"):
        params, log, _ = fit([*BASE, NAN_STEP1_TASK5, "nan_policy=skip_step"], tmp_path / "run")
    assert log.steps[1]["tasks"] == [] and len(log.steps[1]["skipped"]) == 8
    assert_bit_identical(reference_params(cfg_of(BASE, tmp_path), skip_steps={1}), params, "skip_step vs plain loop")
    rows = {r["step"]: r for r in read_metrics(tmp_path / "run") if "train/skipped_tasks" in r}
    assert rows[2]["train/skipped_tasks"] == 8 and "train/grad_norm" not in rows[2]


def test_genuine_overflow_is_caught_before_any_update(tmp_path):
    """Not injected: amplitudes of 1e30 overflow float32 in every task's loss (Inf), from the very first step."""
    huge = [*BASE, "data.sinusoid.amplitude=[1.0e+30,1.0e+30]"]
    msg, log, trainer = run_raising([*huge, "nan_policy=raise"], tmp_path / "a")
    assert "(step 0, task 0) on actor 0" in msg and "(step 0, task 7) on actor 0" in msg, msg
    assert log.steps == [] and trainer.step == 0
    assert_bit_identical(trainer.initial_meta, trainer.meta_params, "nothing applied")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteWarning)
        params, log, trainer = fit([*huge, "nan_policy=skip_task"], tmp_path / "b")
    assert all(len(s["skipped"]) == 8 and s["tasks"] == [] for s in log.steps), "every task bad: every step skipped"
    assert_bit_identical(trainer.initial_meta, params, "never touched by a non-finite value")


def test_worker_names_every_bad_task_of_a_group_and_its_gradient_excludes_them(tmp_path):
    """Worker level: two poisoned tasks of one group are both named; skip_task's gradient is the others' alone."""
    cfg = cfg_of([*BASE, "nan_policy=skip_task", "algorithm.group_size=4"], tmp_path)
    worker = distmeta.Worker(cfg)
    from distmeta.experiment import prepare_experiment

    specs = prepare_experiment(cfg).sampler("train").batch(0, 4)
    meta = {n: t.numpy() for n, t in worker.initial_meta.items()}
    clean = worker.meta_grad(meta, [specs[0], specs[3]])
    from distmeta.drills.faults import poisoned

    with poisoned(worker, {(0, 1), (0, 2)}):
        r = worker.meta_grad(meta, specs)
    assert not r.finite and r.bad_tasks == [(0, 1), (0, 2)] and r.skipped == [(0, 1), (0, 2)]
    assert r.tasks == [(0, 0), (0, 1), (0, 2), (0, 3)], "the result still answers for every task sent"
    assert all(np.array_equal(r.grad[n], clean.grad[n]) for n in clean.grad)
    assert r.metrics["loss"][0] == clean.metrics["loss"][0] and r.metrics["loss"][3] == clean.metrics["loss"][1]


@pytest.mark.ray
def test_nan_on_a_ray_actor_names_it_and_skip_task_matches_the_plain_loop(pooled, tmp_path):
    """Actor 1 poisons its first task of step 2, (2, 4): raise names it and actor 1; skip_task recomputes on actor 1."""
    nan = "faults=[{kind: nan, actor: 1, step: 2}]"
    msg, log, trainer = run_raising([*BASE, *RAY2, nan, "nan_policy=raise"], tmp_path / "a", pooled)
    assert "(step 2, task 4) on actor 1" in msg, msg
    assert_bit_identical(reference_params(cfg_of(BASE, tmp_path), steps=2), trainer.meta_params, "untouched")

    with pytest.warns(NonFiniteWarning, match=r"\(step 2, task 4\) on actor 1"):
        params, log, _ = fit([*BASE, *RAY2, nan, "nan_policy=skip_task"], tmp_path / "b", backend_factory=pooled)
    log.assert_each_task_once(4, 8, skipped={2: {4}})
    assert log.steps[2]["actors"] == [0, 0, 1, 1] and log.steps[2]["retries"] == 0, "computed where it was, not retried"
    assert_bit_identical(reference_params(cfg_of(BASE, tmp_path), skip_tasks={2: {4}}), params, "skip_task on Ray")
