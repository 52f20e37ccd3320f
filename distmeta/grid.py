"""Grids over task-distribution settings: one short meta-training + meta-test per cell, one table.

A grid is described by a YAML file (``configs/grid_*.yaml``)::

    base: maml_icd10cm.yaml            # a distmeta config (path relative to this file) or a mapping
    overrides: [train.steps=300]
    name: ways_shots
    output_dir: runs/grid              # experiment directory = output_dir/name
    axes:                              # the cells are every combination, in this order
      data.ways: [3, 5]
      data.shots: [1, 5]

Each cell trains the base config with the cell's values (``run.dir`` = ``cells/<cell>``)
and is meta-tested on its own N-way K-shot setting (``eval.settings`` follows the
cell's ``data.ways``/``data.shots``; sinusoid cells report MSE). Cells run one after
another; with ``workers: N`` they share one pool of N Ray actors, rebuilt per cell. A
cell whose run directory already holds results for the same resolved config is reused,
so a killed grid continues where it stopped. Written to the experiment directory:
``grid.csv``, ``grid.md`` (meta-test accuracy ± 95% CI per cell), ``grid.json`` and
``grid.png``.
"""
from __future__ import annotations

import copy
import csv
import io
import itertools
import json
import re
import time
from pathlib import Path
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from distmeta.config import Config, apply_overrides, config_from_dict, dump_config, read_yaml
from distmeta.errors import ConfigError

CSV_FILE, MD_FILE, JSON_FILE, PLOT_FILE = "grid.csv", "grid.md", "grid.json", "grid.png"


class GridSpec(BaseModel):
    """A whole grid: ``configs/grid_*.yaml``. Field names are the YAML keys."""

    model_config = ConfigDict(extra="forbid")

    base: Union[str, dict[str, Any]]
    overrides: list[str] = []
    name: str = "grid"
    output_dir: str = "runs/grid"
    axes: dict[str, list[Any]] = Field(min_length=1)
    episodes: int | None = Field(None, ge=2, description="meta-test episodes per cell (default base eval.episodes)")
    plot: bool = True

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
        d = self.cfg.data
        return (1, d.shots) if d.is_regression else (d.ways, d.shots)


class Grid:
    def __init__(self, spec: GridSpec, cells: list[Cell], where: str) -> None:
        self.spec, self.cells, self.where = spec, cells, where

    @property
    def experiment_path(self) -> Path:
        return Path(self.spec.output_dir) / self.spec.name


