"""What a search or grid prints: its result, with Ray's own output kept in a log file, and diverged runs marked.

While Tune runs, :class:`RayLog` sends everything written to this process's stdout and stderr
(Tune's tables, every trial's forwarded output, Ray's logging) to a log file in the experiment
directory, without terminal escape codes; the search's own progress lines go to the terminal
through :meth:`RayLog.say`. :func:`outliers` finds the runs that diverged without raising: a
non-finite metric, or an error (loss, MSE) far above the other runs'.
"""
from __future__ import annotations

import math
import os
import re
import statistics
import sys
import threading
from pathlib import Path
from typing import IO, Any, Callable

from ray.tune import Callback

#: Terminal escape sequences (colours, cursor moves): CSI ``ESC [ ... letter`` and OSC ``ESC ] ... BEL``.
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
#: An error metric this many times the median of the other runs' marks a run as diverged.
OUTLIER_FACTOR = 100.0


def strip_ansi(text: str) -> str:
    """``text`` without terminal escape sequences."""
    return ANSI.sub("", text)


def _real_fd(stream: Any) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # pytest's capture, a StringIO: no descriptor to redirect
        return None


class RayLog:
    """Redirect this process's stdout and stderr (descriptors 1 and 2) to ``path`` while in the block.

    A thread copies what arrives to the file with escape codes removed. When stdout is not a
    real descriptor (a test's capture), nothing is redirected and :meth:`say` writes to it.

    Args:
        path: the log file (appended to; its directory is created).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._saved: dict[int, int] = {}
        self._thread: threading.Thread | None = None
        self.terminal: IO[str] = sys.stdout

    def __enter__(self) -> "RayLog":
        if _real_fd(sys.stdout) != 1:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self.terminal = os.fdopen(os.dup(1), "w", buffering=1)
        read, write = os.pipe()
        for fd in (1, 2):
            self._saved[fd] = os.dup(fd)
            os.dup2(write, fd)
        os.close(write)
        self._thread = threading.Thread(target=self._copy, args=(read,), name="ray-log", daemon=True)
        self._thread.start()
        return self

    def _copy(self, read: int) -> None:
        with os.fdopen(read, "rb") as pipe, open(self.path, "a", encoding="utf-8") as log:
            for line in pipe:
                log.write(strip_ansi(line.decode("utf-8", errors="replace")))
                log.flush()

    def say(self, line: str) -> None:
        """Write one line of the search's own to the terminal."""
        self.terminal.write(line + "\n")
        self.terminal.flush()

    def __exit__(self, *exc: Any) -> None:
        if not self._saved:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)  # closes the pipe's last write ends: the copying thread sees its end
            os.close(saved)
        self._saved.clear()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.terminal.close()
        self.terminal = sys.stdout


def outliers(values: dict[str, float], *, error: bool, factor: float = OUTLIER_FACTOR) -> dict[str, str]:
    """The runs whose metric says they diverged, with why.

    Args:
        values: run name -> its metric.
        error: lower is better and positive (a loss, an MSE): a value above ``factor`` x the
            median of the other runs' finite values is diverged too. Otherwise only a
            non-finite value is.
        factor: how far above the others' median.
    Returns:
        run name -> a reason (``MSE 471341 is 1.1e+05x the median 4.2 of the others``).
    """
    out: dict[str, str] = {}
    for name, value in values.items():
        if value is None or not math.isfinite(value):
            out[name] = f"{value} is not finite"
            continue
        others = [v for k, v in values.items() if k != name and v is not None and math.isfinite(v)]
        if error and others:
            median = statistics.median(others)
            if median > 0 and value > factor * median:
                out[name] = f"{value:.6g} is {value / median:.3g}x the median {median:.4g} of the others"
    return out


class TrialLines(Callback):
    """A Tune callback: one line per finished or failed trial, through ``say`` (the terminal, not the log).

    Args:
        say: writes one line (:meth:`RayLog.say`).
        metric: the search metric, shown for each trial.
    """

    def __init__(self, say: Callable[[str], None], metric: str) -> None:
        self.say, self.metric, self.done = say, metric, 0

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks with the experiment state: the terminal stays behind (print once restored)."""
        return {"metric": self.metric, "done": self.done}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, say=print)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.done += 1
        result = trial.last_result or {}
        value = result.get(self.metric)
        shown = f"{value:.4g}" if isinstance(value, (int, float)) else "not reported"
        flag = f"  DIVERGED: {str(result.get('diverged_because', ''))[:120]}" if result.get("diverged") else ""
        self.say(f"[tune] trial {trial.trial_id} finished ({self.done}/{len(trials)}): {self.metric}={shown} "
                 f"at step {result.get('step', '?')}{flag}")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.done += 1
        self.say(f"[tune] trial {trial.trial_id} FAILED ({self.done}/{len(trials)}); its error is in the log")


def _error_key(key: str) -> bool:
    return key == "val_loss" or (key.startswith("test_") and key.endswith("_mse"))


def _score_key(key: str) -> bool:
    return key == "val_accuracy" or (key.startswith("test_") and key.endswith("_accuracy"))


def diverged_runs(metrics: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The runs whose final metrics say they diverged, each with the first reason found.

    Args:
        metrics: run name -> its final report (Tune's ``val_loss``, ``val_accuracy``,
            ``test_<setting>_mse`` / ``_accuracy``); other keys are ignored.
    Returns:
        run name -> ``test_5shot_mse 471341 is 1.1e+05x the median 4.2 of the others``: any of those
        metrics not finite, or an error metric (loss, MSE) an :data:`OUTLIER_FACTOR` above the others'.
    """
    keys = sorted({k for m in metrics.values() for k in m if _error_key(k) or _score_key(k)})
    out: dict[str, str] = {}
    for key in keys:
        values = {name: float(m[key]) for name, m in metrics.items() if isinstance(m.get(key), (int, float))}
        for name, why in outliers(values, error=_error_key(key)).items():
            out.setdefault(name, f"{key} {why}")
    return out


__all__ = ["ANSI", "OUTLIER_FACTOR", "RayLog", "TrialLines", "diverged_runs", "outliers", "strip_ansi"]
