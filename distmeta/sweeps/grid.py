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
that cell alone. ``max_concurrent: 1`` with ``workers: 0`` cells runs them one after another
in this process, without Ray. A cell whose run directory already holds results for the same
resolved config is reused, so rerunning a killed grid runs only the cells it had not finished.
Written to the experiment directory: ``grid.csv``, ``grid.md`` (meta-test accuracy ± 95% CI
per cell), ``grid.json`` and ``grid.png`` (:mod:`distmeta.sweeps.grid_report`). An ``output_dir``
that is a storage URI is joined as a URI (``s3://b/grids`` -> cells in ``s3://b/grids/<name>/cells/<cell>``,
each a remote ``run.dir``); the table is written to a private local cache and uploaded next to them::

    distmeta grid --config configs/grid_sinusoid.yaml episodes=50     # run_grid(path, ["episodes=50"])
"""
from __future__ import annotations

import copy
import itertools
import json
import re
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from distmeta.config import Config, config_from_dict, dump_config, set_key
from distmeta.errors import ConfigError
from distmeta.files import CONFIG_FILE, RESULTS_FILE
from distmeta.sweeps.common import join_location, load_sweep, one_line, sweep_error

WHAT = "grid config"
RAY_LOG_FILE = "grid.log"


class GridSpec(BaseModel):
    """A whole grid: ``configs/grid_*.yaml``. Field names are the YAML keys."""

    model_config = ConfigDict(extra="forbid")

    base: str | dict[str, Any]
    overrides: list[str] = []
    name: str = "grid"
    output_dir: str = "runs/grid"
    axes: dict[str, list[Any]] = Field(min_length=1)
    episodes: int | None = Field(None, ge=2, description="meta-test episodes per cell (default base eval.episodes)")
    plot: bool = True
    max_concurrent: int | None = Field(None, ge=1, description="cells at once (default: as many as fit the cluster)")
    driver_cpus: float = Field(1.0, ge=0, description="CPUs of a cell's driver process (0: none reserved)")
    driver_gpus: float = Field(0.0, ge=0)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"

    @field_validator("axes")
    @classmethod
    def _non_empty(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"axis {key!r} has no values")
            if len({json.dumps(x, sort_keys=True, default=str) for x in values}) != len(values):
                raise ValueError(f"axis {key!r} repeats a value: {values}")
        return v


class Cell:
    """One combination of axis values and its resolved config."""

    def __init__(self, values: dict[str, Any], cfg: Config) -> None:
        self.values, self.cfg = values, cfg

    @property
    def name(self) -> str:
        """``ways=3_shots=1``: the cell's directory name under ``cells/``."""
        parts = []
        for key, value in self.values.items():
            if isinstance(value, (list, tuple)):
                text = "-".join(str(x) for x in value)
            else:
                text = value if isinstance(value, (str, int, float)) else json.dumps(value, sort_keys=True)
            text = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-")
            parts.append(f"{key.split('.')[-1]}={text}")
        return "_".join(parts)[:120]

    @property
    def setting(self) -> tuple[int, int]:
        """The (ways, shots) the cell is meta-tested on (``(1, shots)`` for sinusoid)."""
        d = self.cfg.data
        return (1, d.shots) if d.is_regression else (d.ways, d.shots)


class Grid:
    """A validated grid: its spec and every cell's resolved config."""

    def __init__(self, spec: GridSpec, cells: list[Cell], where: str) -> None:
        self.spec, self.cells, self.where = spec, cells, where

    @property
    def experiment(self) -> str:
        """``output_dir/name``: where the cells and the table go, a local path or a storage URI."""
        return join_location(self.spec.output_dir, self.spec.name)

    @property
    def experiment_path(self) -> Path:
        """The local directory the table and plot are written to: the experiment directory, or for a
        storage URI its private local cache (:func:`~distmeta.runtime.storage.cache_dir`), uploaded by
        :func:`run_grid`."""
        from distmeta.runtime.storage import cache_dir, is_remote

        return cache_dir(self.experiment, "grids") if is_remote(self.experiment) else Path(self.experiment)


