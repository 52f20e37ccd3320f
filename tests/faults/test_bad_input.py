"""Bad config or data is refused by ``distmeta train workers=2`` before Ray (and so any actor) starts.

All cases run in one child process that counts ``ray.init`` calls; the last case is a
control that gets past validation (and the resource check, which an impossible actor size
no longer passes) and fails inside the Ray backend, so the count is shown to move when Ray
does start.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import QUIET, text_tiny, write_tiny_csv

CHILD = Path(__file__).with_name("cli_child.py")
RAY2 = ["resources.workers=2", "resources.cpus_per_worker=0.25"]

# name -> (overrides on the tiny text run, words the message must contain)
CASES: dict[str, tuple[list[str], list[str]]] = {
    "unknown algorithm": (["algorithm.name=mamll"], ["algorithm.name", "mamll"]),
    "zero outer lr": (["outer.lr=0"], ["outer.lr"]),
    "negative inner lr": (["algorithm.inner_lr=-1"], ["algorithm.inner_lr"]),
    "unknown key, near miss": (["algorithm.inner_lrr=0.1"], ["unknown config key 'algorithm.inner_lrr'", "did you mean 'algorithm.inner_lr'"]),
    "unknown nan_policy": (["nan_policy=ignore"], ["nan_policy"]),
    "fault on a missing actor": (["faults=[{kind: kill, actor: 5, step: 1}]"], ["faults.0.actor=5", "resources.workers=2"]),
    "more ways than train classes": (["data.ways=6"], ["split 'train' has 5 classes", "data.ways=6"]),
    "shots + queries over every class": (["data.shots=15", "data.queries=10"], ["d.csv", "25 examples", "data.shots"]),
    "shots + queries over one class": (["data.source=csv:SMALL", "data.small_classes=error"], ["small.csv", "1 of 8 classes", "fewer than 4", "sport"]),
    "missing column": (["data.text_column=body"], ["no text column 'body'", "data.text_column", "d.csv"]),
    "empty dataset": (["data.source=csv:EMPTY"], ["empty.csv", "no rows"]),
    "unreadable file": (["data.source=parquet:GARBAGE"], ["garbage.parquet", "could not be read"]),
    "missing file": (["data.source=csv:MISSING"], ["missing.csv", "does not exist"]),
}
CONTROL = (["faults=[{kind: raise, actor: 0, step: 0}]"], ["raised on actor 0"])


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    files = {"empty": root / "empty.csv", "garbage": root / "garbage.parquet", "missing": root / "missing.csv",
             "small": root / "small.csv"}
    lines = write_tiny_csv(root / "full.csv").read_text().splitlines(keepends=True)
    sport = [ln for ln in lines if ln.rstrip().endswith(",sport")]
    files["small"].write_text("".join(ln for ln in lines if ln not in sport[3:]))  # sport keeps 3 rows
    files["empty"].write_text("text,label\n")
    files["garbage"].write_bytes(b"PAR1 this is not parquet at all \x00\x01\x02" * 10)
    base = [*text_tiny(write_tiny_csv(root / "d.csv")), *QUIET, *RAY2, "algorithm.name=protonet"]
    cases = []
    for i, (overrides, _) in enumerate([*CASES.values(), CONTROL]):
        for key, path in files.items():
            overrides = [o.replace(key.upper(), str(path)) for o in overrides]
        cases.append(["train", *base, *overrides, f"run.dir={root / f'run{i}'}"])
    proc = subprocess.run([sys.executable, str(CHILD), "cases", "--", json.dumps(cases)],
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[2])
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(lines[-1][len("RESULT "):])
    return dict(zip([*CASES, "control"], results))


@pytest.mark.parametrize("case", list(CASES))
def test_refused_before_ray_starts_with_a_message_naming_the_culprit(outcomes, case):
    got = outcomes[case]
    assert got["rc"] == 2, got
    assert got["stderr"].startswith("distmeta train: error:"), got["stderr"]
    for needle in CASES[case][1]:
        assert needle in got["stderr"], f"{needle!r} not in {got['stderr']!r}"
    assert got["ray_inits"] == 0 and not got["ray_initialized"], "Ray was started for a run that was refused"


def test_control_case_does_reach_ray(outcomes):
    """Valid config and data, a compute that raises on an actor: the run fails inside the Ray backend, after ray.init."""
    got = outcomes["control"]
    assert got["rc"] != 0 and CONTROL[1][0] in got["stderr"], got
    assert got["ray_inits"] == 1, "the ray.init counter works"
    assert not got["ray_initialized"], "the backend shut down the Ray it started"
