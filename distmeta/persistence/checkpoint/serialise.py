"""Checkpoint contents as bytes: built in memory first, so bad input fails before any storage is touched.

The optimiser state is checked to be what ``torch.load(weights_only=True)`` reads back;
tensors go to safetensors with their key order in the header metadata.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from distmeta.errors import CheckpointError
from distmeta.files import RUN_FILE_PATTERN, run_files
from distmeta.persistence.checkpoint.format import (
    OPTIMIZER_FILE,
    PARAMS_FILE,
    RNG_FILE,
    STATE_FILE,
    Checkpoint,
)

_PLAIN = (bool, int, float, complex, str, bytes, type(None), torch.Tensor, torch.dtype, torch.device)


def _check_weights_only(obj: Any, where: str) -> None:
    """Refuse at save time what ``torch.load(weights_only=True)`` would refuse at load time."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_weights_only(k, where)
            _check_weights_only(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_weights_only(v, f"{where}[{i}]")
    elif not isinstance(obj, _PLAIN):
        raise CheckpointError(
            f"cannot checkpoint {where}: a {type(obj).__module__}.{type(obj).__qualname__} would not load back "
            f"with weights_only=True (use tensors, numbers, strings, lists and dicts)"
        )


def _tensor_blob(tensors: dict[str, torch.Tensor], what: str) -> bytes:
    """safetensors bytes of detached, contiguous CPU copies (copies: shared storage is not allowed).

    The key order goes into the header metadata so loading gives the dict back as saved.
    """
    from safetensors.torch import save

    for k, v in tensors.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"cannot checkpoint {what}[{k!r}]: a {type(v).__name__}, expected a torch.Tensor")
    try:
        return save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()},
                    metadata={"order": json.dumps(list(tensors))})
    except Exception as e:
        raise CheckpointError(f"cannot serialise {what}: {e}") from e


def serialise(ckpt: Checkpoint, run_dir: Path) -> dict[str, bytes]:
    """Every file's bytes, built in memory first so bad input fails before the disk is touched.

    The run files are ``ckpt.files``, or (when None) those of ``run_dir``.
    """
    if not isinstance(ckpt.step, int) or ckpt.step < 0:
        raise CheckpointError(f"cannot checkpoint step {ckpt.step!r}: expected a non-negative int")
    _check_weights_only(ckpt.optimizer_state, "optimizer_state")
    buf = io.BytesIO()
    torch.save(ckpt.optimizer_state, buf)
    try:
        state = json.dumps({"step": ckpt.step, "state": ckpt.state, "config": ckpt.config}, indent=1, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot checkpoint step {ckpt.step}: state/config are not JSON-serialisable: {e}") from e
    extra = ckpt.files if ckpt.files is not None else {p.name: p.read_bytes() for p in run_files(run_dir)}
    bad = [name for name in extra if not RUN_FILE_PATTERN.fullmatch(name)]
    if bad:
        raise CheckpointError(f"cannot checkpoint files {bad}: a checkpoint carries only {RUN_FILE_PATTERN.pattern}")
    return {
        PARAMS_FILE: _tensor_blob(ckpt.meta_params, "meta_params"),
        RNG_FILE: _tensor_blob(ckpt.rng, "rng"),
        OPTIMIZER_FILE: buf.getvalue(),
        STATE_FILE: state.encode("utf-8"),
        **extra,
    }