def _cell_raw(base_raw: dict[str, Any], values: dict[str, Any], spec: GridSpec, where: str) -> dict[str, Any]:
    raw = copy.deepcopy(base_raw)
    for key, value in values.items():
        try:
            raw = set_key(raw, key, value)
        except ConfigError as err:
            raise sweep_error(WHAT, where, f"axes.{key}: {err}") from None
    try:
        probe: Config | None = config_from_dict(raw)
    except ConfigError:
        probe = None  # reported below, with the cell's values
    if probe is not None and not probe.data.is_regression:
        raw = set_key(raw, "eval.settings", [[probe.data.ways, probe.data.shots]])  # the cell's own setting
    if spec.episodes is not None:
        raw = set_key(raw, "eval.episodes", spec.episodes)
    return set_key(raw, "run.progress", False)


def load_grid(path: str | Path | dict[str, Any], overrides: list[str] | None = None) -> Grid:
    """Read and check a grid YAML and every cell's config before anything runs; errors name the key.

    Args:
        path: the YAML file, or its content as a mapping.
        overrides: ``key=value``; a grid key (``name=...``, ``episodes=...``) changes the grid,
            any other key its base config.

    Returns:
        The validated :class:`Grid`.
    """
    spec, base_raw, where = load_sweep(path, overrides, GridSpec, WHAT)
    exp = join_location(spec.output_dir, spec.name)
    cells: list[Cell] = []
    keys = list(spec.axes)
    for combo in itertools.product(*(spec.axes[k] for k in keys)):
        values = dict(zip(keys, combo))
        raw = _cell_raw(base_raw, values, spec, where)
        try:
            cfg = config_from_dict(raw)
        except ConfigError as err:
            what = ", ".join(f"{k}={v!r}" for k, v in values.items())
            raise sweep_error(WHAT, where, f"axes: the cell {what}: {one_line(err)}") from None
        cell = Cell(values, cfg)
        cell.cfg = config_from_dict(set_key(raw, "run.dir", join_location(exp, "cells", cell.name)))
        cells.append(cell)
    if len({c.name for c in cells}) != len(cells):
        raise sweep_error(WHAT, where, "axes: two cells get the same name; make the values distinct")
    grid = Grid(spec, cells, where)
    _check_trials(grid)
    return grid


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
    from distmeta.runtime.storage import StorageError, is_remote, open_store

    run = cell.cfg.run.dir
    try:
        if is_remote(run):
            from distmeta.runtime.lease import current_generation

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


def in_process(grid: Grid, cells: list[Cell] | None = None) -> bool:
    """Whether the cells run one after another in this process, without Ray: ``max_concurrent: 1``, all ``workers: 0``."""
    cells = grid.cells if cells is None else cells
    return grid.spec.max_concurrent == 1 and all(c.cfg.workers == 0 for c in cells)


def _check_trials(grid: Grid) -> None:
    """Cells that cannot be sized as Tune trials: ``workers: auto``, or a ``workers: 0`` cell without a driver bundle."""
    if in_process(grid):
        return
    spec = grid.spec
    for cell in grid.cells:
        if cell.cfg.workers == "auto":
            raise sweep_error(WHAT, grid.where, f"the cell {cell.name}: workers=auto cannot size its trial; "
                                                "give workers an integer")
        if cell.cfg.workers == 0 and spec.driver_cpus == 0 and spec.driver_gpus == 0:
            raise sweep_error(WHAT, grid.where, f"driver_cpus: the cell {cell.name} has workers=0, so it trains "
                                                "in its driver, which needs driver_cpus > 0")


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
        check_fits(pgf.bundles, res.strategy, cell.cfg, f"the cell {cell.name}",
                   "lower driver_cpus, workers or cpus_per_worker / gpus_per_worker (fractions are fine, "
                   "e.g. cpus_per_worker=0.5)")


def _run_here(cells: list[Cell]) -> dict[str, dict[str, Any]]:
    """``workers: 0`` cells one after another in this process (no Ray)."""
    from distmeta.runtime.driver import Trainer

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
    from distmeta.runtime.ray import session as ray_session
    from distmeta.sweeps.grid_tune import run_cell_trials
    from distmeta.sweeps.output import RayLog

    session = ray_session.connect(cells[0].cfg)
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
    from distmeta.runtime.storage import redact_uri

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
    from distmeta.runtime.storage import is_remote, open_store, redact_uri
    from distmeta.sweeps.grid_report import PLOT_FILE, plot, write_table

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
