"""Metrics: one JSON line per :meth:`MetricsLogger.log` in ``metrics.jsonl``, mirrored to TensorBoard.

The jsonl file is the record (greppable, diffable, read back by :func:`read_metrics`);
TensorBoard (``RUN_DIR/tensorboard``) is the view. On resume, rows past the resumed
step are dropped from both, so a resumed run reads as one uninterrupted run.

For a run directory on an object store both are written to the run's local cache, and
the logger calls ``sync`` (:meth:`~distmeta.persistence.remote_run.RemoteRun.sync`) after each
row - it uploads at most every ``DISTMETA_SYNC_EVERY`` seconds - and with ``force=True`` on
close. TensorBoard's own S3 support (its ``gfile`` stub) is not used: tried against the test
server it works, but needs boto3 and its own ``S3_ENDPOINT`` variable, knows ``s3://`` only, and
re-uploads the whole event file at every flush (one per row here). On resume the new event file
(with ``purge_step``) goes beside the old ones, as on a local disk.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Sequence

import numpy as np

from distmeta.files import METRICS_FILE, TENSORBOARD_DIR

_RESERVED = ("step", "time")


def _parse_lines(lines: list[str], source: Path | str) -> list[dict[str, Any]]:
    """Parse jsonl lines; a truncated last line (a crash mid-write) is skipped, a bad middle line warned about."""
    rows: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                warnings.warn(f"{source}: skipping malformed line {i + 1}", RuntimeWarning, stacklevel=3)
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every row of ``run_dir/metrics.jsonl`` (or of a jsonl path), in file order; [] if there is none.

    Args:
        run_dir: a run directory or jsonl file: a local path, or a URI (``s3://bucket/run``).

    Returns:
        The rows, as dicts.
    """
    from distmeta.persistence.storage import is_remote, open_store

    if is_remote(run_dir):
        from distmeta.persistence.lease import current_generation

        store = open_store(str(run_dir))
        name = "" if str(run_dir).partition("?")[0].endswith(".jsonl") else METRICS_FILE
        store = store if not name else current_generation(store)  # the generation readers honour
        if not store.exists(name):
            return []
        return _parse_lines(store.read_bytes(name).decode("utf-8").split("\n"), store.uri_of(name))
    path = Path(run_dir)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        return []
    return _parse_lines(path.read_text(encoding="utf-8").split("\n"), path)


def _truncate_jsonl(path: Path, resume_step: int | None) -> None:
    """Make ``path`` safe to append to: drop a torn last line and, on resume, rows with step > resume_step.

    Rewritten atomically, so a crash here leaves the old file.
    """
    from distmeta.files import write_text_atomic

    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    if resume_step is None and (not text or text.endswith("\n")):
        return
    rows = _parse_lines(text.split("\n"), path)
    if resume_step is not None:
        rows = [r for r in rows if not (isinstance(r.get("step"), int) and r["step"] > resume_step
                                        and not any(k.startswith("pretrain/") for k in r))]  # that stage is over
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def _as_float(key: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"metric {key!r} must be a number, got {type(value).__name__}: {value!r}") from e


