"""What the speed benchmarks share: set-up, interleaved timing, the ``--quick`` flag and writing reports.

Every benchmark here times the things it compares in one process, interleaved round by
round, so drift of this shared machine hits them alike; its figures are medians over the
rounds, and its ratios medians of per-round ratios. Each one's ``--quick`` swaps its defaults
for a run of seconds to a minute (``python -m benchmarks.speed`` runs them all); an explicit
flag still wins over a quick default.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
#: The from-scratch bag ProtoNet config most cases build on (the embedded default loads MiniLM).
BAG_CONFIG = ROOT / "configs" / "bag_protonet.yaml"
RESULTS = ROOT / "benchmarks" / "results"


def parse_args(ap: argparse.ArgumentParser, quick: Mapping[str, Any], argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line, with a ``--quick`` flag that makes ``quick`` the defaults.

    Args:
        ap: the benchmark's parser, every flag of its full mode added.
        quick: argparse destination -> its quick-mode default (only the defaults change, so
            ``--quick --rounds 5`` still runs 5 rounds).
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The parsed namespace; ``quick`` is True in quick mode.
    """
    dests = {a.dest for a in ap._actions}
    unknown = sorted(set(quick) - dests)
    if unknown:
        raise ValueError(f"quick-mode defaults for unknown options {unknown}; the parser has {sorted(dests)}")
    shown = ", ".join(f"{k.replace('_', '-')}={v}" for k, v in quick.items())
    ap.add_argument("--quick", action="store_true", help=f"a short run for the suite: {shown}")
    if ap.parse_known_args(argv)[0].quick:
        ap.set_defaults(**quick)
    return ap.parse_args(argv)


def experiment(base: str | Path | None, overrides: list[str]) -> tuple[Any, Any]:
    """The config ``base`` with ``overrides`` and its prepared experiment (data, tokenizer, caches).

    Args:
        base: a config file, or None for distmeta's default.
        overrides: ``key=value`` config overrides, applied in order.

    Returns:
        ``(config, experiment)``, as ``distmeta train`` sets them up before the first step.
    """
    from distmeta.config import load_config
    from distmeta.experiment import prepare_experiment

    cfg = load_config(base, overrides)
    return cfg, prepare_experiment(cfg)


def in_process_worker(base: str | Path | None, overrides: list[str], **kwargs: Any) -> tuple[Any, Any, Any]:
    """:func:`experiment` and one in-process ``Worker`` of it (``kwargs`` go to the Worker).

    Returns:
        ``(config, experiment, worker)``.
    """
    from distmeta.worker import Worker

    cfg, exp = experiment(base, overrides)
    return cfg, exp, Worker(cfg, **exp.worker_args(), **kwargs)


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


def median_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over rounds of ``a[i] / b[i]``: two rows timed in the same round saw the same machine."""
    if len(a) != len(b) or not a:
        raise ValueError(f"per-round ratios need two equally long, non-empty series (got {len(a)} and {len(b)})")
    return statistics.median(x / y for x, y in zip(a, b))


def report(lines: list[str], out_dir: str | Path | None, filename: str) -> None:
    """Print ``lines``; with ``out_dir``, also write them to ``out_dir/filename``."""
    text = "\n".join(lines)
    print(text)
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / filename).write_text(text + "\n")


def write_rows(path: Path | None, args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """With ``path``, write ``{"args": the command line, "rows": rows}`` there as JSON (its folder made)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))
