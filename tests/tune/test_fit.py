"""Searches that fit or fail fast: the placement-group check, and diverged trials reported as results.

No Ray here: the cluster is described by hand, and reports go to a list.
"""
from __future__ import annotations

import math

import pytest

from distmeta.config import load_config
from distmeta.errors import ConfigError
from distmeta.sweeps import fit
from distmeta.sweeps.fit import describe_bundles, fit_problem
from distmeta.sweeps.trial import WORST, Diverged, TuneReporter, worst

ONE_NODE = [{"CPU": 2.0}]


def test_a_trial_that_fits_has_no_problem():
    assert fit_problem([{"CPU": 0.5}, {"CPU": 0.5}], "PACK", {"CPU": 2.0}, ONE_NODE) is None
    assert fit_problem([{"CPU": 0.0}, {"CPU": 1.0}, {"CPU": 1.0}], "PACK", {"CPU": 2.0}, ONE_NODE) is None, \
        "an empty driver bundle reserves nothing"


def test_the_shipped_trial_size_of_old_did_not_fit_two_cpus():
    msg = fit_problem([{"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 1.0}], "PACK", {"CPU": 2.0}, ONE_NODE)
    assert msg == ("a placement group of 3 x [CPU=1] = CPU=3, GPU=0, but the Ray cluster has CPU=2, GPU=0 in all "
                   "(short of CPU=1)")
    assert "short of GPU=1" in fit_problem([{"CPU": 1.0, "GPU": 1.0}], "PACK", {"CPU": 2.0}, ONE_NODE)


def test_per_node_and_strategy_limits():
    two = [{"CPU": 2.0}, {"CPU": 2.0}]
    assert "no node of the Ray cluster can hold a bundle of [CPU=3]" in fit_problem([{"CPU": 3.0}], "PACK", {"CPU": 4.0}, two)
    assert fit_problem([{"CPU": 1.5}, {"CPU": 1.5}], "PACK", {"CPU": 4.0}, two) is None
    assert "STRICT_PACK" in fit_problem([{"CPU": 1.5}, {"CPU": 1.5}], "STRICT_PACK", {"CPU": 4.0}, two)
    assert "STRICT_SPREAD" in fit_problem([{"CPU": 0.5}] * 3, "STRICT_SPREAD", {"CPU": 4.0}, two)
    assert describe_bundles([{"CPU": 1.0}, {"CPU": 0.5}, {"CPU": 0.5}]) == "[CPU=1] + 2 x [CPU=0.5]"


@pytest.fixture
def small_cluster(monkeypatch):
    """A fixed 2-CPU cluster as the fit check sees it."""
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(fit, "node_resources", lambda: [{"CPU": 2.0}])
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def test_a_fixed_cluster_fails_at_once_and_a_joined_one_says_what_it_waits_for(small_cluster, capsys):
    bundles = [{"CPU": 1.0}] * 3
    local = load_config(None, ["resources.workers=2"])
    with pytest.raises(ConfigError, match=r"one trial needs .* \(short of CPU=1\), so it could never start; lower it"):
        fit.check_fits(bundles, "PACK", local.ray, "one trial", "lower it")
    joined = load_config(None, ["resources.workers=2", "ray.address=auto"])  # an existing cluster: it may autoscale
    msg = fit.check_fits(bundles, "PACK", joined.ray, "one trial", "lower it")
    assert msg is not None and msg.startswith("waiting for the cluster to grow: one trial needs")
    assert "short of CPU=1" in capsys.readouterr().out
    assert fit.check_fits([{"CPU": 0.5}] * 2, "PACK", local.ray, "one trial", "lower it") is None


class FakeTrainer:
    def __init__(self, cfg, step):
        self.cfg, self.step = cfg, step


def test_a_diverged_trial_reports_the_worst_metric_at_every_validation_it_had_left():
    cfg = load_config(None, ["run.eval_every=2", "train.steps=7"])
    sent = []
    reporter = TuneReporter("t1", None, report=lambda metrics, checkpoint=None: sent.append((metrics, checkpoint)))
    reporter.last_step = 2  # reported step 2, then diverged
    reporter.diverged(cfg, "val_neg_mse", "max", "NonFiniteError: step 3")
    assert [m["step"] for m, _ in sent] == [4, 6, 7]
    assert all(m["val_neg_mse"] == -WORST and m["diverged"] and c is None for m, c in sent)
    assert [m["final"] for m, _ in sent] == [False, False, True]
    assert worst("min") == WORST and math.isfinite(WORST), "finite: schedulers take quantiles of it"


def test_a_non_finite_validation_is_divergence():
    cfg = load_config(None, ["run.eval_every=2", "train.steps=8"])
    reporter = TuneReporter("t1", None, report=lambda *a, **k: None)
    with pytest.raises(Diverged, match="step 4: meta-validation is not finite"):
        reporter("validation", FakeTrainer(cfg, 4), {"loss": float("nan"), "accuracy": 0.2, "ci95": 0.1})
    reporter("validation", FakeTrainer(cfg, 4), {"loss": 1.5, "accuracy": 0.2, "ci95": 0.1})
    assert reporter.pending["val_loss"] == 1.5
