"""Shared by the benchmarks: interleaved timing rounds and writing a report beside printing it."""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path


def interleaved_times(calls: Mapping[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each call, ``rounds`` times, the calls interleaved within each round.

    Interleaving spreads any drift of the machine (another process, thermal state) over every
    call alike, so per-round ratios between calls stay meaningful.
    """
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    return times


def report(lines: list[str], out_dir: str | None, filename: str) -> None:
    """Print ``lines``; with ``out_dir``, also write them to ``out_dir/filename``."""
    text = "\n".join(lines)
    print(text)
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / filename).write_text(text + "\n")
