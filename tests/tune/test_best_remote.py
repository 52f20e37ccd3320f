"""A best trial stored on remote Tune storage is meta-tested as a foreign checkpoint, never with its config trusted.

Its checkpoint here stands for one a writer of the bucket planted: trained on a copy of the
data at another path (deleted since), or naming a cache directory the search never gave.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from distmeta.config import apply_overrides, load_config
from distmeta.persistence.checkpoint import list_checkpoints
from distmeta.sweeps.search import load_search
from distmeta.sweeps.tune import _best_test
from distmeta.training.trainer import Trainer
from tests.helpers import QUIET, text_tiny, write_tiny_csv

SHAPE = [*QUIET, "algorithm.name=protonet", "data.split.train=0.5", "data.split.val=0.25", "data.split.test=0.25",
         "train.steps=2", "data.ways=2", "eval.settings=[[2,1]]", "run.eval_every=2"]


def stored_best(tmp_path, name: str, extra: list[str]):
    """A Tune result whose last report has no meta-test, and whose checkpoint was trained on ``planted.csv``."""
    from ray import tune

    planted = write_tiny_csv(tmp_path / f"{name}-planted.csv")
    with Trainer(load_config(None, [*text_tiny(planted), *SHAPE, *extra, f"run.dir={tmp_path / name}"])) as trainer:
        trainer.fit()
    planted.unlink()  # a path the search never named: meta-testing must not need it
    step = list_checkpoints(tmp_path / name)[-1]
    return SimpleNamespace(metrics={"step": 2, "final": False}, checkpoint=tune.Checkpoint.from_directory(str(step)))


def remote_search(data):
    return load_search({"base": apply_overrides({}, [*text_tiny(data), *SHAPE]), "test_episodes": 6,
                        "storage_path": "s3://bucket/tune", "search_space": {"outer.lr": {"loguniform": [0.001, 0.01]}}})


def test_remote_best_trial_is_meta_tested_on_the_searchs_own_data(tmp_path):
    data = write_tiny_csv(tmp_path / "d.csv")
    best = stored_best(tmp_path, "run", [])
    test, source = _best_test(remote_search(data), best)

    with Trainer.from_checkpoint(tmp_path / "run", ["run.progress=false", f"data.source=csv:{data}"]) as reference:
        want = reference.evaluate(split="test", episodes=6, baseline=False)["test"]["2way_1shot"]
    assert source == "checkpoint"
    assert (test["test_2way_1shot_accuracy"], test["test_2way_1shot_ci95"]) == (want["accuracy"], want["ci95"])


def test_a_location_the_search_never_gave_is_refused_not_used(tmp_path):
    data = write_tiny_csv(tmp_path / "d.csv")
    best = stored_best(tmp_path, "run", [f"model.cache_dir={tmp_path / 'planted-cache'}"])
    with pytest.warns(UserWarning, match="model.cache_dir"):
        test, source = _best_test(remote_search(data), best)
    assert test == {} and source.startswith("refused: ") and "model.cache_dir" in source
