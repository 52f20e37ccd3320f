"""Grids over task-distribution settings: one short meta-training + meta-test per cell, one table.

A grid is described by a YAML file (``configs/grid_*.yaml``)::

    base: maml_icd10cm.yaml            # a distmeta config (path relative to this file) or a mapping
    overrides: [train.steps=300]
    name: ways_shots
    output_dir: runs/grid              # experiment directory = output_dir/name (or s3://bucket/grids)
    axes:                              # the cells are every combination, in this order
      data.ways: [3, 5]
      data.shots: [1, 5]

Each cell trains the base config with the cell's values (``run.dir`` = ``cells/<cell>``), meta-tested
on its own setting (``eval.settings`` = the cell's ways/shots; sinusoid: MSE). The cells run as concurrent Ray
Tune trials (:mod:`distmeta.sweeps.grid_tune`), each in a placement group of its own
(``[driver_cpus] + workers x [cpus_per_worker, gpus_per_worker]``), ``max_concurrent`` at a
time (default: as many as fit the cluster), after a check that every cell fits it. Each
trial runs the cell's config as ``distmeta train`` would, so a cell's result is the one of
that cell alone. ``max_concurrent: 1`` with ``resources.workers: 0`` cells runs them one after another
in this process, without Ray. A cell whose run directory already holds results for the same
resolved config is reused, so rerunning a killed grid runs only the cells it had not finished.
Written to the experiment directory: ``grid.csv``, ``grid.md`` (meta-test accuracy ± 95% CI
per cell), ``grid.json`` and ``grid.png`` (:mod:`distmeta.sweeps.grid_report`). An ``output_dir``
that is a storage URI is joined as a URI (``s3://b/grids`` -> cells in ``s3://b/grids/<name>/cells/<cell>``,
each a remote ``run.dir``); the table is written to a private local cache and uploaded next to them::

    distmeta grid --config configs/grid_sinusoid.yaml episodes=50     # run_grid(path, ["episodes=50"])
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from distmeta.config import dump_config
from distmeta.files import CONFIG_FILE, RESULTS_FILE
from distmeta.sweeps.grid_report import PLOT_FILE, plot, write_table
from distmeta.sweeps.grid_spec import Cell, Grid, GridSpec, in_process, load_grid

__all__ = ["Cell", "Grid", "GridSpec", "in_process", "load_grid", "run_grid", "run_cells"]

RAY_LOG_FILE = "grid.log"


def _cell_result(cell: Cell, results: dict[str, Any], run: dict[str, Any] | None, cached: bool) -> dict[str, Any]:
    """One table row; ``run`` is how the cell ran (``started``/``ended`` epoch seconds, ``node``...), None if reused."""
    ways, shots = cell.setting
    name, r = next(iter(results["test"].items()))  # the cell's own setting: the only one evaluated
    row: dict[str, Any] = {**cell.values, "cell": cell.name, "setting": name, "ways": ways, "shots": shots}
    if "accuracy" in r:
        row.update(metric="accuracy", value=r["accuracy"], ci95=r["ci95"])
    else:
        row.update(metric="mse", value=r["loss"], ci95=r["loss_ci95"])
    before = results.get("before_meta_training", {}).get(name)
    if before:
        row["before"] = before.get("accuracy", before.get("loss"))
    run = run or {}
    seconds = run["ended"] - run["started"] if run.get("started") is not None else None
    row.update(episodes=int(r.get("episodes", 0)), steps=results.get("step"),
               seconds=None if seconds is None else round(seconds, 2), cached=cached,
               **{k: run.get(k) for k in ("started", "ended", "node", "max_concurrent", "ray_workers",
                                          "workers_in_trial_pg")})
    return row


def _cached(cell: Cell) -> dict[str, Any] | None:
    from distmeta.persistence.storage import StorageError, is_remote, open_store

    run = cell.cfg.run.dir
    try:
        if is_remote(run):
            from distmeta.persistence.lease import current_generation

            store = current_generation(open_store(run, check=False))  # the cell's run as its readers see it
            read = lambda name: store.read_bytes(name).decode("utf-8")  # noqa: E731
        else:
            read = lambda name: (Path(run) / name).read_text()  # noqa: E731
        if read(CONFIG_FILE) == dump_config(cell.cfg):
            return json.loads(read(RESULTS_FILE))
    except (OSError, ValueError, StorageError):
        return None
    return None


def resources(spec: GridSpec) -> Any:
    """Each cell's trial reservation besides its workers (:class:`~distmeta.sweeps.grid_tune.GridResources`)."""
    from distmeta.sweeps.grid_tune import GridResources

    return GridResources(spec.driver_cpus, spec.driver_gpus, spec.placement_strategy)


