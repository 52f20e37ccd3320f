"""BackendPool: one reusable backend lent run after run, replaced whenever it cannot serve the next run."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from distmeta.config import load_config
from distmeta.sweeps import shared_replicas as pool_mod
from distmeta.sweeps.shared_replicas import BackendPool
from distmeta.training.backend import Lent, ReusableBackend


class FakeBackend:
    """A ReusableBackend that records what was done to it."""

    def __init__(self, cfg, fail_reconfigure=False):
        self.num_workers, self.cfg, self.fail = cfg.resources.workers, cfg, fail_reconfigure
        self.closed_, self.reconfigured = False, []

    initial_meta: dict = {}  # noqa: RUF012 - read only

    def compute(self, meta, groups, version, overlap=None):
        return []

    def evaluate(self, meta, groups, inner_steps, cache_key=None, baseline=False):
        return []

    def group_peak(self, meta, specs):
        return 0

    def stats(self):
        return None

    def close(self):
        self.closed_ = True

    @property
    def closed(self):
        return self.closed_

    def reconfigure(self, cfg, worker_args):
        if self.fail:
            raise RuntimeError("an actor lost its Worker")
        self.reconfigured.append(cfg)

    def placement(self):
        return {"placement_group": "pg1", "owns_placement_group": False, "workers": self.num_workers}

    def wait_ready(self, timeout=None):
        pass


@pytest.fixture
def made(monkeypatch):
    """Backends the pool creates, in order; the process is in placement group ``pg1``."""
    out = []

    def make(cfg, exp):
        out.append(FakeBackend(cfg, fail_reconfigure=getattr(exp, "fail", False)))
        return out[-1]

    monkeypatch.setattr(pool_mod, "make_backend", make)
    monkeypatch.setattr(pool_mod, "_current_placement_group", lambda: "pg1")
    return out


EXP = SimpleNamespace(worker_args=dict)


def test_runs_of_one_size_share_one_backend_and_closing_a_run_keeps_it(made):
    assert isinstance(FakeBackend(load_config(None, ["resources.workers=2"])), ReusableBackend)
    pool = BackendPool()
    a, b = load_config(None, ["resources.workers=2", "seed=1"]), load_config(None, ["resources.workers=2", "seed=2"])
    first = pool.factory(a, EXP)
    assert isinstance(first, Lent) and len(made) == 1
    first.close()
    assert not made[0].closed
    second = pool.factory(b, EXP)
    assert len(made) == 1 and made[0].reconfigured == [b] and second.backend is made[0]
    assert pool.placement() == {"trial_pg": "pg1", "workers_in_trial_pg": True, "ray_workers": 2}
    pool.close()
    assert made[0].closed and pool.backend is None


def test_another_size_a_closed_or_a_broken_backend_is_replaced(made):
    pool = BackendPool()
    pool.factory(load_config(None, ["resources.workers=2"]), EXP)
    pool.factory(load_config(None, ["resources.workers=1"]), EXP)  # another size: a new backend, the old one closed
    assert len(made) == 2 and made[0].closed and not made[1].closed
    made[1].close()
    pool.factory(load_config(None, ["resources.workers=1"]), EXP)  # closed: never lent again
    assert len(made) == 3
    made[2].fail = True
    pool.factory(load_config(None, ["resources.workers=1", "seed=3"]), EXP)  # its rebuild failed: replaced, not trusted
    assert len(made) == 4 and made[2].closed and pool.backend is made[3]


def test_in_process_runs_are_not_pooled(made):
    pool = BackendPool()
    backend = pool.factory(load_config(None, ["resources.workers=0"]), EXP)
    assert backend is made[0] and pool.backend is None


def test_a_run_with_fault_drills_never_borrows_a_plain_backend_nor_the_reverse(made):
    pool = BackendPool()
    pool.factory(load_config(None, ["resources.workers=2"]), EXP)
    drilled = load_config(None, ["resources.workers=2", "faults=[{kind: stall, actor: 0, step: 1}]"])
    pool.factory(drilled, EXP)  # make_backend builds the drilled backend; the plain one is closed
    assert len(made) == 2 and made[0].closed and made[1].cfg is drilled
    pool.factory(load_config(None, ["resources.workers=2", "seed=5"]), EXP)  # and back
    assert len(made) == 3 and made[1].closed
