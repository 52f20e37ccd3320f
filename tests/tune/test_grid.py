"""``distmeta grid``: every cell meta-trained and meta-tested on its own setting; CSV, Markdown and PNG written."""
from __future__ import annotations

import csv
import json

import pytest
import yaml

from distmeta.cli import main
from distmeta.config import apply_overrides
from distmeta.errors import ConfigError
from distmeta.sweeps.grid import load_grid
from tests.helpers import QUIET, text_tiny, write_tiny_csv


def tiny_grid(tmp_path, **extra) -> dict:
    # max_concurrent 1 with workers=0 cells: one after another in this process, no Ray (the concurrent
    # Tune path is tested on a two-node cluster in test_grid_concurrent.py).
    base = apply_overrides({}, [*text_tiny(write_tiny_csv(tmp_path / "d.csv")), *QUIET, "algorithm.name=protonet"])
    return {"base": base, "name": "ws", "output_dir": str(tmp_path / "grids"), "episodes": 12, "max_concurrent": 1,
            "axes": {"data.ways": [2, 3], "data.shots": [1, 2]}, **extra}


def test_grid_writes_table_and_plot_and_reuses_finished_cells(tmp_path, capsys):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(tiny_grid(tmp_path), sort_keys=False))
    assert main(["grid", "--config", str(path), "train.steps=2"]) == 0
    out_dir = tmp_path / "grids" / "ws"
    rows = list(csv.DictReader((out_dir / "grid.csv").open()))
    assert [(r["data.ways"], r["data.shots"], r["setting"]) for r in rows] == [
        ("2", "1", "2way_1shot"), ("2", "2", "2way_2shot"), ("3", "1", "3way_1shot"), ("3", "2", "3way_2shot")]
    for r in rows:
        assert r["metric"] == "accuracy" and 0.0 <= float(r["value"]) <= 1.0 and float(r["ci95"]) > 0
        assert r["episodes"] == "12" and r["steps"] == "2" and r["cached"] == "False"
        assert float(r["ended"]) > float(r["started"])
    md = (out_dir / "grid.md").read_text()
    assert "| data.ways | data.shots | setting | meta-test accuracy (%) |" in md and md.count("±") >= 5
    assert "3way_2shot" in capsys.readouterr().out
    png = (out_dir / "grid.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    import matplotlib.image

    assert matplotlib.image.imread(out_dir / "grid.png").shape[:2] == (504, 768)
    for cell in ("ways=2_shots=1", "ways=3_shots=2"):
        assert (out_dir / "cells" / cell / "results.json").exists()

    assert main(["grid", "--config", str(path), "train.steps=2"]) == 0  # finished cells are reused
    again = json.loads((out_dir / "grid.json").read_text())["rows"]
    assert all(r["cached"] for r in again) and [r["value"] for r in again] == [float(r["value"]) for r in rows]


def test_grid_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown grid config key 'axis'; did you mean 'axes'"):
        load_grid({**tiny_grid(tmp_path), "axis": {}})
    with pytest.raises(ConfigError, match=r"axes: the cell data.ways=0, data.shots=1: data.ways: .*greater than or equal to 1"):
        load_grid(tiny_grid(tmp_path, axes={"data.ways": [0], "data.shots": [1]}))
    with pytest.raises(ConfigError, match="axis 'data.shots' repeats a value"):
        load_grid(tiny_grid(tmp_path, axes={"data.shots": [1, 1]}))


def test_shipped_grid_configs_validate():
    g = load_grid("configs/grid_ways_shots.yaml")
    assert [c.setting for c in g.cells] == [(3, 1), (3, 5), (5, 1), (5, 5)]
    assert all(c.cfg.eval.settings == [c.setting] and c.cfg.eval.episodes == 300 for c in g.cells)
    s = load_grid("configs/grid_sinusoid.yaml")
    assert len(s.cells) == 6 and s.cells[0].cfg.data.sinusoid.amplitude == (0.1, 1.0)


def test_plot_ticks_at_the_axis_values_and_dashes_each_lines_baseline(tmp_path):
    from matplotlib.colors import to_hex

    from distmeta.sweeps.grid_report import figure

    grid = load_grid(tiny_grid(tmp_path, axes={"data.ways": [2, 3], "data.shots": [1, 5]}))
    rows = [{**c.values, "metric": "accuracy", "value": 0.5 + 0.1 * i, "ci95": 0.05, "before": 0.4 + 0.1 * i}
            for i, c in enumerate(grid.cells)]
    ax = figure(grid, rows).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "5"] and list(ax.get_xticks()) == [0, 1]
    solid = {c.get_label(): c[0] for c in ax.containers}  # errorbar containers: (data line, caps, bars)
    dashed = {ln.get_label(): ln for ln in ax.get_lines() if ln.get_linestyle() == "--"}
    assert sorted(solid) == ["ways=2", "ways=3"]
    assert sorted(dashed) == ["ways=2: frozen-encoder baseline", "ways=3: frozen-encoder baseline"]
    for label, line in solid.items():
        base = dashed[f"{label}: frozen-encoder baseline"]
        assert to_hex(base.get_color()) == to_hex(line.get_color())
        assert list(base.get_xdata()) == [0, 1]
    assert [round(y, 6) for y in dashed["ways=3: frozen-encoder baseline"].get_ydata()] == [60.0, 70.0]


def test_a_cell_that_cannot_be_a_trial_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="driver_cpus: the cell ways=2_shots=1 has resources.workers=0"):
        load_grid(tiny_grid(tmp_path, max_concurrent=None, driver_cpus=0))
    load_grid(tiny_grid(tmp_path, driver_cpus=0))  # max_concurrent 1 and workers=0: in this process


def test_copies_that_fit_counts_whole_placement_groups():
    from distmeta.sweeps.fit import copies_that_fit

    nodes = [{"CPU": 2.0, "GPU": 0.0}, {"CPU": 2.0, "GPU": 0.0}]
    cell = [{"CPU": 1.0}, {"CPU": 0.5}, {"CPU": 0.5}]  # a driver and two workers
    assert copies_that_fit(cell, "PACK", nodes) == 2
    assert copies_that_fit([{"CPU": 1.0}], "PACK", nodes) == 4
    assert copies_that_fit([{"CPU": 1.0}, {"CPU": 1.0}], "STRICT_SPREAD", nodes) == 2
    assert copies_that_fit([{"CPU": 1.5}, {"CPU": 1.0}], "STRICT_PACK", nodes) == 0, "2.5 CPUs on no one node"
    assert copies_that_fit([{"CPU": 1.0, "GPU": 1.0}], "PACK", nodes) == 0
    assert copies_that_fit([{"CPU": 0.0}], "PACK", nodes, limit=3) == 3, "an empty group fits without end"
