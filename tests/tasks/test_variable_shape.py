"""Variable-way / variable-shot meta-training (``data.ways_range`` / ``data.shots_range``) and training ways
larger than test ways, through prepare_experiment and short in-process runs on the tiny CSV."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from distmeta.config import load_config
from distmeta.errors import DataError
from distmeta.experiment import min_examples_per_class, prepare_experiment
from distmeta.training.trainer import Trainer
from tests.helpers import QUIET, text_tiny, write_tiny_csv

# tiny CSV (8 classes): 4 train, 2 val, 2 test
WITH_VAL = ["data.split.train=0.5", "data.split.val=0.25", "data.split.test=0.25", "data.ways=2",
            "eval.settings=[[2,1],[2,2]]"]


def config(tmp_path: Path, *extra: str, per_class: int = 20):
    csv_path = write_tiny_csv(tmp_path / "d.csv", per_class=per_class)
    return load_config(None, [*text_tiny(csv_path), *QUIET, "algorithm.name=protonet", f"run.dir={tmp_path / 'run'}",
                              *extra])


def test_train_sampler_varies_its_shape_validation_and_test_do_not(tmp_path):
    cfg = config(tmp_path, *WITH_VAL, "data.ways_range=[2,4]", "data.shots_range=[1,3]")
    exp = prepare_experiment(cfg)
    train = exp.sampler("train")
    shapes = {(t.ways, t.shots) for step in range(60) for t in train.batch(step, 3)}
    assert {w for w, _ in shapes} == {2, 3, 4} and {k for _, k in shapes} == {1, 2, 3}
    assert {(t.ways, t.shots) for step in range(20) for t in exp.sampler("val").batch(step, 3)} == {(2, 1)}
    test = exp.sampler("test", ways=2, shots=2, queries=3)
    assert {(t.ways, t.shots) for step in range(20) for t in test.batch(step, 3)} == {(2, 2)}
    # explicit shapes override the ranges, even for the train split
    assert {(t.ways, t.shots) for t in exp.sampler("train", ways=3, shots=2).batch(7, 3)} == {(3, 2)}
    # a second experiment (another worker, a resumed run) draws the very same tasks
    again = prepare_experiment(cfg).sampler("train")
    assert all(train.batch(s, 4) == again.batch(s, 4) for s in range(10))


def test_class_size_checks_use_the_largest_shots_and_ways(tmp_path):
    cfg = config(tmp_path, "data.shots_range=[1,6]")  # data.shots=1, data.queries=3, eval (3,1) with 3 queries
    assert min_examples_per_class(cfg) == 6 + 3
    small = config(tmp_path, "data.shots_range=[1,6]", per_class=8)
    with pytest.raises(DataError, match="at least 9 examples"):
        prepare_experiment(small)
    prepare_experiment(config(tmp_path, "data.shots_range=[1,5]", per_class=8))
    with pytest.raises(DataError, match="data.ways_range"):
        prepare_experiment(config(tmp_path, "data.ways_range=[2,6]"))  # 5 train classes


@pytest.mark.parametrize("algorithm, extra", [
    ("protonet", []),
    ("protomaml", ["algorithm.adapt=head", "algorithm.inner_steps=1", "algorithm.inner_lr=0.1"]),
])
def test_variable_episodes_train_validate_and_meta_test(tmp_path, algorithm, extra):
    cfg = config(tmp_path, *WITH_VAL, "data.ways_range=[2,4]", "data.shots_range=[1,3]", "train.steps=6",
                 "run.eval_every=3", "eval.val_episodes=4", f"algorithm.name={algorithm}", *extra)
    with Trainer(cfg) as trainer:
        results = trainer.fit()
    for setting in ("2way_1shot", "2way_2shot"):
        assert 0.0 <= results["test"][setting]["accuracy"] <= 1.0
        assert math.isfinite(results["test"][setting]["loss"])


def test_variable_shots_train_a_fixed_head_algorithm(tmp_path):
    cfg = config(tmp_path, "data.shots_range=[1,3]", "train.steps=4", "algorithm.name=maml",
                 "algorithm.inner_steps=1", "algorithm.inner_lr=0.1", "eval.settings=[[3,1]]")
    with Trainer(cfg) as trainer:
        results = trainer.fit()
    assert 0.0 <= results["test"]["3way_1shot"]["accuracy"] <= 1.0


def write_many_classes_csv(path: Path, classes: int = 16, per_class: int = 10) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for c in range(classes):
            for i in range(per_class):
                w.writerow([" ".join(f"topic{c}word{(i + k) % 6}" for k in range(4)), f"class{c}"])
    return path


def test_training_ways_larger_than_test_ways(tmp_path):
    # 16 classes: 10 to meta-train 10-way, 6 held out, meta-tested 5-way (check_ways takes test ways from eval.settings)
    csv_path = write_many_classes_csv(tmp_path / "many.csv")
    cfg = load_config(None, [*text_tiny(csv_path), *QUIET, "algorithm.name=protonet", f"run.dir={tmp_path / 'run'}",
                             "data.ways=10", "data.split.train=0.625", "data.split.test=0.375",
                             "eval.settings=[[5,1],[5,5]]", "eval.queries=3"])
    with Trainer(cfg) as trainer:
        results = trainer.fit()
    assert set(results["test"]) >= {"5way_1shot", "5way_5shot"}
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in results["test"].values())
