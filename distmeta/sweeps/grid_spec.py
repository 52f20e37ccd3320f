"""A grid's YAML (``configs/grid_*.yaml``) read into its cells, each a complete, validated run config.

The running of the cells and their table live in :mod:`distmeta.sweeps.grid` and
:mod:`distmeta.sweeps.grid_report`.
"""
from __future__ import annotations

import copy
import itertools
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from distmeta.config import Config, config_from_dict, set_key
from distmeta.errors import ConfigError
from distmeta.sweeps.common import join_location, load_sweep, one_line, sweep_error

WHAT = "grid config"


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
        storage URI its private local cache (:func:`~distmeta.persistence.storage.cache_dir`), uploaded by
        :func:`run_grid`."""
        from distmeta.persistence.storage import cache_dir, is_remote

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


def in_process(grid: Grid, cells: list[Cell] | None = None) -> bool:
    """Whether the cells run one after another in this process, without Ray.

    That is ``max_concurrent: 1`` with every cell at ``resources.workers: 0``.
    """
    cells = grid.cells if cells is None else cells
    return grid.spec.max_concurrent == 1 and all(c.cfg.resources.workers == 0 for c in cells)


def _check_trials(grid: Grid) -> None:
    """Refuse cells that cannot be sized as Tune trials.

    Those are ``resources.workers: auto``, and a ``resources.workers: 0`` cell without a driver bundle.
    """
    if in_process(grid):
        return
    spec = grid.spec
    for cell in grid.cells:
        if cell.cfg.resources.workers == "auto":
            raise sweep_error(WHAT, grid.where, f"the cell {cell.name}: resources.workers=auto cannot size its "
                                                "trial; give resources.workers an integer")
        if cell.cfg.resources.workers == 0 and spec.driver_cpus == 0 and spec.driver_gpus == 0:
            raise sweep_error(WHAT, grid.where, f"driver_cpus: the cell {cell.name} has resources.workers=0, "
                                                "so it trains in its driver, which needs driver_cpus > 0")
