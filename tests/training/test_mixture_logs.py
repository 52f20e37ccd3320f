"""A mixture of 20+ sources logs what each source gave and scored: task counts, loss, meta-validation accuracy."""
from __future__ import annotations

from pathlib import Path

import distmeta
from distmeta.config import load_config
from distmeta.experiment import prepare_experiment
from distmeta.training.metrics import read_metrics
from tests.helpers import QUIET, text_tiny, write_tiny_csv

SOURCES = 21


def mixture_overrides(root: Path) -> list[str]:
    paths = [write_tiny_csv(root / f"s{c}.csv", per_class=10, seed=c) for c in range(SOURCES)]
    mixture = ", ".join(f"{{source: 'csv:{p}'}}" for p in paths)
    return [*text_tiny(paths[0]), *QUIET, "algorithm.name=protonet", "data.ways=2", "data.shots=1", "data.queries=2",
            "eval.settings=[[2,1]]", "eval.queries=2", "data.split.train=0.5", "data.split.val=0.25",
            "data.split.test=0.25", f"data.mixture=[{mixture}]", "train.steps=2", "train.meta_batch=40",
            "algorithm.group_size=8", "run.eval_every=2", "eval.val_episodes=84", "eval.episodes=8"]


def test_twenty_one_sources_log_per_source_tasks_and_meta_validation(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    cfg = load_config(None, [*mixture_overrides(tmp_path), f"run.dir={run}"])
    with distmeta.Trainer(cfg) as trainer:
        trainer.fit()
    rows = read_metrics(run)
    train = [r for r in rows if "train/loss" in r]
    sampler = prepare_experiment(cfg).sampler("train")  # the independent count: the sampler's own draws
    for r in train:
        drawn = [s.source for s in sampler.batch(r["step"] - 1, cfg.train.meta_batch)]
        logged = {int(k.split("/")[1][len("source"):]): v for k, v in r.items() if k.endswith("/tasks")}
        assert logged == {c: float(drawn.count(c)) for c in set(drawn)}
        assert all(f"train/source{c}/loss" in r for c in logged)
    val = next(r for r in rows if "val/accuracy" in r)
    per_source = {k.split("/")[1]: v for k, v in val.items() if k.startswith("val/source") and k.endswith("/accuracy")}
    counts = {k.split("/")[1]: val[f"val/{k.split('/')[1]}/episodes"] for k in val if k.endswith("/episodes")
              and k.startswith("val/source")}
    assert len(per_source) > 10 and sum(counts.values()) == cfg.eval.val_episodes
    pooled = sum(per_source[s] * counts[s] for s in per_source) / sum(counts.values())
    assert abs(pooled - val["val/accuracy"]) < 1e-9, "the sources' episodes are exactly the whole validation"
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    assert {"val/source0/accuracy", "train/source0/tasks"} <= set(events.Tags()["scalars"])
