"""Ray Tune searches over 2-worker distributed meta-training runs on the session's 2-CPU Ray.

Each search runs the shipped sinusoid config shrunk to a few steps (SINUSOID_TRIAL); every
test waits for its trials' placement groups and actors to be released before the next.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest
from ray.tune import Callback

from distmeta.config import load_config
from distmeta.sweeps.search import load_search
from distmeta.sweeps.trial import WORST
from distmeta.sweeps.tune import BEST_CONFIG_FILE, BEST_FILE, run_search
from distmeta.training.trainer import Trainer
from tests.tune.conftest import SINUSOID_TRIAL, wait_released

pytestmark = pytest.mark.ray


def search_overrides(storage: str, name: str, **spec) -> list[str]:
    settings = {"storage_path": storage, "name": name, "driver_cpus": 0, "verbose": 0, "search_seed": 0, **spec}
    return [*SINUSOID_TRIAL, *(f"{k}={v}" for k, v in settings.items())]


def rows_of(result) -> list[dict]:
    """Every report of a trial, in order (result.json in its trial directory)."""
    path = Path(result.path) / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class InterruptOnce(Callback):
    """A Tune callback that kills the search (raises in the driver loop) once a trial has reported a checkpoint.

    It fires once per marker file: ``Tuner.restore`` brings the callback back, and it must not fire again.
    """

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.armed = False

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        if not os.path.exists(self.marker) and not (trial.last_result or {}).get("final"):
            self.armed = True  # registered in the experiment state at the end of this loop iteration

    def on_step_begin(self, iteration, trials, **info):
        if self.armed and not os.path.exists(self.marker):
            # Tune copies its experiment state (trials, their last results and checkpoints, the searcher)
            # to storage_path in a background thread, and skips a copy while one is still running; a crash
            # before the copy caught up leaves a stored state older than the trials' result.json files (Tune
            # warns of this for drivers that exit ungracefully). Tune also registers a reported checkpoint
            # one event after the result it came with. A trial restored from a stored state behind its
            # result.json redoes reports that file already holds (seen in loaded full runs: a trial
            # missing, a step reported twice). This test is about distmeta's resume, so the crash waits
            # until no checkpoint is in flight and the stored state holds every trial at the last result
            # and checkpoint the driver has; if the copy has not caught up, the loop runs on and saves again.
            if stored_state_is_current(Path(self.marker).parent, trials):
                Path(self.marker).touch()
                raise RuntimeError("simulated crash of the search driver")


def progress(run_metadata) -> tuple[int, str | None]:
    """A trial's last reported ``training_iteration`` and the path of its latest registered checkpoint."""
    manager = run_metadata.checkpoint_manager
    latest = manager.latest_checkpoint_result if manager is not None else None
    return run_metadata.last_result.get("training_iteration", 0), latest.checkpoint.path if latest else None


