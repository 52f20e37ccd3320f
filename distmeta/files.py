"""The names of the files in a run directory, in one place, and the atomic write every layer uses.

A run directory (``run.dir``) holds::

    config.yaml          the resolved config the run was started with
    split.json           its class split (``split_<c>.json``: one per text source of a data.mixture)
    tokenizer.json       its tokenizer
    results.json         the final meta-test
    metrics.jsonl        one row per logged step (:mod:`distmeta.training.metrics`), and tensorboard/ its event files
    checkpoints/step_*/  checkpoints (:mod:`distmeta.persistence.checkpoint`); each carries a copy of the
                         split and tokenizer files (:data:`RUN_FILES`), so one step directory is a
                         complete, movable record of the run (what Ray Tune reports as a trial checkpoint)

Import the names from here instead of spelling them::

    from distmeta.files import CONFIG_FILE
    cfg = load_config(run_dir / CONFIG_FILE)
"""
from __future__ import annotations

import os
import re
from pathlib import Path

CONFIG_FILE = "config.yaml"
RESULTS_FILE = "results.json"
SPLIT_FILE = "split.json"
TOKENIZER_FILE = "tokenizer.json"
CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
LOCK_FILE = ".distmeta.lock"

#: The run files a checkpoint step directory carries: the split (one per mixture source) and the tokenizer.
RUN_FILE_PATTERN = re.compile(r"split\.json|split_\d+\.json|tokenizer\.json")


def split_file(component: int | None = None) -> str:
    """``split.json``, or ``split_<c>.json`` for text source ``c`` of a ``data.mixture``."""
    return SPLIT_FILE if component is None else f"split_{component}.json"


def run_files(directory: str | Path) -> list[Path]:
    """The run files (:data:`RUN_FILE_PATTERN`) present in ``directory``, sorted by name.

    Args:
        directory: a run directory or a checkpoint step directory.

    Returns:
        Their paths; an empty list when there are none (sinusoid runs have no split or tokenizer).
    """
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_file() and RUN_FILE_PATTERN.fullmatch(p.name))


__all__ = [
    "CHECKPOINTS_DIR",
    "CONFIG_FILE",
    "LOCK_FILE",
    "METRICS_FILE",
    "RESULTS_FILE",
    "RUN_FILE_PATTERN",
    "SPLIT_FILE",
    "TENSORBOARD_DIR",
    "TOKENIZER_FILE",
    "run_files",
    "split_file",
]


# ---------------------------------------------------------------------- atomic writes
def fsync_dir(path: Path) -> None:
    """fsync a directory so the renames inside it survive a power cut (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (temp file in the same dir, fsync, os.replace).

    Readers see the old content or the new one, never half a file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)  # as checkpoint files (umask tightens)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
