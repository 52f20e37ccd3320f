"""The shipped default (`make train`, `distmeta train` with no --config) as users get it.

The full run (ICD-10-CM, MiniLM, Ray actors) takes minutes and is measured by
benchmarks/quality/table.py; here the same config runs end to end on the tiny corpus (its prefix cache
covers 160 rows instead of ~46K, which on CI's 2 cores would take minutes), in-process, with
episode shapes that 8 classes allow. Every other key is the shipped one.
"""
from __future__ import annotations

import json

from distmeta.cli import main
from distmeta.config import DEFAULT_CONFIG, load_config
from tests.helpers import write_tiny_csv


def test_the_shipped_default_is_the_pretrained_encoder_with_cache_and_selection():
    cfg = load_config(DEFAULT_CONFIG)
    assert cfg.model.name == "minilm" and cfg.model.trainable == "last:2" and cfg.model.prefix_cache == "auto"
    assert cfg.algorithm.name == "protonet" and cfg.algorithm.distance == "auto"
    assert cfg.train.select_best and cfg.run.eval_every and cfg.eval.baseline
    assert cfg.resources.workers == "auto" and cfg.eval.episodes == 600


def test_the_shipped_default_runs_end_to_end_on_a_small_corpus(tmp_path, capsys):
    csv = write_tiny_csv(tmp_path / "d.csv", per_class=30)
    run = tmp_path / "run"
    scaled = [  # the corpus and what it forces (8 classes, 30 rows each), and a short run
        f"data.source=csv:{csv}", "data.split.train=0.5", "data.split.val=0.25", "data.split.test=0.25",
        "data.ways=2", "data.ways_range=[3,3]", "data.shots_range=[2,2]", "eval.settings=[[2,1],[2,5]]",
        "train.steps=4", "run.eval_every=2", "eval.episodes=20", "eval.val_episodes=20", "resources.workers=0",
        f"model.cache_dir={tmp_path / 'cache'}", f"run.dir={run}", "run.progress=false",
    ]
    assert main(["train", "--config", str(DEFAULT_CONFIG), *scaled]) == 0
    out = capsys.readouterr().out
    assert "prefix cache: 4 frozen layers of 6" in out
    assert "frozen encoder, cosine centroid" in out and "fine-tuned head" in out and "error reduction" in out
    results = json.loads((run / "results.json").read_text())
    for setting in ("2way_1shot", "2way_5shot"):
        base = results["before_meta_training"][setting]
        assert {"accuracy", "accuracy_euclidean", "accuracy_finetune"} <= set(base)
        assert "error_reduction" in results["test"][setting]
    assert (run / "best.safetensors").is_file()  # train.select_best kept the best meta-validation
    assert any((tmp_path / "cache").iterdir())
