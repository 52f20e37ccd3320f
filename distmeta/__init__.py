"""distmeta: distributed meta-learning for few-shot NLP.

The front door::

    import distmeta
    cfg = distmeta.load_config("configs/default.yaml", ["train.steps=100"])
    with distmeta.Trainer(cfg) as trainer:
        trainer.fit()
        trainer.evaluate(episodes=600)
    ckpt = distmeta.load_checkpoint("runs/default")   # .step, .meta_params
    distmeta.run_search("configs/tune_sinusoid_asha.yaml")   # a Ray Tune search (distmeta.sweeps.tune)
    distmeta.run_grid("configs/grid_sinusoid.yaml")          # a grid of runs (distmeta.sweeps.grid)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from distmeta._versions import __version__, check_floors

check_floors()  # before anything else: the weights-only and token-auth promises need these versions

from distmeta.config import Config, load_config  # noqa: E402
from distmeta.errors import (  # noqa: E402
    CheckpointError,
    ConfigError,
    DataError,
    DistmetaError,
    RunDirError,
)

if TYPE_CHECKING:
    from distmeta.persistence.checkpoint import Checkpoint
    from distmeta.training.trainer import Trainer
    from distmeta.worker import Worker


def load_checkpoint(path: str) -> "Checkpoint":
    """The newest valid checkpoint of a run directory (or one ``step_*`` dir): ``.step``, ``.meta_params``."""
    from distmeta.persistence.checkpoint import load_checkpoint as _load

    return _load(path)


def __getattr__(name: str) -> Any:
    # Heavy modules (torch, datasets) load on first use, keeping `import distmeta` light.
    if name == "Trainer":
        from distmeta.training.trainer import Trainer

        return Trainer
    if name == "Worker":
        from distmeta.worker import Worker

        return Worker
    if name in ("run_search", "run_grid"):
        from distmeta import sweeps

        return getattr(sweeps, name)
    raise AttributeError(f"module 'distmeta' has no attribute {name!r}")


__all__ = [
    "Config", "load_config", "load_checkpoint", "Trainer", "Worker", "run_search", "run_grid",
    "DistmetaError", "ConfigError", "DataError", "CheckpointError", "RunDirError", "__version__",
]
