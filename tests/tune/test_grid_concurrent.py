"""``distmeta grid`` on a two-node cluster: two cells at once, each giving what it gives alone.

The grid runs in a subprocess (``grid_cluster_check.py``: its own two-node
``ray.cluster_utils.Cluster``, this session has a Ray already); the references are trained
here meanwhile, each cell alone with ``workers=0``.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import distmeta
from distmeta.config import apply_overrides
from distmeta.sweeps.grid import load_grid
from tests.helpers import SINUSOID_TINY

# Each cell: a driver bundle of 1 CPU and 2 workers of 0.5 CPU, so one cell fills one 2-CPU node: two cells at
# once, the third in a finished cell's trial process and placement group (Tune's reuse_actors, the pooled actors
# rebuilt for its config).
BASE = [*SINUSOID_TINY, "resources.workers=2", "resources.cpus_per_worker=0.5", "train.steps=8", "run.progress=false",
        "run.checkpoint_every=0", "run.eval_every=0", "eval.baseline=true"]


def grid_spec(out: Path) -> dict:
    return {"base": apply_overrides({}, BASE), "name": "g", "output_dir": str(out), "plot": False,
            "axes": {"data.shots": [5, 10, 20]}}


def overlap(a: dict, b: dict) -> bool:
    return a["started"] < b["ended"] and b["started"] < a["ended"]


@pytest.mark.ray
def test_cells_run_two_at_once_on_two_nodes_and_equal_each_cell_alone(tmp_path):
    spec = grid_spec(tmp_path / "grids")
    (tmp_path / "grid.json").write_text(json.dumps(spec))
    script = Path(__file__).with_name("grid_cluster_check.py")
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "grid.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    refs = {}
    for cell in load_grid(spec).cells:  # meanwhile: each cell alone, in this process
        cfg = cell.cfg.model_copy(update={"resources": cell.cfg.resources.model_copy(update={"workers": 0}),
                                           "run": cell.cfg.run.model_copy(
            update={"dir": str(tmp_path / "ref" / cell.name)})})
        with distmeta.Trainer(cfg) as trainer:
            refs[cell.name] = trainer.fit()
    stdout, stderr = proc.communicate(timeout=400)
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, stdout[-3000:] + stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    first, second = out["first"], out["second"]

    print("timeline:", [(r["cell"], r["started"], r["ended"], r["node"]) for r in first])
    assert [r["cell"] for r in first] == ["shots=5", "shots=10", "shots=20"]
    assert all(r["max_concurrent"] == 2 for r in first), "two cells' groups fit the two nodes side by side"
    assert overlap(first[0], first[1]), f"the first two cells ran one after the other: {first}"
    assert first[0]["node"] != first[1]["node"], "each cell's group fills one node"
    assert first[2]["started"] >= min(first[0]["ended"], first[1]["ended"]), "the third waited for a free node"
    assert all(r["ray_workers"] == 2 and r["workers_in_trial_pg"] for r in first), "actors in the cell's group"
    for cell in load_grid(spec).cells:
        run = Path(cell.cfg.run.dir)
        got = json.loads((run / "results.json").read_text())
        ref = refs[cell.name]
        assert got["test"] == ref["test"] and got["before_meta_training"] == ref["before_meta_training"], cell.name
        step = f"step_{cell.cfg.train.steps:08d}"
        a = load_file(run / "checkpoints" / step / "meta_params.safetensors")
        b = load_file(tmp_path / "ref" / cell.name / "checkpoints" / step / "meta_params.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{cell.name}: parameters differ"

    # Rerun after a kill (the last cell's results removed): the first cell is reused, only the last runs again.
    assert [r["cached"] for r in second] == [True, True, False]
    assert [r["value"] for r in second] == [r["value"] for r in first]
    assert out["ray_initialized_after_grid"] is False, "the grid closes the connection it opened"


@pytest.mark.ray
def test_workers_0_cells_as_trials_equal_the_same_cells_run_here(ray_local, tmp_path):
    # Text ProtoNet cells with workers=0 train inside their trial's process (one CPU each, two at once on the
    # session's 2-CPU Ray); the same grid with max_concurrent 1 runs them one after another in this process.
    from distmeta.sweeps.grid import run_grid
    from tests.helpers import QUIET, text_tiny, write_tiny_csv
    from tests.tune.conftest import wait_released

    base = apply_overrides({}, [*text_tiny(write_tiny_csv(tmp_path / "d.csv")), *QUIET, "algorithm.name=protonet",
                                "train.steps=3", "eval.baseline=true"])
    spec = {"base": base, "name": "t", "episodes": 8, "plot": False, "axes": {"data.shots": [1, 2]}}
    trials = run_grid({**spec, "output_dir": str(tmp_path / "trials")})["rows"]
    wait_released(ray_local)
    here = run_grid({**spec, "output_dir": str(tmp_path / "here"), "max_concurrent": 1})["rows"]
    assert [r["max_concurrent"] for r in trials] == [2, 2] and overlap(*trials), trials
    assert [r["node"] for r in here] == [None, None], "max_concurrent 1, workers=0: no Ray"
    for a, b in zip(trials, here, strict=True):
        assert a["before"] is not None and not a["cached"]
        assert (a["value"], a["ci95"], a["before"]) == (b["value"], b["ci95"], b["before"]), a["cell"]
