"""benchmarks.quality.setfit_peer scores SetFit on distmeta's own meta-test episodes (setfit_episodes), and records
its budget.

The episodes are checked against what distmeta's meta-test itself hands its backend
(:class:`~distmeta.training.evaluation.Evaluator` with a backend that records the episodes),
their texts and labels read back from the CSV file with the ``csv`` module, not through distmeta.
"""
from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path
from typing import Any, Sequence

import pytest

from benchmarks.quality import setfit_episodes, setfit_peer
from tests.helpers import write_tiny_csv

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = [(3, 1), (3, 2)]


def overrides(csv_path: Path) -> list[str]:
    """configs/default.yaml (MiniLM) on the eight-topic CSV: five meta-train and three test classes."""
    return [f"data.source=csv:{csv_path}", "data.ways_range=null", "data.shots_range=null", "data.ways=3",
            "data.shots=1", "data.queries=2", "data.split.train=0.625", "data.split.val=0", "data.split.test=0.375",
            "eval.settings=[[3,1],[3,2]]", "eval.queries=4", "resources.workers=0"]


class RecordingBackend:
    """A backend whose ``evaluate`` keeps the episodes distmeta's meta-test sends it (and scores them 0)."""

    def __init__(self) -> None:
        self.episodes: list[Any] = []

    def evaluate(self, meta: dict[str, Any], groups: Sequence[Sequence[Any]], inner_steps: int,
                 cache_key: str | None = None, baseline: bool = False) -> list[dict[str, list[float]]]:
        self.episodes += [spec for group in groups for spec in group]
        return [{"accuracy": [0.0] * len(group), "loss": [0.0] * len(group)} for group in groups]


def distmeta_meta_test_episodes(cfg: Any, exp: Any, ways: int, shots: int, count: int) -> list[Any]:
    """The episodes distmeta's own meta-test scores in the (ways, shots) setting, in order."""
    from distmeta.training.evaluation import Evaluator

    backend = RecordingBackend()
    Evaluator(cfg, exp, backend).meta_test({}, None, step=0, episodes=count, settings=[(ways, shots)])
    return backend.episodes


def csv_rows(path: Path) -> list[tuple[str, str]]:
    """``(text, label)`` of every data row of the CSV file, in file order."""
    with open(path, newline="") as f:
        return [(r["text"], r["label"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    path = write_tiny_csv(tmp_path_factory.mktemp("setfit") / "tiny.csv")
    cfg, exp = setfit_episodes.prepare(str(ROOT / "configs/default.yaml"), overrides(path))
    return path, cfg, exp


@pytest.mark.parametrize("ways,shots", SETTINGS)
def test_peer_episodes_are_distmeta_meta_test_episodes(prepared: tuple[Path, Any, Any], ways: int, shots: int) -> None:
    path, cfg, exp = prepared
    rows = csv_rows(path)
    count = 12
    peer = setfit_episodes.meta_test_episodes(cfg, exp, ways, shots, count)
    ours = distmeta_meta_test_episodes(cfg, exp, ways, shots, count)
    assert len(peer) == len(ours) == count
    test_names = {exp.data.class_names[c] for c in exp.split.test}
    for ep, spec in zip(peer, ours):
        assert ep.index == spec.index
        names = [rows[r[0]][1] for r in spec.support]  # each class's name, read from the file
        assert list(ep.classes) == names and set(names) <= test_names
        assert ep.support_texts == [rows[r][0] for rs in spec.support for r in rs]
        assert ep.query_texts == [rows[r][0] for rs in spec.query for r in rs]
        assert ep.support_labels == [names.index(rows[r][1]) for rs in spec.support for r in rs]
        assert ep.query_labels == [names.index(rows[r][1]) for rs in spec.query for r in rs]
        assert len(ep.support_texts) == ways * shots and len(ep.query_texts) == ways * cfg.eval.queries
    assert len({tuple(ep.support_texts + ep.query_texts) for ep in peer}) > 1  # the episodes differ


def test_a_setting_distmeta_never_scores_is_refused(prepared: tuple[Path, Any, Any]) -> None:
    _, cfg, exp = prepared
    with pytest.raises(SystemExit, match="eval.settings"):
        setfit_episodes.meta_test_episodes(cfg, exp, 2, 1, 1)


def test_parse_settings() -> None:
    assert setfit_peer.parse_settings("5x1,5X5") == [(5, 1), (5, 5)]
    with pytest.raises(SystemExit, match="WAYSxSHOTS"):
        setfit_peer.parse_settings("5-1")


@pytest.mark.skipif(importlib.util.find_spec("setfit") is None,
                    reason="setfit is not installed (pip install -e .[setfit])")
def test_one_episode_smoke_run_records_accuracy_and_budget(tmp_path: Path) -> None:
    path = write_tiny_csv(tmp_path / "tiny.csv")
    out = tmp_path / "setfit.json"
    argv = ["--config", str(ROOT / "configs/default.yaml"), *overrides(path), "--settings", "3x1",
            "--episodes", "1", "--iterations", "1", "--out", str(out)]
    assert setfit_peer.main(argv) == 0
    report = json.loads(out.read_text())
    setting = report["settings"]["3way_1shot"]
    assert setting["episodes"] == 1 and len(setting["per_episode_accuracy"]) == 1
    acc = setting["accuracy"]
    assert 0.0 <= acc <= 1.0 and round(acc * 12) == acc * 12  # a fraction of the 3 x 4 queries
    assert setting["seconds_per_episode_median"] > 0
    frozen = setting["per_episode_baselines"][0]["accuracy"]  # distmeta's baseline on the same episode
    assert 0.0 <= frozen <= 1.0 and setting["minus_frozen_encoder"] == pytest.approx(acc - frozen)
    assert report["budget"]["num_iterations"] == 1 and report["budget"]["batch_size"] == 16
    assert report["budget"]["max_length"] == 32 and report["versions"]["setfit"] != "not installed"


def test_a_second_run_keeps_the_other_settings_of_the_same_run_only(tmp_path: Path) -> None:
    out = tmp_path / "setfit.json"
    run = {"encoder": "e", "config": "c", "overrides": [], "budget": {"num_iterations": 20}, "queries_per_class": 15}
    out.write_text(json.dumps({**run, "settings": {"5way_1shot": {"episodes": 3}}}))
    assert setfit_peer.earlier_settings(out, run) == {"5way_1shot": {"episodes": 3}}
    assert setfit_peer.earlier_settings(out, {**run, "budget": {"num_iterations": 5}}) == {}
    assert setfit_peer.earlier_settings(tmp_path / "absent.json", run) == {}