class MetricsLogger:
    """Append metrics to ``RUN_DIR/metrics.jsonl`` (flushed every call) and to TensorBoard.

    ``resume_step=S`` first drops rows (and TensorBoard events) with step > S, left by
    the run being resumed after its last checkpoint. ``sync(force)``, when given, is called
    after every row (``force=False``) and on close (``force=True``): the upload of a remote run.
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, resume_step: int | None = None,
                 sync: Callable[[bool], None] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self._sync = sync
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        _truncate_jsonl(self.path, resume_step)
        self._file = open(self.path, "a", encoding="utf-8")
        self._writer: Any = None
        if tensorboard:
            self._writer = self._open_tensorboard(resume_step)

    def _open_tensorboard(self, resume_step: int | None) -> Any:
        """A SummaryWriter; on resume ``purge_step`` hides the old run's events past the checkpoint."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            warnings.warn(f"TensorBoard logging disabled ({e}); metrics still go to {self.path}", RuntimeWarning,
                          stacklevel=3)
            return None
        purge = resume_step + 1 if resume_step is not None else None
        return SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD_DIR), purge_step=purge)

    def log(self, step: int, metrics: dict[str, float], prefix: str = "") -> None:
        """One row ``{"step", "time", prefix+key: value}`` to the jsonl and one scalar per key to TensorBoard."""
        if self._file.closed:
            raise ValueError(f"MetricsLogger for {self.run_dir} is closed")
        values = {prefix + k: _as_float(prefix + k, v) for k, v in metrics.items()}
        for name in _RESERVED:
            if name in values:
                raise ValueError(f"metric name {name!r} is reserved; log it under a prefix")
        row = {"step": int(step), "time": time.time(), **values}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._writer is not None:
            for tag, v in values.items():
                self._writer.add_scalar(tag, v, int(step))
            self._writer.flush()
        if self._sync is not None:
            self._sync(False)

    def log_text(self, tag: str, text: str, step: int = 0) -> None:
        """A text note (e.g. the resolved config) in TensorBoard's Text tab; no-op without TensorBoard."""
        if self._writer is not None:
            self._writer.add_text(tag, text, int(step))
            self._writer.flush()

    def close(self) -> None:
        """Flush and close both sinks; safe to call twice."""
        if not self._file.closed:
            self._file.flush()
            try:
                os.fsync(self._file.fileno())
            except OSError:
                pass
            self._file.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._sync is not None:
            sync, self._sync = self._sync, None
            sync(True)

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def step_row(results: Sequence[Any], skipped: Sequence[tuple[int, int]], n_tasks: int,
             times: tuple[float, float, float, float]) -> dict[str, float]:
    """What a training step logs besides the optimiser's figures: task metrics and where the time went.

    Args:
        results: the step's :class:`~distmeta.results.GroupResult` s.
        skipped: task keys left out by ``nan_policy`` (their metrics are not averaged).
        n_tasks: the meta-batch size.
        times: ``perf_counter`` at the step's start, before dispatch, after the results, after the update.

    Returns:
        ``skipped_tasks``, mean ``loss``/``accuracy``, ``step_time``, ``tasks_per_s``, ``dispatch_s``,
        ``driver_s``, ``driver_share``, ``max_group_compute_s`` and ``actor<k>_compute_s``.
    """
    t0, t1, t2, t3 = times
    left_out = set(skipped)
    row: dict[str, float] = {"skipped_tasks": len(skipped)}
    for metric in ("loss", "accuracy"):
        values = [x for r in results if metric in r.metrics
                  for k, x in zip(r.tasks, r.metrics[metric]) if k not in left_out]
        if values:
            row[metric] = float(np.mean(values))
    step_s = t3 - t0
    driver_s = (t1 - t0) + (t3 - t2)
    row.update(step_time=step_s, tasks_per_s=n_tasks / step_s, dispatch_s=t2 - t1, driver_s=driver_s,
               driver_share=driver_s / step_s, max_group_compute_s=max(r.compute_s for r in results))
    for r in results:
        key = f"actor{r.extra.get('actor', 0)}_compute_s"
        row[key] = row.get(key, 0.0) + r.compute_s
    return row


def source_row(specs: Sequence[Any], results: Sequence[Any]) -> dict[str, float]:
    """Per ``data.mixture`` source: how many of the step's tasks it gave, and their mean loss and accuracy.

    ``specs`` and the results' tasks are in the same order (the driver checks it).

    Returns:
        ``source<c>/tasks``, ``source<c>/loss``, ``source<c>/accuracy`` for every source in the step.
    """
    source = {(s.step, s.index): s.source for s in specs}
    values: dict[str, list[float]] = {}
    for r in results:
        for metric in ("loss", "accuracy"):
            for key, x in zip(r.tasks, r.metrics.get(metric, [])):
                values.setdefault(f"source{source[key]}/{metric}", []).append(x)
    row: dict[str, float] = {}
    for c in sorted({s.source for s in specs}):
        row[f"source{c}/tasks"] = float(sum(s.source == c for s in specs))
    row.update({k: float(np.mean(v)) for k, v in sorted(values.items())})
    return row

