"""Reopening a saved run for its meta-test (``distmeta eval``): the checkpoint, and a config safe to run.

A checkpoint may come from anywhere (a colleague's run, an object store), so its config
supplies the model and its tasks only; Ray, run, fault and worker settings come from the
caller's overrides over the schema defaults, and a data or model path it names must be given
again by the caller (:func:`distmeta.security.config_from_saved`) unless the caller trusts it
or the run is the caller's own: a local run directory that belongs to the caller and nobody
else can write (:func:`distmeta.security.not_yours`), whose locations only the caller chose.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from distmeta.config import Config


def open_saved_run(path: str | Path, overrides: list[str] | None = None, *,
                   trust_config: bool = False, came_from: str | None = None) -> tuple[Config, Path, Any]:
    """Load the checkpoint at ``path`` and derive the config to evaluate it with.

    Args:
        path: a run directory, its ``checkpoints/`` or one step directory; local or a URI
            (a remote one is fetched into the local cache and verified there).
        overrides: ``key=value`` settings over the schema defaults.
        trust_config: take the checkpoint's own ray/run/faults/workers settings and paths too.
        came_from: where a local copy at ``path`` was fetched from (e.g. a bucket): never your own
            run then, whoever owns the copy.
    Returns:
        ``(config, run directory, checkpoint)``; the run directory holds the split and tokenizer.
    """
    from distmeta.persistence.checkpoint import load_checkpoint, write_run_files
    from distmeta.persistence.rundir import run_dir_of
    from distmeta.persistence.storage import is_remote
    from distmeta.security import UntrustedConfigError, config_from_saved, not_yours

    ckpt = load_checkpoint(path)
    run_dir = run_dir_of(ckpt.path if is_remote(path) and ckpt.path is not None else Path(path))
    if is_remote(path):
        write_run_files(ckpt, run_dir)  # the split and tokenizer, next to the cached checkpoint
        why = f"{path} is remote storage"  # the local cache is ours; the bucket may be anyone's
    elif came_from is not None:
        why = f"{path} is a copy of {came_from}"
    else:
        why = not_yours(run_dir, ckpt.path) if ckpt.path is not None else f"{path} has no local checkpoint"
    try:
        cfg = config_from_saved(ckpt.config, list(overrides or []), trust=trust_config,
                                source=f"the config in {ckpt.path}", pins={"run.dir": str(run_dir)},
                                trust_locations=why is None)
    except UntrustedConfigError as err:
        raise UntrustedConfigError(f"{err} (not your own run: {why})") from None
    return cfg, run_dir, ckpt
