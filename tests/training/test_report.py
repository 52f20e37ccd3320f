"""Issue 26 item 4: what a run tells its user (start-up summary, validation lines, warnings) and logs (step 0, baselines)."""
from __future__ import annotations

import csv
import json
import re
import warnings

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from distmeta.config import load_config
from distmeta.training.metrics import read_metrics
from distmeta.training.report import validation_line, validation_warnings
from distmeta.training.trainer import Trainer
from tests.helpers import QUIET, SINUSOID_TINY, text_tiny, write_tiny_csv

#: 8 classes of 20 rows; 4 / 2 / 2 classes for meta-train / -validation / -test.
SPLIT = ["data.ways=2", "eval.settings=[[2,1]]", "data.split.train=0.5", "data.split.val=0.25",
         "data.split.test=0.25", "eval.val_episodes=10"]


def _fit(tmp_path, *extra: str) -> tuple[Trainer, dict]:
    data = write_tiny_csv(tmp_path / "d.csv")
    cfg = load_config(None, [*text_tiny(data), *QUIET, *SPLIT, "eval.baseline=true", "run.eval_every=1",
                             "train.select_best=true", f"run.dir={tmp_path / 'run'}", *extra])
    with Trainer(cfg) as trainer:
        return trainer, trainer.fit()


def test_startup_summary_validation_lines_and_logs(tmp_path, capsys):
    trainer, results = _fit(tmp_path)
    out = capsys.readouterr().out
    # The start-up summary, once: rows, classes and split sizes as the CSV and split.json have them.
    with open(tmp_path / "d.csv") as f:
        rows = list(csv.DictReader(f))
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    sizes = {part: len(split[part]) for part in ("train", "val", "test")}
    assert sizes == {"train": 4, "val": 2, "test": 2}, split
    assert out.count("data: csv:") == 1 and f"{len(rows)} rows, 8 classes" in out, out
    assert "split: train 4 classes (80 rows), val 2 classes (40 rows), test 2 classes (40 rows)" in out, out
    params = sum(t.numel() for t in trainer.initial_meta.values())
    assert f"encoder: bag (an embedding bag of width 16); meta-trains model.trainable=all ({params:,} parameters)" in out
    assert "actors: none, one in-process worker (resources.workers=0)" in out
    # Validation lines: step 0 first, then % ± CI once, with the best so far.
    lines = [line for line in out.splitlines() if re.match(r"step \d+.*: val ", line)]
    assert lines[0].startswith("step 0 (before meta-training): val accuracy") and len(lines) == 4, out
    logged = {r["step"]: r for r in read_metrics(tmp_path / "run") if "val/accuracy" in r}
    assert sorted(logged) == [0, 1, 2, 3]
    best = max((logged[s]["val/accuracy"], -s) for s in (1, 2, 3))  # the first of equals is kept
    want = (f"step 3: val accuracy {100 * logged[3]['val/accuracy']:.2f} ± {100 * logged[3]['val/accuracy_ci95']:.2f}% "
            f"(best {100 * best[0]:.2f}% at step {-best[1]}), loss {logged[3]['val/loss']:.4f}")
    assert lines[-1] == want and "ci95" not in out, (lines, want)
    assert (f"train.select_best: meta-testing the parameters of step {-best[1]} (meta-validation accuracy "
            f"{100 * best[0]:.2f}%)") in out, out
    # The baselines, in metrics.jsonl and TensorBoard, equal to results.json's.
    last = [r for r in read_metrics(tmp_path / "run") if "baseline/2way_1shot/accuracy" in r]
    base = results["before_meta_training"]["2way_1shot"]
    assert len(last) == 1 and last[0]["baseline/2way_1shot/accuracy"] == pytest.approx(base["accuracy"])
    assert last[0]["baseline/2way_1shot/accuracy_finetune"] == pytest.approx(base["accuracy_finetune"])
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val/accuracy")] == [0, 1, 2, 3]
    assert events.Scalars("baseline/2way_1shot/accuracy")[0].value == pytest.approx(base["accuracy"])


