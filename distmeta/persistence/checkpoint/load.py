"""Reading checkpoints: verify the manifest first, then deserialise exactly the bytes that were hashed.

Tensors come from safetensors (no pickle); ``optimizer.pt`` only through
``torch.load(weights_only=True)``. A run directory's damaged newest checkpoint falls back
to the previous one, loudly. A ``pyarrow.fs`` URI (``s3://bucket/run``) is fetched into the
local cache first (:mod:`distmeta.persistence.checkpoint.remote`) and read from there.
"""
from __future__ import annotations

import io
import json
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from distmeta.errors import CheckpointError
from distmeta.files import CHECKPOINTS_DIR
from distmeta.persistence.checkpoint.format import (
    DATA_FILES,
    MANIFEST_FILE,
    OPTIMIZER_FILE,
    PARAMS_FILE,
    RNG_FILE,
    STATE_FILE,
    Checkpoint,
    CheckpointFallbackWarning,
    UnsafeCheckpointError,
    _checkpoints_dir,
    _step_of,
    _verified_files,
    list_checkpoints,
)


def _load_safetensors(data: bytes, name: str, path: Path) -> dict[str, torch.Tensor]:
    """Deserialise a safetensors blob; any parse error becomes a CheckpointError naming the file."""
    from safetensors.torch import load

    try:
        tensors = dict(load(data))
    except Exception as e:  # SafetensorError and friends: never let a bad file escape untyped
        raise CheckpointError(f"checkpoint {path}: cannot read {name}: {e}") from e
    order = _saved_order(data)
    if order is not None and sorted(order) == sorted(tensors):
        tensors = {k: tensors[k] for k in order}
    return tensors


def _saved_order(data: bytes) -> list[str] | None:
    """The key order recorded at save time (safetensors itself sorts keys), or None."""
    try:
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
        order = json.loads(meta["order"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return order if isinstance(order, list) and all(isinstance(k, str) for k in order) else None


def _load_optimizer(data: bytes, path: Path, map_location: str) -> dict:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary pickles."""
    try:
        with warnings.catch_warnings():  # a foreign pickle protocol is reported below, not as noise
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"refusing to unpickle {path / OPTIMIZER_FILE}: it is not a plain weights-only optimizer state "
            f"(it may contain code to execute); the checkpoint was not written by distmeta or was tampered with. "
            f"Detail: {str(e).splitlines()[0]}"
        ) from e
    except Exception as e:
        raise CheckpointError(f"checkpoint {path}: cannot read {OPTIMIZER_FILE}: {e}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: {OPTIMIZER_FILE} holds a {type(state).__name__}, expected a dict")
    return state


def _load_state(data: bytes, path: Path) -> dict[str, Any]:
    """Parse ``state.json`` and check it agrees with the directory name."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path}: unreadable {STATE_FILE}: {e}") from e
    if not (isinstance(doc, dict) and isinstance(doc.get("step"), int)
            and isinstance(doc.get("state"), dict) and isinstance(doc.get("config"), dict)):
        raise CheckpointError(f"checkpoint {path}: {STATE_FILE} lacks step/state/config")
    dir_step = _step_of(path)
    if dir_step is not None and dir_step != doc["step"]:
        raise CheckpointError(f"checkpoint {path}: {STATE_FILE} says step {doc['step']} but the directory is step {dir_step}")
    return doc


def _load_one(path: Path, map_location: str) -> Checkpoint:
    """Verify, then deserialise, one ``step_*`` directory."""
    data = _verified_files(path, keep_bytes=True)
    doc = _load_state(data[STATE_FILE], path)
    params = _load_safetensors(data[PARAMS_FILE], PARAMS_FILE, path)
    if map_location != "cpu":
        params = {k: v.to(map_location) for k, v in params.items()}
    rng = _load_safetensors(data[RNG_FILE], RNG_FILE, path)  # RNG states stay on the CPU
    optimizer_state = _load_optimizer(data[OPTIMIZER_FILE], path, map_location)
    extra = {name: blob for name, blob in data.items() if name not in DATA_FILES}
    return Checkpoint(step=doc["step"], meta_params=params, optimizer_state=optimizer_state,
                      state=doc["state"], rng=rng, config=doc["config"], path=path, files=extra)


def _is_single_checkpoint(path: Path) -> bool:
    """A ``step_*`` directory (or anything with a manifest), as opposed to a run or checkpoints dir."""
    return (path / MANIFEST_FILE).exists() or (_step_of(path) is not None and not (path / CHECKPOINTS_DIR).is_dir())


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> Checkpoint:
    """Load a run dir's newest valid checkpoint (or a ``checkpoints/`` dir's, or one ``step_*`` dir).

    A damaged newest checkpoint is reported with a :class:`CheckpointFallbackWarning`
    and the previous one is tried; if none is usable, CheckpointError lists each one
    tried and why. A specific ``step_*`` directory is loaded as-is or not at all.

    Args:
        path: a local path, or a ``pyarrow.fs`` URI (``s3://bucket/run``, its ``checkpoints/`` or one
            ``step_*`` prefix), which is fetched into the local cache and verified there.
        map_location: where the tensors go (``cpu``, ``cuda:0``).

    Returns:
        The checkpoint; ``.path`` is the local step directory it was read from.
    """
    from distmeta.persistence.storage import is_remote

    if is_remote(path):
        from distmeta.persistence.checkpoint.remote import fetch_checkpoint

        path = fetch_checkpoint(str(path))
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: the path does not exist")
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint at {path}: expected a run directory, its checkpoints/ or a step_* directory")
    if _is_single_checkpoint(path):
        return _load_one(path, map_location)
    candidates = list(reversed(list_checkpoints(path)))
    if not candidates:
        raise CheckpointError(f"no checkpoints under {_checkpoints_dir(path)} (expected step_* directories)")
    tried: list[str] = []
    for cand in candidates:
        try:
            ckpt = _load_one(cand, map_location)
        except UnsafeCheckpointError:
            raise
        except CheckpointError as e:
            tried.append(f"  {cand}: {e}")
            warnings.warn(f"skipping unusable checkpoint {cand}: {e}; trying the previous one",
                          CheckpointFallbackWarning, stacklevel=2)
            continue
        return ckpt
    raise CheckpointError(f"no valid checkpoint under {_checkpoints_dir(path)}; tried:\n" + "\n".join(tried))


def write_run_files(ckpt: Checkpoint, run_dir: str | Path) -> list[Path]:
    """Write the split and tokenizer files a loaded checkpoint carries into ``run_dir`` (atomically each).

    What a run resumed from a step directory outside its own run directory (a Ray Tune
    trial checkpoint) needs before :func:`~distmeta.experiment.prepare_experiment`.

    Args:
        ckpt: a checkpoint from :func:`load_checkpoint` (its files were verified).
        run_dir: the run directory to complete.

    Returns:
        The paths written (none for a run without split or tokenizer, e.g. sinusoid).
    """
    from distmeta.files import write_text_atomic

    out = []
    for name, blob in sorted((ckpt.files or {}).items()):
        write_text_atomic(Path(run_dir) / name, blob.decode("utf-8"))
        out.append(Path(run_dir) / name)
    return out
