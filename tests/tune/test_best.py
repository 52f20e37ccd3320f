"""The best trial's meta-test from its stored checkpoint (when its last report carries none), checkpoint untouched."""
from __future__ import annotations

from types import SimpleNamespace

from distmeta.config import apply_overrides, load_config
from distmeta.persistence.checkpoint import list_checkpoints, verify_checkpoint
from distmeta.sweeps.search import load_search
from distmeta.sweeps.tune import _best_test
from distmeta.training.trainer import Trainer
from tests.helpers import QUIET, text_tiny, write_tiny_csv


def test_a_best_trial_without_a_final_report_is_meta_tested_from_its_checkpoint(tmp_path):
    from ray import tune

    over = [*text_tiny(write_tiny_csv(tmp_path / "d.csv")), *QUIET, "algorithm.name=protonet", "data.split.train=0.5",
            "data.split.val=0.25", "data.split.test=0.25", "run.eval_every=2", "train.steps=2", "data.ways=2",
            "eval.settings=[[2,1]]"]
    with Trainer(load_config(None, [*over, f"run.dir={tmp_path / 'run'}"])) as trainer:
        trainer.fit()
    step_dir = list_checkpoints(tmp_path / "run")[-1]
    stored = {p.name: p.read_bytes() for p in step_dir.iterdir()}

    search = load_search({"base": apply_overrides({}, over), "test_episodes": 6,
                          "search_space": {"outer.lr": {"loguniform": [0.001, 0.01]}}})
    best = SimpleNamespace(metrics={"step": 2, "final": False}, checkpoint=tune.Checkpoint.from_directory(str(step_dir)))
    test, source = _best_test(search, best)

    with Trainer.from_checkpoint(tmp_path / "run", ["run.progress=false"], trust_config=True) as reference:
        want = reference.evaluate(split="test", episodes=6, baseline=False)["test"]["2way_1shot"]
    assert source == "checkpoint"
    assert (test["test_2way_1shot_accuracy"], test["test_2way_1shot_ci95"]) == (want["accuracy"], want["ci95"])
    verify_checkpoint(step_dir)
    assert {p.name: p.read_bytes() for p in step_dir.iterdir()} == stored, "Tune's stored checkpoint is not written"
