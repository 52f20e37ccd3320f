"""Best-on-validation selection, early stopping, the LR schedule and the supervised pretraining stage."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distmeta.config import OuterConfig, load_config
from distmeta.optim import OuterOptimizer, scheduled_lr
from distmeta.training.metrics import read_metrics
from distmeta.training.pretrain import batch_rows
from distmeta.training.selection import BestTracker
from distmeta.training.trainer import Trainer
from tests.helpers import QUIET, text_tiny, write_tiny_csv


def test_schedule_warmup_then_cosine_to_zero():
    lrs = [scheduled_lr(1.0, s, 4, "cosine", 20) for s in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == pytest.approx(1.0) and lrs[12] == pytest.approx(0.5) and lrs[19] < 0.01
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
    assert [scheduled_lr(0.1, s, 0, "constant", 20) for s in (0, 19)] == [0.1, 0.1]


def test_outer_optimizer_applies_the_schedule_per_update():
    """SGD's update is -lr * grad: the parameter trail shows the lr of every step."""
    cfg = OuterConfig(name="sgd", lr=0.4, schedule="cosine", warmup_steps=2)
    opt = OuterOptimizer(cfg, {"w": torch.zeros(1, dtype=torch.float64)}, total_steps=6)
    trail = []
    for _ in range(6):
        opt.step({"w": torch.ones(1, dtype=torch.float64)})
        trail.append(float(opt.params["w"]))
    steps = -np.diff([0.0, *trail])
    want = [0.2, 0.4] + [0.4 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    np.testing.assert_allclose(steps, want, rtol=1e-12)


def test_best_tracker_keeps_best_and_counts_patience(tmp_path):
    t = BestTracker(tmp_path, patience=2)
    p = lambda v: {"w": torch.full((2,), float(v))}  # noqa: E731
    assert not t.update(1, {"accuracy": 0.5}, p(1))
    assert not t.update(2, {"accuracy": 0.7}, p(2))
    assert not t.update(3, {"accuracy": 0.6}, p(3))
    assert t.update(4, {"accuracy": 0.7}, p(4))  # not better: the second miss in a row
    assert t.step == 2 and torch.equal(t.best_params()["w"], p(2)["w"])
    again = BestTracker(tmp_path, patience=2)
    again.load_state(t.state())
    assert again.step == 2 and again.bad == 2 and torch.equal(again.best_params()["w"], p(2)["w"])
    reg = BestTracker(tmp_path, name="regression_")
    reg.update(1, {"loss": 2.0}, p(1))
    assert not reg.update(2, {"loss": 1.0}, p(2)) and reg.step == 2  # regression: lower MSE is better


def test_pretrain_batches_are_a_pure_function_of_seed_and_step():
    rows = np.arange(100)
    assert np.array_equal(batch_rows(rows, 3, 7, 16), batch_rows(rows, 3, 7, 16))
    assert not np.array_equal(batch_rows(rows, 3, 7, 16), batch_rows(rows, 3, 8, 16))
    assert len(set(batch_rows(rows, 3, 7, 16).tolist())) == 16


@pytest.fixture()
def tiny(tmp_path):
    csv = write_tiny_csv(tmp_path / "d.csv", per_class=30)
    return [*text_tiny(csv), *QUIET, "algorithm.name=protonet", "data.ways=2", "eval.settings=[[2,1]]",
            "data.split.train=0.26", "data.split.val=0.37", "data.split.test=0.37", "eval.val_episodes=20"]


def test_select_best_meta_tests_the_best_validated_parameters(tiny, tmp_path):
    cfg = load_config(None, [*tiny, "run.eval_every=2", "train.steps=6", "train.select_best=true", "outer.lr=0.05",
                             f"run.dir={tmp_path / 'run'}"])
    with Trainer(cfg) as t:
        t.fit()
        best = t.best.best_params()
        assert best is not None and 2 <= t.best.step <= 6
        for n, v in best.items():  # the parameters meta-tested and checkpointed are the best validation's
            assert torch.equal(t.optimizer.params[n], v), n
        vals = [r["val/accuracy"] for r in read_metrics(t.run_dir) if "val/accuracy" in r and r["step"] > 0]
        assert t.best.score == pytest.approx(max(vals))


def test_patience_stops_training_early(tiny, tmp_path):
    # lr 0 never improves after the first validation: stop after patience more validations.
    cfg = load_config(None, [*tiny, "run.eval_every=1", "train.steps=20", "train.patience=2", "outer.name=sgd",
                             "outer.lr=1e-12", f"run.dir={tmp_path / 'run'}"])
    with Trainer(cfg) as t:
        t.fit()
        assert t.stopped_early and t.step == 3


def test_pretraining_changes_the_encoder_and_resume_does_not_rerun_it(tiny, tmp_path):
    run = tmp_path / "run"
    over = [*tiny, "train.steps=2", "pretrain.steps=12", "pretrain.batch=16", "pretrain.eval_every=4",
            "pretrain.lr=0.01", f"run.dir={run}", "run.checkpoint_every=1"]
    with Trainer(load_config(None, over)) as t:
        t.fit()
        moved = any(not torch.equal(t.initial_meta[n], t.meta_params[n]) for n in t.initial_meta)
        assert moved and t.pretrained
    rows = read_metrics(run)
    assert [r["step"] for r in rows if "pretrain/val_accuracy" in r] == [4, 8, 12]
    with Trainer(load_config(None, [*over, "train.steps=3"]), resume=True) as again:
        again.fit()
        assert again.pretrained and again.step == 3
    assert sum("pretrain/val_accuracy" in r for r in read_metrics(run)) == 3  # not rerun, not truncated away


def test_close_releases_the_run_directory_lock(tiny, tmp_path):
    import fcntl
    import os

    from distmeta.persistence.rundir import LOCK_FILE

    run = tmp_path / "run"
    t = Trainer(load_config(None, [*tiny, "train.steps=1", f"run.dir={run}"]))
    t.fit()
    fd = os.open(run / LOCK_FILE, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):  # held while the trainer is open (a second writer is refused)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        t.close()
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by close(), not only at garbage collection
    finally:
        os.close(fd)