def check_cells_fit(grid: Grid) -> None:
    """Fail before the first cell when a cell's trial placement group can never fit the Ray cluster."""
    from distmeta.sweeps.fit import check_fits

    res, seen = resources(grid.spec), set()
    for cell in grid.cells:
        pgf = res.pgf(cell.cfg)
        key = tuple(tuple(sorted(b.items())) for b in pgf.bundles)
        if key in seen:
            continue
        seen.add(key)
        check_fits(pgf.bundles, res.strategy, cell.cfg.ray, f"the cell {cell.name}",
                   "lower driver_cpus, resources.workers or resources.cpus_per_worker / gpus_per_worker "
                   "(fractions are fine, e.g. resources.cpus_per_worker=0.5)")


def _run_here(cells: list[Cell]) -> dict[str, dict[str, Any]]:
    """``resources.workers: 0`` cells one after another in this process (no Ray)."""
    from distmeta.training.trainer import Trainer

    out = {}
    for i, cell in enumerate(cells):
        print(f"[grid] cell {i + 1}/{len(cells)}: {cell.name}", flush=True)
        started = time.time()
        with Trainer(cell.cfg, overwrite=True) as trainer:
            results = trainer.fit()
        out[cell.name] = {"results": results, "started": started, "ended": time.time(), "max_concurrent": 1}
    return out


def _run_trials(grid: Grid, cells: list[Cell]) -> dict[str, dict[str, Any]]:
    """The cells as concurrent Ray Tune trials on the connected (or a private) Ray."""
    from distmeta.distributed import session as ray_session
    from distmeta.sweeps.grid_tune import run_cell_trials
    from distmeta.sweeps.output import RayLog

    session = ray_session.connect(cells[0].cfg.ray)
    try:
        check_cells_fit(Grid(grid.spec, cells, grid.where))
        log = grid.experiment_path / RAY_LOG_FILE  # the trials' own output and Ray's, out of the terminal
        print(f"[grid] {len(cells)} cells as Ray Tune trials; their output and Ray's: {log}", flush=True)
        with RayLog(log):
            try:
                return run_cell_trials({c.name: c.cfg for c in cells}, resources(grid.spec),
                                       grid.spec.max_concurrent, grid.experiment)
            finally:
                session.close()  # Ray's last (deduplicated) lines come out at shutdown: into the log too
    finally:
        session.close()


def run_cells(grid: Grid) -> list[dict[str, Any]]:
    """Train and meta-test every cell not finished yet (concurrently, see the module); one row per cell, in order."""
    cached = {c.name: r for c in grid.cells if (r := _cached(c)) is not None}
    todo = [c for c in grid.cells if c.name not in cached]
    from distmeta.persistence.storage import redact_uri

    for cell in grid.cells:
        if cell.name in cached:
            print(f"[grid] {cell.name}: reused {redact_uri(cell.cfg.run.dir)}", flush=True)
    ran = {} if not todo else _run_here(todo) if in_process(grid, todo) else _run_trials(grid, todo)
    rows = []
    for cell in grid.cells:
        if cell.name in cached:
            rows.append(_cell_result(cell, cached[cell.name], None, True))
        else:
            rows.append(_cell_result(cell, ran[cell.name]["results"], ran[cell.name], False))
    return rows


def run_grid(path: str | Path | dict[str, Any], overrides: list[str] | None = None) -> dict[str, Any]:
    """Validate the grid, run its cells, write the table (and plot), print the Markdown table.

    Returns:
        ``{"rows": one dict per cell, "files": {"csv", "md", "json"[, "png"]: Path}, "experiment": Path}``
        (local paths; for a storage URI ``output_dir`` the files are uploaded to :attr:`Grid.experiment` too).
    """
    from distmeta.persistence.storage import is_remote, open_store, redact_uri

    grid = load_grid(path, overrides)
    rows = run_cells(grid)
    out = grid.experiment_path
    files = write_table(grid, rows, out)
    if grid.spec.plot:
        files["png"] = plot(grid, rows, out / PLOT_FILE)
    print(files["md"].read_text(), flush=True)
    print(f"wrote {', '.join(str(p) for p in files.values())}", flush=True)
    if is_remote(grid.experiment):  # next to the cells
        store = open_store(grid.experiment, check=False)
        for local in files.values():
            store.upload(local, local.name)
        print(f"uploaded them to {redact_uri(grid.experiment)}", flush=True)
    return {"rows": rows, "files": files, "experiment": out}


__all__ = ["Cell", "Grid", "GridSpec", "check_cells_fit", "in_process", "load_grid", "resources", "run_cells", "run_grid"]
