"""Metrics: a flushed jsonl record plus TensorBoard scalars, truncated on resume to read as one run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from distmeta.training.metrics import MetricsLogger, read_metrics


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_log_writes_jsonl_and_tensorboard(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path) as logger:
        logger.log(1, {"loss": 2.5, "accuracy": 0.25}, prefix="train/")
        # flushed per call: readable while the logger is still open
        assert read_metrics(tmp_path)[0]["train/loss"] == 2.5
        logger.log(2, {"loss": 1.5}, prefix="train/")
        logger.log(2, {"accuracy": 0.5}, prefix="val/")
        logger.log_text("config", "seed: 0", step=0)
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 2]
    assert rows[0]["train/accuracy"] == 0.25 and rows[2] == {"step": 2, "time": rows[2]["time"], "val/accuracy": 0.5}
    assert all(isinstance(r["time"], float) for r in rows)

    assert scalars(tmp_path, "train/loss") == [(1, 2.5), (2, 1.5)]
    assert scalars(tmp_path, "val/accuracy") == [(2, 0.5)]
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert any("config" in t for t in acc.Tags()["tensors"])


def test_numpy_and_torch_scalars_become_floats(tmp_path: Path) -> None:
    import numpy as np
    import torch

    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(1, {"a": np.float32(0.5), "b": torch.tensor(2.0), "n": 3})
    [row] = read_metrics(tmp_path)
    assert row["a"] == 0.5 and row["b"] == 2.0 and row["n"] == 3.0
    assert not (tmp_path / "tensorboard").exists()


def test_bad_metrics_are_rejected(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        with pytest.raises(TypeError, match="'x'"):
            logger.log(1, {"x": "not a number"})
        with pytest.raises(ValueError, match="reserved"):
            logger.log(1, {"step": 1.0})
    with pytest.raises(ValueError, match="closed"):
        logger.log(2, {"x": 1.0})
    logger.close()  # idempotent


def test_truncated_last_line_is_skipped_and_repaired(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "time": 0.0, "loss": 1.0}) + "\n" + '{"step": 2, "ti')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(2, {"loss": 0.5})
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert read_metrics(tmp_path / "missing") == []


def test_resume_drops_rows_past_the_checkpoint(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path) as logger:
        for step in range(1, 11):
            logger.log(step, {"loss": float(step)}, prefix="train/")
    # crash after step 10; the last checkpoint was at step 5
    with MetricsLogger(tmp_path, resume_step=5) as logger:
        assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5]
        for step in range(6, 9):
            logger.log(step, {"loss": step + 0.5}, prefix="train/")
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["train/loss"] for r in rows[5:]] == [6.5, 7.5, 8.5]
    # TensorBoard purges the old run's events past step 5 as well
    assert scalars(tmp_path, "train/loss") == [(s, float(s)) for s in range(1, 6)] + [(6, 6.5), (7, 7.5), (8, 8.5)]


def test_sync_is_called_after_each_row_and_forced_once_on_close(tmp_path: Path) -> None:
    calls: list[bool] = []
    logger = MetricsLogger(tmp_path, tensorboard=False, sync=calls.append)
    logger.log(1, {"loss": 1.0})
    logger.log(2, {"loss": 0.5})
    assert calls == [False, False]
    logger.close()
    logger.close()
    assert calls == [False, False, True], "one forced upload at the end, not one per close()"
