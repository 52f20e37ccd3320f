"""benchmarks.quality.side_by_side: rows, differences and projections from the reports it is given, and nothing else."""
from __future__ import annotations

import argparse
import json

import pytest

from benchmarks.quality.side_by_side import (
    FROZEN,
    META,
    META_T,
    SETFIT,
    collect,
    main,
    parse_source,
    plotted_accuracy,
    render_reductions,
    render_rows,
)


def _block(acc: float, **more: float) -> dict:
    return {"episodes": 600.0, "accuracy": acc, "ci95": 0.01, "accuracy_ci95": 0.01, **more}


def _quality(tmp_path, name: str, runs: list[dict]) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"episodes": 600, "runs": runs}))
    return str(path)


def _run(corpus: str, config: str, meta: float, frozen: float, wall: float, transductive: bool = False) -> dict:
    t = {"accuracy_transductive": meta + 0.05, "accuracy_transductive_ci95": 0.02} if transductive else {}
    f = {"accuracy_transductive": frozen + 0.06, "accuracy_transductive_ci95": 0.02} if transductive else {}
    return {"corpus": corpus, "config_name": config, "status": "ok", "wall_s": wall,
            "results": {"test": {"5way_1shot": _block(meta, **t)},
                        "before_meta_training": {"5way_1shot": _block(frozen, accuracy_finetune=frozen + 0.01,
                                                                      accuracy_finetune_ci95=0.01, **f)}}}


def _setfit(tmp_path, corpus: str, acc: float, paired: float, episodes: int, secs: float) -> None:
    report = {"source": f"parquet:/x/{corpus}.parquet", "settings": {"5way_1shot": {
        "episodes": episodes, "accuracy": acc, "accuracy_ci95": 0.03, "seconds_per_episode_mean": secs,
        "minus_frozen_encoder": paired, "minus_frozen_encoder_ci95": 0.005}}}
    (tmp_path / f"setfit-enc-{corpus}.json").write_text(json.dumps(report))


def test_rows_keep_each_encoders_methods_and_differences_are_within_an_encoder(tmp_path):
    mini = _quality(tmp_path, "mini", [_run("c1", "default", 0.80, 0.70, 300.0),
                                       _run("c1", "bag", 0.10, 0.10, 10.0)])  # another config, filtered out
    mp = _quality(tmp_path, "mp", [_run("c1", "mpnet", 0.90, 0.85, 1200.0, transductive=True)])
    _setfit(tmp_path, "c1", acc=0.66, paired=0.02, episodes=60, secs=10.0)
    rows, episodes = collect([("MiniLM", mini + "#default"), ("MPNet", mp)],
                             [("MiniLM", str(tmp_path / "setfit-enc-*.json"))])
    assert episodes == 600
    got = [(r["encoder"], r["method"]) for r in rows]
    assert got[:4] == [("MiniLM", FROZEN), ("MiniLM", "fine-tuned head"), ("MiniLM", META), ("MiniLM", SETFIT)]
    assert ("MPNet", META_T) in got and len(got) == 4 + 5  # bag's rows are not there; MPNet has its two transductive
    table = render_rows(rows)
    line = lambda enc, method: next(x for x in table.splitlines() if f"| {enc} | {method} |" in x)  # noqa: E731
    assert "| 80.00 ± 1.00 | +10.00 | 5 min 0 s |" in line("MiniLM", META)
    # SetFit: its paired difference on its own episodes, and 10 s x 600 episodes projected
    assert "| 60 | 66.00 ± 3.00 | +2.00 ± 0.50 (paired, 60 eps) | 100 min 0 s (projected) |" in line("MiniLM", SETFIT)
    # the transductive meta-trained row is compared with the transductive frozen encoder (0.95 - 0.91)
    assert "| +4.00 |" in line("MPNet", META_T) and "| +5.00 |" in line("MPNet", META)


def test_reductions_and_the_setfit_lead_go_through_the_frozen_encoder(tmp_path):
    mini = _quality(tmp_path, "mini", [_run("c1", "default", 0.80, 0.70, 300.0)])
    mp = _quality(tmp_path, "mp", [_run("c1", "mpnet", 0.90, 0.85, 1200.0)])
    _setfit(tmp_path, "c1", acc=0.66, paired=0.02, episodes=60, secs=10.0)
    rows, _ = collect([("MiniLM", mini), ("MPNet", mp)], [("MiniLM", str(tmp_path / "setfit-enc-*.json"))])
    text = render_reductions(rows)
    # (0.80 - 0.70) / 0.30 = 33.3 %; (0.90 - 0.85) / 0.15 = 33.3 %; lead over SetFit = 10 - 2 points
    assert "| c1 | 5way_1shot | 70.00 → 80.00 (+33.3%) | +8.00 (60 SetFit eps) | 85.00 → 90.00 (+33.3%) | — |" in text
    setfit = next(r for r in rows if r["method"] == SETFIT)
    assert plotted_accuracy(setfit, rows) == pytest.approx((0.72, 0.005))  # frozen 0.70 over 600 + paired 0.02


def test_bad_sources_are_refused_with_the_flag(tmp_path, capsys):
    with pytest.raises(argparse.ArgumentTypeError, match="--table 'quality.json'"):
        parse_source("quality.json", "--table")
    mini = _quality(tmp_path, "mini", [_run("c1", "default", 0.80, 0.70, 300.0)])
    with pytest.raises(SystemExit, match="no file matches"):
        main(["--table", f"MiniLM={mini}", "--setfit", f"MiniLM={tmp_path}/none-*.json", "--out", str(tmp_path)])
    assert main(["--table", f"MiniLM={mini}", "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o/side_by_side.png").stat().st_size > 0
    assert "70.00 → 80.00" in (tmp_path / "o/side_by_side.md").read_text()
