"""A grid's cells as concurrent Ray Tune trials, each in a placement group of its own.

Every cell that has to run becomes one trial of a Tune grid search over the cell names.
A trial's placement group is the one a Tune trial of :mod:`distmeta.sweeps.trial` gets,
``[driver_cpus CPU] + workers x [cpus_per_worker CPU, gpus_per_worker GPU]``
(:func:`~distmeta.sweeps.trial.trial_resources`, sized per cell), and its Ray backend puts
the cell's actors in that group's worker bundles; a ``resources.workers: 0`` cell trains inside its
trial's process. As many trials run at once as ``max_concurrent`` allows, by default as
many placement groups as fit the cluster side by side
(:func:`~distmeta.sweeps.fit.copies_that_fit`).

A trial runs the cell's config exactly as ``distmeta train`` would (same working directory,
same ``run.dir``, the Trainer of the runtime), so its result is the one of that cell alone;
it reports the results, its start and end times (``time.time()``) and where its actors ran::

    rows = run_cell_trials(cells, GridResources(driver_cpus=1.0), max_concurrent=None, storage=exp_dir)
"""
from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distmeta.config import Config
from distmeta.errors import DistmetaError

CELL_KEY = "cell"
TUNE_DIR = "tune"


@dataclass(frozen=True)
class GridResources:
    """What each cell's trial reserves besides its workers' bundles, and how the group is placed."""

    driver_cpus: float = 1.0
    driver_gpus: float = 0.0
    strategy: str = "PACK"

    def pgf(self, cfg: Config) -> Any:
        """The cell's ``PlacementGroupFactory`` (:func:`~distmeta.sweeps.trial.trial_resources`)."""
        from distmeta.sweeps.trial import trial_resources

        return trial_resources(cfg, self.driver_cpus, self.driver_gpus, self.strategy)


def _cell_pgf(resources: GridResources, cfgs: dict[str, Config], config: dict[str, Any]) -> Any:
    return resources.pgf(cfgs[config[CELL_KEY]])


def cell_trainable(config: dict[str, Any], cfgs: dict[str, Config] | None = None, cwd: str = "") -> None:
    """The Tune function trainable of one grid cell: ``Trainer(cell config).fit()``, reported once.

    Args:
        config: ``{"cell": the cell's name}``.
        cfgs: every cell's resolved config, by name.
        cwd: the directory the grid was started in: relative paths in a cell's config (``run.dir``,
            file data sources) mean what they mean for ``distmeta train`` run there.
    """
    from ray import tune

    from distmeta.sweeps.shared_replicas import PROCESS_POOL
    from distmeta.training.trainer import Trainer

    name = config[CELL_KEY]
    cfg = (cfgs or {})[name]
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)  # Tune starts a trial in its own trial directory
    started = time.time()
    with Trainer(cfg, overwrite=True, backend_factory=PROCESS_POOL.factory) as trainer:
        results = trainer.fit()
    ended = time.time()
    tune.report({CELL_KEY: name, "started": started, "ended": ended, "node": _node_id(),
                 "results_json": json.dumps(results, default=str), **PROCESS_POOL.placement()})


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def default_concurrency(cfgs: list[Config], resources: GridResources) -> int:
    """How many cells fit the connected cluster side by side: copies of the biggest cell's group (at least 1)."""
    from distmeta.sweeps.fit import copies_that_fit, node_resources, total

    groups = [resources.pgf(c).bundles for c in cfgs]
    biggest = max(groups, key=lambda b: (total(b).get("GPU", 0.0), total(b).get("CPU", 0.0)))
    return max(1, min(len(cfgs), copies_that_fit(biggest, resources.strategy, node_resources(), limit=len(cfgs))))


def run_cell_trials(cells: dict[str, Config], resources: GridResources, max_concurrent: int | None,
                    storage: str | Path) -> dict[str, dict[str, Any]]:
    """Run the cells as Tune trials on the connected Ray, at most ``max_concurrent`` at once.

    Args:
        cells: the cells to run, by name, with their resolved configs.
        resources: each trial's driver bundle and placement strategy.
        max_concurrent: the most trials at once; None: :func:`default_concurrency`.
        storage: the grid's experiment directory, a path or a storage URI (Tune's files go to ``storage/tune``).

    Returns:
        Per cell name: ``{"results": the run's results, "started", "ended": epoch seconds, "node",
        "ray_workers", "workers_in_trial_pg", "max_concurrent"}``.

    Raises:
        DistmetaError: a cell failed; the cells that finished are kept (a rerun reuses them).
    """
    from ray import tune

    from distmeta.persistence.storage import is_remote

    cfgs = dict(cells)
    storage_path = str(storage) if is_remote(storage) else str(Path(storage).resolve())
    limit = max_concurrent or default_concurrency(list(cfgs.values()), resources)
    print(f"[grid] {len(cfgs)} cells as Ray Tune trials, {limit} at a time", flush=True)
    fn = tune.with_parameters(cell_trainable, cfgs=cfgs, cwd=os.getcwd())
    fn = tune.with_resources(fn, functools.partial(_cell_pgf, resources, cfgs))
    tuner = tune.Tuner(
        fn, param_space={CELL_KEY: tune.grid_search(list(cfgs))},
        tune_config=tune.TuneConfig(max_concurrent_trials=limit, reuse_actors=True,
                                    trial_dirname_creator=lambda t: f"{t.config[CELL_KEY][:80]}_{t.trial_id}"),
        run_config=tune.RunConfig(name=TUNE_DIR, storage_path=storage_path, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    out: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    for result in tuner.fit():
        name = (result.config or {}).get(CELL_KEY, "?")
        metrics = result.metrics or {}
        if result.error is not None or "results_json" not in metrics:
            failed.append(f"{name}: {str(result.error).strip().splitlines()[-1][:300] if result.error else 'no result'}")
            continue
        out[name] = {"results": json.loads(metrics["results_json"]), "max_concurrent": limit,
                     **{k: metrics.get(k) for k in ("started", "ended", "node", "ray_workers", "workers_in_trial_pg")}}
    if failed:
        raise DistmetaError(f"{len(failed)} of {len(cfgs)} grid cells failed ({'; '.join(failed)}); the "
                            f"{len(out)} that finished are kept: rerun the grid to run only the rest")
    return out


__all__ = ["CELL_KEY", "GridResources", "cell_trainable", "default_concurrency", "run_cell_trials"]