def _set(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    from distmeta.tune import set_path

    return set_path(raw, key, value)


def load_grid(path: str | Path | dict[str, Any], overrides: list[str] | None = None) -> Grid:
    """Read and check a grid YAML and every cell's config before anything runs; errors name the key.

    ``overrides`` apply to the grid when the key is a grid key (``axes.data.ways=[3]`` is
    not: use ``name=...``, ``episodes=...``), otherwise to the base config.
    """
    if isinstance(path, dict):
        raw, where, root = copy.deepcopy(path), "<mapping>", Path.cwd()
    else:
        raw, where, root = read_yaml(path), str(path), Path(path).resolve().parent
    grid_over = [o for o in overrides or [] if o.split("=", 1)[0].split(".")[0] in GridSpec.model_fields]
    base_over = [o for o in overrides or [] if o not in grid_over]
    raw = apply_overrides(raw, grid_over)
    try:
        spec = GridSpec.model_validate(raw)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"]) or "<grid config>"
            if e["type"] == "extra_forbidden":
                import difflib

                near = difflib.get_close_matches(str(e["loc"][-1]), list(GridSpec.model_fields), n=1, cutoff=0.6)
                lines.append(f"unknown grid config key {loc!r}" + (f"; did you mean {near[0]!r}?" if near else ""))
            else:
                lines.append(f"{loc}: {e['msg'].removeprefix('Value error, ')}")
        raise ConfigError(f"invalid grid config {where}:\n  " + "\n  ".join(lines)) from None
    if isinstance(spec.base, str):
        base_path = Path(spec.base)
        if not base_path.is_absolute() and (root / base_path).exists():
            base_path = root / base_path
        base_raw = read_yaml(base_path)
    else:
        base_raw = spec.base
    base_raw = apply_overrides(base_raw, [*spec.overrides, *base_over])
    try:
        config_from_dict(base_raw)
    except ConfigError as err:
        raise ConfigError(f"invalid grid config {where}:\n  base: {err}") from None

    exp = Path(spec.output_dir) / spec.name
    cells: list[Cell] = []
    keys = list(spec.axes)
    for combo in itertools.product(*(spec.axes[k] for k in keys)):
        values = dict(zip(keys, combo))
        cell_raw = copy.deepcopy(base_raw)
        for key, value in values.items():
            try:
                cell_raw = _set(cell_raw, key, value)
            except ConfigError as err:
                raise ConfigError(f"invalid grid config {where}:\n  axes.{key}: {err}") from None
        probe = config_from_dict_or_none(cell_raw)
        if probe is not None and not probe.data.is_regression:
            # Meta-test the cell on its own N-way K-shot setting.
            cell_raw = _set(cell_raw, "eval.settings", [[probe.data.ways, probe.data.shots]])
        if spec.episodes is not None:
            cell_raw = _set(cell_raw, "eval.episodes", spec.episodes)
        cell_raw = _set(cell_raw, "run.progress", False)
        try:
            cfg = config_from_dict(cell_raw)
        except ConfigError as err:
            detail = str(err).removeprefix("invalid config:\n  ").replace("\n  ", "; ")
            what = ", ".join(f"{k}={v!r}" for k, v in values.items())
            raise ConfigError(f"invalid grid config {where}:\n  axes: the cell {what}: {detail}") from None
        cell = Cell(values, cfg)
        cell.cfg = config_from_dict(_set(cell_raw, "run.dir", str(exp / "cells" / cell.name)))
        cells.append(cell)
    if len({c.name for c in cells}) != len(cells):
        raise ConfigError(f"invalid grid config {where}:\n  axes: two cells get the same name; make the values distinct")
    return Grid(spec, cells, where)


def config_from_dict_or_none(raw: dict[str, Any]) -> Config | None:
    try:
        return config_from_dict(raw)
    except ConfigError:
        return None


def _cell_result(cell: Cell, results: dict[str, Any], seconds: float, cached: bool) -> dict[str, Any]:
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
    row.update(episodes=int(r.get("episodes", 0)), steps=results.get("step"), seconds=round(seconds, 2), cached=cached)
    return row


def _cached(cell: Cell) -> dict[str, Any] | None:
    run = Path(cell.cfg.run.dir)
    try:
        if (run / "config.yaml").read_text() == dump_config(cell.cfg):
            return json.loads((run / "results.json").read_text())
    except (OSError, ValueError):
        return None
    return None


def run_cells(grid: Grid) -> list[dict[str, Any]]:
    """Train and meta-test every cell, in order (reusing finished ones); one row per cell."""
    from distmeta.tune import _trainer_class, release_pool

    trainer_cls = _trainer_class()  # with workers: N, one pool of actors for all cells
    rows = []
    try:
        for i, cell in enumerate(grid.cells):
            t0 = time.perf_counter()
            results = _cached(cell)
            cached = results is not None
            if results is None:
                print(f"[grid] cell {i + 1}/{len(grid.cells)}: {cell.name}", flush=True)
                with trainer_cls(cell.cfg, overwrite=True) as trainer:
                    results = trainer.fit()
            else:
                print(f"[grid] cell {i + 1}/{len(grid.cells)}: {cell.name} (reused {cell.cfg.run.dir})", flush=True)
            rows.append(_cell_result(cell, results, time.perf_counter() - t0, cached))
    finally:
        release_pool()
    return rows


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_table(grid: Grid, rows: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    """``grid.csv``, ``grid.md`` and ``grid.json`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    axes = list(grid.spec.axes)
    cols = [*axes, "setting", "metric", "value", "ci95", "before", "episodes", "steps", "seconds", "cached"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (json.dumps(r[k]) if isinstance(r.get(k), (list, dict)) else r.get(k, "")) for k in cols})
    (out / CSV_FILE).write_text(buf.getvalue())

    pct = rows and rows[0]["metric"] == "accuracy"
    head = [*axes, "setting", "meta-test accuracy (%)" if pct else "meta-test MSE", "before meta-training", "episodes"]
    lines = [f"# {grid.spec.name}", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        scale = 100.0 if r["metric"] == "accuracy" else 1.0
        value = f"{scale * r['value']:.2f} ± {scale * r['ci95']:.2f}"
        before = f"{scale * r['before']:.2f}" if r.get("before") is not None else ""
        lines.append("| " + " | ".join([*(_fmt(r[a]) for a in axes), r["setting"], value, before,
                                         str(r["episodes"])]) + " |")
    lines += ["", f"± is the 95% confidence half-width (1.96 · std / √episodes). Base: {grid.where}."]
    (out / MD_FILE).write_text("\n".join(lines) + "\n")
    (out / JSON_FILE).write_text(json.dumps({"axes": grid.spec.axes, "rows": rows}, indent=2, default=str))
    return {"csv": out / CSV_FILE, "md": out / MD_FILE, "json": out / JSON_FILE}


def plot(grid: Grid, rows: list[dict[str, Any]], path: Path) -> Path:
    """Meta-test metric against the last axis, one line per combination of the other axes, CI as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = list(grid.spec.axes)
    x_key, series_keys = axes[-1], axes[:-1]
    x_values = grid.spec.axes[x_key]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x_values)
    scale = 100.0 if rows[0]["metric"] == "accuracy" else 1.0
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(json.dumps(r[k], default=str) for k in series_keys), []).append(r)
    for key, group in groups.items():
        xs = [r[x_key] if numeric else x_values.index(r[x_key]) for r in group]
        label = ", ".join(f"{k.split('.')[-1]}={json.loads(v)}" for k, v in zip(series_keys, key)) or None
        ax.errorbar(xs, [scale * r["value"] for r in group], yerr=[scale * r["ci95"] for r in group],
                    marker="o", capsize=4, label=label)
    if not numeric:
        ax.set_xticks(range(len(x_values)), [str(v)[:24] for v in x_values], rotation=15)
    ax.set_xlabel(x_key)
    ax.set_ylabel("meta-test accuracy (%)" if scale == 100.0 else "meta-test MSE")
    ax.set_title(f"{grid.spec.name}: meta-test ± 95% CI")
    ax.grid(alpha=0.3)
    if len(groups) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_grid(path: str | Path | dict[str, Any], overrides: list[str] | None = None) -> dict[str, Any]:
    """Validate the grid, run its cells, write the table (and plot), print the Markdown table."""
    grid = load_grid(path, overrides)
    rows = run_cells(grid)
    out = grid.experiment_path
    files = write_table(grid, rows, out)
    if grid.spec.plot:
        files["png"] = plot(grid, rows, out / PLOT_FILE)
    print(files["md"].read_text(), flush=True)
    print(f"wrote {', '.join(str(p) for p in files.values())}", flush=True)
    return {"rows": rows, "files": files, "experiment": out}


__all__ = ["GridSpec", "Grid", "Cell", "load_grid", "run_cells", "write_table", "plot", "run_grid"]
