"""``algorithm.group_size: auto`` is decided once per run: a resumed run keeps the groups it was using."""
from __future__ import annotations

import distmeta
from distmeta.config import load_config
from distmeta.groups import sizing as memory
from tests.helpers import QUIET, SINUSOID_TINY


def test_a_resumed_run_keeps_the_group_size_auto_chose(tmp_path, monkeypatch):
    chosen: list[int] = []

    def resolve(cfg, group_peak, specs):  # stands in for the measurement: another machine state, another answer
        chosen.append(2 if not chosen else 4)
        return chosen[-1]

    monkeypatch.setattr(memory, "resolve_group_size", resolve)
    args = [*SINUSOID_TINY, *QUIET, "algorithm.group_size=auto", "algorithm.memory_budget_mb=4096",
            "run.checkpoint_every=1", f"run.dir={tmp_path / 'run'}"]
    with distmeta.Trainer(load_config(None, [*args, "train.steps=2"])) as first:
        first.fit()
    assert first.group_size == 2 and chosen == [2]
    with distmeta.Trainer(load_config(None, [*args, "train.steps=4"]), resume=True) as resumed:
        resumed.fit()
    assert chosen == [2], "not measured again on resume"
    assert resumed.group_size == 2, "the saved choice, not a new one"