def test_step_0_is_not_a_selection_candidate(tmp_path):
    trainer, _ = _fit(tmp_path, "train.steps=2")
    assert trainer.best.step in (1, 2)


def test_regression_lines_are_mse_with_the_best_so_far(tmp_path, capsys):
    cfg = load_config(None, [*SINUSOID_TINY, "run.progress=false", "run.checkpoint_every=0", "run.eval_every=1",
                             "eval.val_episodes=10", f"run.dir={tmp_path / 'run'}"])
    with Trainer(cfg) as trainer:
        trainer.fit()
    lines = [line for line in capsys.readouterr().out.splitlines() if ": val " in line]
    logged = {r["step"]: r["val/loss"] for r in read_metrics(tmp_path / "run") if "val/loss" in r}
    best = min((logged[s], s) for s in (1, 2, 3))
    assert lines[0] == f"step 0 (before meta-training): val mse {logged[0]:.4f} ± " + lines[0].split(" ± ")[1]
    assert lines[-1].startswith(f"step 3: val mse {logged[3]:.4f} ± ")
    assert lines[-1].endswith(f"(best {best[0]:.4f} at step {best[1]})"), lines


def test_a_warning_when_validation_never_runs(tmp_path):
    over = [*SINUSOID_TINY, "run.progress=false", "run.checkpoint_every=0", f"run.dir={tmp_path / 'run'}"]
    cfg = load_config(None, [*over, "run.eval_every=100", "train.select_best=true"])
    with pytest.warns(UserWarning, match=r"train.steps=3 < run.eval_every=100: meta-validation never runs.*"
                                         r"train.select_best will do nothing.*set run.eval_every="), Trainer(cfg) as t:
        t.fit()
    cfg = load_config(None, [*over, "run.eval_every=1", "train.select_best=true", "eval.val_episodes=4",
                             f"run.dir={tmp_path / 'run2'}"])
    with warnings.catch_warnings(record=True) as seen, Trainer(cfg) as t:
        warnings.simplefilter("always")
        t.fit()
    assert not [w for w in seen if "meta-validation" in str(w.message)], [str(w.message) for w in seen]


def test_validation_warnings_name_the_keys():
    def cfg(*extra: str):
        return load_config(None, ["train.steps=10", *extra])

    assert validation_warnings(cfg("run.eval_every=5"), True) == []
    assert "data.split.val" in validation_warnings(cfg("run.eval_every=5", "train.patience=2"), False)[0]
    assert "train.patience" in validation_warnings(cfg("run.eval_every=0", "train.patience=2"), True)[0]
    assert validation_warnings(cfg("run.eval_every=0", "train.select_best=false", "train.patience=0"), True) == []


def test_validation_line_shows_the_ci_once_and_each_source():
    val = {"episodes": 100.0, "accuracy": 0.712, "accuracy_ci95": 0.0185, "ci95": 0.0185, "loss": 0.81234,
           "loss_ci95": 0.1, "source0/accuracy": 0.7, "source1/accuracy": 0.724}
    assert validation_line(50, val, (25, 0.72)) == ("step 50: val accuracy 71.20 ± 1.85% (best 72.00% at step 25), "
                                                   "loss 0.8123 | source0 70.00%, source1 72.40%")


def test_the_summary_names_the_ray_actors_and_their_resources(ray_local, tmp_path, capsys):
    cfg = load_config(None, [*SINUSOID_TINY, "resources.workers=2", "run.progress=false", "run.checkpoint_every=0",
                             "run.eval_every=0", "train.steps=1", f"run.dir={tmp_path / 'run'}"])
    with Trainer(cfg) as trainer:
        trainer.fit()
        nodes = len(set(trainer.backend.node_ids))
    out = capsys.readouterr().out
    assert f"actors: 2 Ray actors x (1 CPU, device cpu) on {nodes} node{'s' if nodes > 1 else ''}" in out, out
