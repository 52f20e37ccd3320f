"""Every shipped search runs as shipped on the session's 2-CPU Ray, and one that cannot fit fails at once.

Resources are never scaled down here: a shipped config must fit this machine as it is. Only
its length is (fewer steps and episodes), as each test says.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import yaml

from distmeta.cli import main
from distmeta.config import apply_overrides
from distmeta.errors import ConfigError, DistmetaError
from distmeta.sweeps.grid import run_grid
from distmeta.sweeps.search import load_search
from distmeta.sweeps.trial import WORST
from distmeta.sweeps.tune import BEST_FILE, run_search
from distmeta.training.reduce import NonFiniteError
from distmeta.training.trainer import Trainer
from tests.helpers import QUIET, text_tiny, write_tiny_csv
from tests.tune.conftest import wait_released

pytestmark = pytest.mark.ray

ASHA = "configs/tune_sinusoid_asha.yaml"
PBT = "configs/tune_icd10cm_pbt.yaml"


def trial_rows(experiment: Path) -> dict[str, list[dict]]:
    return {p.name: [json.loads(line) for line in (p / "result.json").read_text().splitlines() if line.strip()]
            for p in sorted(experiment.glob("trial_*"))}


def test_the_shipped_asha_search_runs_and_records_its_diverged_trial(ray_local, tune_storage, capsys):
    # As shipped (2 workers x 0.5 CPU per trial, ASHA, seed 0), but 20 steps instead of 2000 and 20-episode
    # evaluations: this checks that the search runs and how it treats divergence, not what it finds. 3 samples:
    # the third seed-0 draw (inner_lr 0.33, 3 inner steps) diverges: an infinite meta-validation loss at step 10,
    # a NaN meta-gradient at step 11, both checked below without Tune.
    over = [f"storage_path={tune_storage}", "verbose=0", "num_samples=3", "train.steps=20", "run.eval_every=10",
            "eval.val_episodes=20", "eval.episodes=20"]
    assert main(["tune", "--config", ASHA, *over]) == 0, "a diverged trial is a result: the search completed"
    wait_released(ray_local)
    experiment = load_search(ASHA, over).experiment_path
    best = json.loads((experiment / BEST_FILE).read_text())
    assert best["trials"] == 3 and best["errored_trials"] == 0 and best["diverged_trials"] == 1
    diverged = best["diverged"][0]
    assert diverged["because"].startswith("Diverged: step 10: meta-validation is not finite")
    for name, rows in trial_rows(experiment).items():
        assert all(r["workers_in_trial_pg"] and r["ray_workers"] == 2 for r in rows), "actors in the trial's group"
        if name == f"trial_{diverged['trial']}":
            assert [r["step"] for r in rows] == [10, 20] and rows[-1]["final"]
            assert all(r["diverged"] and r["val_neg_mse"] == -WORST for r in rows)
        else:
            assert all(not r["diverged"] and math.isfinite(r["val_neg_mse"]) for r in rows)
    assert best["best_trial"] != diverged["trial"] and math.isfinite(best["best_value"])
    assert "1 diverged" in capsys.readouterr().out

    # The reference, without Tune or Ray: the diverged trial's config on its own validates to inf at step 10
    # and stops at step 11.
    params = [f"{k}={v}" for k, v in diverged["params"].items()]
    cfg = load_search(ASHA, [*over, *params]).base_cfg  # the search's base with that trial's draws
    cfg = cfg.model_copy(update={"resources": cfg.resources.model_copy(update={"workers": 0}),
                             "run": cfg.run.model_copy(update={"dir": f"{tune_storage}/ref"})})
    with pytest.raises(NonFiniteError, match=r"\(step 11, task"), Trainer(cfg) as trainer:
        trainer.fit()
    logged = [json.loads(line) for line in (Path(tune_storage) / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val/loss"] for r in logged if "val/loss" in r and r["step"] > 0] == [math.inf]  # step 0: the start


def test_the_shipped_pbt_search_runs(ray_local, tune_storage):
    # As shipped (ICD-10-CM, fomaml / anil, 2 workers x 0.5 CPU, PBT every 2 validations), but 4 steps, 10-episode
    # evaluations and a population of 2 (the least PBT takes): it runs to the end, nothing fails. (PBT's exploits
    # are tested on sinusoid in test_search.py.)
    over = [f"storage_path={tune_storage}", "verbose=0", "num_samples=2", "train.steps=4", "run.eval_every=2",
            "eval.val_episodes=10", "eval.episodes=10"]
    assert main(["tune", "--config", PBT, *over]) == 0
    wait_released(ray_local)
    best = json.loads((load_search(PBT, over).experiment_path / BEST_FILE).read_text())
    assert best["trials"] == 2 and best["errored_trials"] == 0 and 0.0 <= best["best_value"] <= 1.0
    assert best["test"]["test_5way_1shot_accuracy"] > 0


def test_a_trial_too_big_for_the_cluster_fails_at_once(ray_local, tune_storage, capsys):
    before = ray_local.available_resources().get("CPU")
    t0 = time.monotonic()
    over = [f"storage_path={tune_storage}", "resources.cpus_per_worker=1", "driver_cpus=1"]  # the shipped size of old
    with pytest.raises(ConfigError, match=r"one trial needs a placement group of 3 x \[CPU=1\] = CPU=3, GPU=0, but the "
                                          r"Ray cluster has CPU=2, GPU=0 in all \(short of CPU=1\)"):
        run_search(ASHA, over)
    assert time.monotonic() - t0 < 30, "at once, not after a wait"
    assert not load_search(ASHA, over).experiment_path.exists(), "no trial started"
    assert ray_local.available_resources().get("CPU") == before
    assert main(["tune", "--config", ASHA, *over]) == 2 and "short of CPU=1" in capsys.readouterr().err


def test_a_grid_cell_too_big_for_the_cluster_fails_before_the_first_cell(ray_local, tmp_path):
    base = apply_overrides({}, [*text_tiny(write_tiny_csv(tmp_path / "d.csv")), *QUIET, "algorithm.name=protonet"])
    spec = {"base": base, "name": "big", "output_dir": str(tmp_path / "grids"), "axes": {"data.shots": [1, 2]},
            "overrides": ["resources.workers=3", "resources.cpus_per_worker=1"]}
    with pytest.raises(DistmetaError, match=r"the cell shots=1 needs a placement group of 4 x \[CPU=1\] = CPU=4.*short of CPU=2"):
        run_grid(spec)
    assert not (tmp_path / "grids" / "big" / "cells").exists()


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "configs").glob("grid_*.yaml")),
                         ids=lambda p: p.name)
def test_the_shipped_grids_run(path, tmp_path):
    # As shipped (workers: 0), but 2 steps and 4 episodes per cell: every cell trains, tests and lands in the table.
    out = tmp_path / "grids"
    assert main(["grid", "--config", str(path), f"output_dir={out}", "episodes=4", "train.steps=2",
                 "eval.val_episodes=4"]) == 0
    spec = yaml.safe_load(path.read_text())
    rows = json.loads((out / spec["name"] / "grid.json").read_text())["rows"]
    assert len(rows) == math.prod(len(v) for v in spec["axes"].values()) and all(r["episodes"] == 4 for r in rows)


