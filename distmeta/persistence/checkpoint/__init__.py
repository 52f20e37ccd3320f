"""Durable, verified checkpoints: ``RUN_DIR/checkpoints/step_00000100/``.

Each checkpoint directory holds

* ``meta_params.safetensors`` - the meta-parameters (no pickle involved),
* ``rng.safetensors``         - RNG states as uint8 tensors,
* ``optimizer.pt``            - ``torch.save`` of the optimiser state, read back ONLY
  with ``torch.load(weights_only=True)`` so a planted pickle cannot run code,
* ``state.json``              - step, trainer state and the resolved config,
* ``split.json``, ``tokenizer.json`` (``split_<c>.json`` per mixture source) - the run's
  class split and tokenizer (:data:`distmeta.files.RUN_FILE_PATTERN`), when it has them,
* ``manifest.json``           - sha256 and size of every file above, written last.

So a step directory is a complete record of the run at that step: it can be moved, or
reported to Ray Tune as the trial checkpoint as it is, and a run resumes from it alone
(``Trainer(cfg, resume_from=step_dir)``: :func:`write_run_files` puts the split and
tokenizer back into the new run directory).

On an object store (``run.dir=s3://bucket/run``) the same step directories are published
with the manifest as the commit point (:mod:`~distmeta.persistence.checkpoint.remote`).

The package: :mod:`.format` (names, manifest, verification), :mod:`.serialise` (the bytes),
:mod:`.save` (local atomic writes), :mod:`.load` (verified reads), :mod:`.remote` (object stores).

Use::

    path = save_checkpoint(run_dir, Checkpoint(step, params, opt_state, state, rng, config))
    ckpt = load_checkpoint(run_dir)      # the newest valid one; or a checkpoints/ or step_* directory

Writes are atomic: everything goes into ``checkpoints/.tmp-step_XXXXXXXX-<pid>``, is
fsynced, and the directory is renamed into place, so a reader sees a whole checkpoint
or none. Readers check the manifest before deserialising anything and fall back from
a damaged newest checkpoint to the previous valid one, loudly.

Files are written with mode 0640 and directories 0750 (less with a stricter umask):
readable by the owner's group, by nobody else. A writer holds a ``flock`` on its
temporary directory while it fills it, and the leftover clean-up skips any temporary
directory whose lock is held: it only removes those of writers that are gone. A
checkpoint that fails its checksum is never deleted: it is renamed aside to
``step_XXXXXXXX.corrupt-<UTC time>`` (ignored by readers) with a warning, for a look.
"""

from __future__ import annotations

from distmeta.persistence.checkpoint.format import (
    CORRUPT_TAG,
    DATA_FILES,
    DIR_MODE,
    FILE_MODE,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    OLD_PREFIX,
    OPTIMIZER_FILE,
    PARAMS_FILE,
    RNG_FILE,
    STATE_FILE,
    TMP_PREFIX,
    Checkpoint,
    CheckpointFallbackWarning,
    CorruptCheckpointWarning,
    UnsafeCheckpointError,
    latest_checkpoint,
    list_checkpoints,
    step_dirname,
    verify_checkpoint,
)
from distmeta.persistence.checkpoint.load import load_checkpoint, write_run_files
from distmeta.persistence.checkpoint.save import fsync_dir, keep_aside, save_checkpoint

__all__ = [
    "Checkpoint", "CheckpointFallbackWarning", "CorruptCheckpointWarning", "UnsafeCheckpointError",
    "save_checkpoint", "load_checkpoint", "verify_checkpoint", "latest_checkpoint", "list_checkpoints",
    "write_run_files", "step_dirname", "keep_aside", "fsync_dir",
    "FORMAT", "FORMAT_VERSION", "PARAMS_FILE", "RNG_FILE", "OPTIMIZER_FILE", "STATE_FILE", "MANIFEST_FILE",
    "DATA_FILES", "TMP_PREFIX", "OLD_PREFIX", "CORRUPT_TAG", "FILE_MODE", "DIR_MODE",
]
