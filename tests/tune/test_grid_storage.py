"""A grid whose ``output_dir`` is a storage URI keeps its cells and table there (moto S3), not in a local ``./s3:``."""
from __future__ import annotations

import json
from pathlib import Path

from distmeta.config import apply_overrides
from distmeta.persistence.lease import current_generation
from distmeta.persistence.storage import open_store
from distmeta.sweeps.grid import load_grid, run_grid
from tests.helpers import QUIET, SINUSOID_TINY
from tests.persistence.conftest import bucket, endpoint  # noqa: F401 - the S3 server fixtures

ENDPOINT = "endpoint_override=127.0.0.1:9000&scheme=http"


def grid_spec(output_dir: str) -> dict:
    base = apply_overrides({}, [*SINUSOID_TINY, *QUIET, "train.steps=1", "eval.episodes=2"])
    return {"base": base, "name": "ws", "output_dir": output_dir, "episodes": 2, "max_concurrent": 1, "plot": False,
            "axes": {"data.shots": [1, 2]}}


def test_cells_of_a_uri_output_dir_are_joined_as_uris() -> None:
    grid = load_grid(grid_spec(f"s3://bucket/grids?{ENDPOINT}"))
    assert grid.experiment == f"s3://bucket/grids/ws?{ENDPOINT}"
    assert [c.cfg.run.dir for c in grid.cells] == [f"s3://bucket/grids/ws/cells/shots=1?{ENDPOINT}",
                                                   f"s3://bucket/grids/ws/cells/shots=2?{ENDPOINT}"]
    assert load_grid(grid_spec("runs/g")).cells[0].cfg.run.dir == str(Path("runs/g/ws/cells/shots=1"))


def test_a_grid_on_s3_writes_its_cells_and_table_there_and_reuses_them(endpoint, bucket, tmp_path,  # noqa: F811
                                                                      monkeypatch) -> None:
    import boto3

    monkeypatch.chdir(tmp_path)
    first = run_grid(grid_spec(f"s3://{bucket}/grids"))
    s3 = boto3.client("s3", endpoint_url=endpoint)
    objects = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
    for cell in ("shots=1", "shots=2"):  # each cell a run directory (written in its writer's generation)
        gen = current_generation(open_store(f"s3://{bucket}/grids/ws/cells/{cell}"))
        assert gen.exists("results.json") and gen.exists("config.yaml"), sorted(objects)[:20]
    assert {"grids/ws/grid.csv", "grids/ws/grid.md", "grids/ws/grid.json"} <= objects
    stored = json.loads(s3.get_object(Bucket=bucket, Key="grids/ws/grid.json")["Body"].read())
    assert [r["value"] for r in stored["rows"]] == [r["value"] for r in first["rows"]]
    assert not (tmp_path / "s3:").exists() and list(tmp_path.iterdir()) == [tmp_path / "cache"], \
        "nothing of the grid lands in the working directory"

    again = run_grid(grid_spec(f"s3://{bucket}/grids"))  # the finished cells are read back from the bucket
    assert all(r["cached"] for r in again["rows"]) and [r["value"] for r in again["rows"]] == \
        [r["value"] for r in first["rows"]]
