"""Progress bars that suit both a terminal and a log file.

On a terminal, :func:`progress_bar` is an ordinary ``tqdm`` bar redrawn in place. When the
bar's stream is not a terminal (Ray Jobs, CI, ``make train > log``, ``| tee``), a
carriage-return redraw per step would fill the log with thousands of bar updates; there
the bar writes one plain line every ``run.progress_every`` seconds (and a last one when
it closes) instead::

    meta-train:  40%|████      | 80/200 [01:02<01:33,  1.28step/s, loss=0.512]

Every bar in distmeta (meta-training, pretraining, the prefix cache, meta-test) comes from here.
"""
from __future__ import annotations

import sys
import time
from typing import Any

from tqdm.std import tqdm as _tqdm

#: Seconds between lines when the output is not a terminal (``run.progress_every``; set by the Trainer).
LINE_EVERY_S = 30.0


def set_line_interval(seconds: float) -> None:
    """Seconds between progress lines written to a non-terminal stream."""
    global LINE_EVERY_S
    LINE_EVERY_S = float(seconds)


class LineProgress(_tqdm):
    """A ``tqdm`` bar that writes whole lines (never ``\\r``), at most one per ``mininterval`` seconds."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._last_line = ""
        self._last_t = -float("inf")
        super().__init__(*args, **kwargs)

    def refresh(self, nolock: bool = False, lock_args: Any = None) -> None:
        """Redraw only when ``mininterval`` has passed (``set_postfix`` refreshes on every call)."""
        if self.disable:
            return
        if time.monotonic() - self._last_t >= self.mininterval:
            super().refresh(nolock=nolock, lock_args=lock_args)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "":  # tqdm clearing the line: nothing was drawn in place
            return False
        line = (str(self) if msg is None else msg).strip()
        if line and line != self._last_line:
            self.fp.write(line + "\n")
            self.fp.flush()
            self._last_line = line
            self._last_t = time.monotonic()
        return True

    def close(self) -> None:
        if not getattr(self, "disable", True) and hasattr(self, "last_print_t"):
            self._ema_dt = lambda: None  # the overall rate in the last line, as tqdm does
            self.display()  # the final state, once
        self.leave = False  # tqdm's own close would add an empty line
        super().close()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable: Any = None, *, file: Any = None, **kwargs: Any) -> _tqdm:
    """A progress bar: ``tqdm`` on a terminal, :class:`LineProgress` (a line per ``LINE_EVERY_S``) otherwise.

    Args:
        iterable: what to iterate over, as for ``tqdm``.
        file: the stream (default ``sys.stderr``, tqdm's).
        **kwargs: ``tqdm`` arguments (``total``, ``desc``, ``unit``, ``disable``, ``leave``, ...).

    Returns:
        The bar; use it as ``tqdm`` (``update``, ``set_postfix``, ``write``, ``close``, context manager).
    """
    stream = file if file is not None else sys.stderr
    if _is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, file=stream, **kwargs)
    kwargs.setdefault("mininterval", LINE_EVERY_S)
    kwargs["maxinterval"] = max(kwargs.get("maxinterval", 10.0), kwargs["mininterval"])
    return LineProgress(iterable, file=stream, dynamic_ncols=False, ncols=100, **kwargs)