def stored_state_is_current(storage: Path, trials: list, wait: float = 2.0) -> bool:
    """Whether, within ``wait`` seconds, the newest ``experiment_state-*.json`` under ``storage`` holds every
    trial of ``trials`` as the driver has it (:func:`progress`), with no checkpoint of theirs still in flight."""
    if any(t.temporary_state.saving_to is not None for t in trials):
        return False
    want = {t.trial_id: progress(t.run_metadata) for t in trials}
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        states = sorted(storage.rglob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
        try:
            if states and stored_progress(states[-1]) == want:
                time.sleep(0.5)  # the searcher state is written beside it in the same copy
                return True
        except (OSError, ValueError, KeyError, IndexError, EOFError):
            pass  # caught mid-write: look again
        time.sleep(0.2)
    return False


def stored_progress(state: Path) -> dict[str, tuple[int, str | None]]:
    """Trial id -> :func:`progress`, as one stored experiment state records them (read with Tune's own decoder)."""
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    return {json.loads(trial_json)["trial_id"]: progress(_TrainingRunMetadata.from_json_state(run_json))
            for trial_json, run_json in json.loads(state.read_text())["trial_data"]}


def test_asha_search_is_cut_off_then_restored_and_reports_the_best_trial(ray_local, tune_storage, monkeypatch, capsys):
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0")  # experiment state saved every loop: a crash loses nothing
    over = search_overrides(tune_storage, "asha", num_samples=4, max_concurrent_trials=2,
                            **{"scheduler.max_t": 3, "scheduler.grace_period": 1, "scheduler.reduction_factor": 2})
    marker = os.path.join(tune_storage, "interrupted")
    with pytest.raises(Exception, match="failed|crash"):
        run_search("configs/tune_sinusoid_asha.yaml", over, callbacks=[InterruptOnce(marker)])
    assert os.path.exists(marker)
    wait_released(ray_local)
    state = load_search("configs/tune_sinusoid_asha.yaml", over).experiment_path
    before = {p.name: len((p / "result.json").read_text().splitlines()) for p in state.glob("trial_*")
              if (p / "result.json").exists()}
    assert before and not (state / BEST_FILE).exists()

    summary = run_search("configs/tune_sinusoid_asha.yaml", over, resume=True)
    wait_released(ray_local)
    grid = summary["result_grid"]
    assert len(grid) == 4 and grid.num_errors == 0
    resumed = 0
    for result in grid:
        rows = rows_of(result)
        trial_id = rows[-1]["trial_id"]
        assert rows[-1]["final"] or rows[-1]["training_iteration"] < 3, "finished, or stopped early by ASHA"
        assert all(r["workers_in_trial_pg"] and r["ray_workers"] == 2 for r in rows), "actors in the trial's group"
        steps = [r["step"] for r in rows]
        assert steps == list(range(2, 2 * len(rows) + 1, 2)), "no step reported twice or skipped"
        done_before = before.get(f"trial_{trial_id}", 0)
        if 0 < done_before < len(rows):  # cut off mid-run: continued from its own checkpoint, not from scratch
            first_new = rows[done_before]
            assert first_new["trial_id_origin"] == trial_id and first_new["restored_from_step"] == steps[done_before - 1]
            resumed += 1
        else:
            assert all(r["restored_from_step"] == -1 for r in rows)
    assert resumed >= 1, f"a trial cut off by the crash was resumed ({before})"

    best = json.loads((state / BEST_FILE).read_text())
    assert best["metric"] == "val_neg_mse" and best["trials"] == 4 and best["errored_trials"] == 0
    assert set(best["best_params"]) == {"algorithm.inner_lr", "algorithm.inner_steps", "outer.lr"}
    assert best["test"]["test_10shot_mse"] > 0 and best["test"]["test_10shot_mse_ci95"] > 0
    assert best["best_value"] == max(rows_of(r)[-1]["val_neg_mse"] for r in grid)
    cfg = load_config(state / BEST_CONFIG_FILE)  # the resolved best config trains as it is
    assert cfg.algorithm.inner_lr == best["best_params"]["algorithm.inner_lr"] and cfg.resources.workers == 2
    assert "meta-test 10shot: mse" in capsys.readouterr().out


def test_pbt_replaces_a_diverged_trial_with_another_trials_checkpoint(ray_local, tune_storage):
    # inner_lr=100 makes the 5-step meta-validation NaN from the first report on (checked below without Tune);
    # PBT mutates outer.lr only, so the replaced trial takes the better trial's inner_lr with its checkpoint.
    over = search_overrides(
        tune_storage, "pbt", num_samples=1, max_concurrent_trials=2,
        scheduler="{name: pbt, perturbation_interval: 2, quantile_fraction: 0.5, resample_probability: 0.0, "
                        "synch: true, hyperparam_mutations: [outer.lr]}", search_space="{algorithm.inner_lr: {grid: [100.0, 0.05]}, outer.lr: {loguniform: [0.001, 0.003]}}")
    seen = Collect()
    summary = run_search("configs/tune_sinusoid_asha.yaml", over, callbacks=[seen])
    wait_released(ray_local)
    grid = summary["result_grid"]
    assert len(grid) == 2 and grid.num_errors == 0, "divergence is a result, not an error"
    ids = {rows_of(r)[-1]["trial_id"] for r in grid}
    exploits = [(rows_of(r)[-1]["trial_id"], row) for r in grid for row in rows_of(r)
                if row["trial_id_origin"] not in ("", row["trial_id"])]
    assert exploits, "the diverged trial continued from the other one's checkpoint"
    for trial_id, row in exploits:
        assert row["trial_id_origin"] in ids - {trial_id}
        assert row["restored_from_step"] == 4 and row["step"] == 6, "resumed at the clone's step, parameters and all"
        assert not row["diverged"] and math.isfinite(row["val_neg_mse"]) and row["val_neg_mse"] > -1e6
        before = [r for r in seen.results[trial_id] if r["step"] <= 4]  # result.json restarts with the clone
        assert [r["step"] for r in before] == [2, 4]
        assert all(r["diverged"] and r["val_neg_mse"] == -WORST for r in before), "worst metric until replaced"
    assert all(rows_of(r)[-1]["final"] and rows_of(r)[-1]["step"] == 6 for r in grid)

    # The reference, without Tune: the same run diverges on its own, so the rows above are its true result.
    cfg = load_config("configs/sinusoid_maml.yaml", [*SINUSOID_TRIAL, "resources.workers=0", "run.progress=false",
                                                     "algorithm.inner_lr=100.0", f"run.dir={tune_storage}/ref"])
    with Trainer(cfg) as trainer:
        trainer.fit()
    logged = [json.loads(line) for line in (Path(tune_storage) / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert math.isnan(next(r["val/loss"] for r in logged if "val/loss" in r and r["step"] > 0))  # after step 0's


class Collect(Callback):
    """Every result every trial reported, in order, by trial id (as the search driver received them)."""

    def __init__(self) -> None:
        self.results: dict[str, list[dict]] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.results.setdefault(trial.trial_id, []).append(dict(result))
