"""Sweeps: many meta-training runs from one YAML file.

* :mod:`.tune` - Ray Tune searches (``distmeta tune``, ``configs/tune_*.yaml``): ASHA, PBT or
  FIFO over a search space, each trial a distributed run in its own placement group
  (:mod:`.search` reads and checks the file, :mod:`.trial` is one trial);
* :mod:`.grid` - grids over task-distribution settings (``distmeta grid``,
  ``configs/grid_*.yaml``): every cell meta-trained and meta-tested, one table and plot
  (:mod:`.grid_spec` reads the file into cells, :mod:`.grid_tune` runs them as trials,
  :mod:`.grid_report` writes the table and plot);
* :mod:`.shared_replicas` - the actor pool runs borrow one after another; :mod:`.fit` - the check
  that one trial or cell fits the cluster before anything starts; :mod:`.common` - reading
  a sweep file and its base config.

They sit above the training layer and use its public interfaces
(:class:`~distmeta.training.trainer.Trainer` with a ``backend_factory`` and ``resume_from``,
:mod:`distmeta.training.backend`), and of the distribution layer only what a search must
know before any run starts: the Ray session and whether a trial's actors fit::

    from distmeta.sweeps import run_grid, run_search
    run_search("configs/tune_sinusoid_asha.yaml", ["num_samples=3", "train.steps=40"])
"""
from __future__ import annotations

from typing import Any


def run_search(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """:func:`distmeta.sweeps.tune.run_search` (imported on first use: it needs Ray)."""
    from distmeta.sweeps.tune import run_search as run

    return run(*args, **kwargs)


def run_grid(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """:func:`distmeta.sweeps.grid.run_grid`."""
    from distmeta.sweeps.grid import run_grid as run

    return run(*args, **kwargs)


__all__ = ["run_grid", "run_search"]
