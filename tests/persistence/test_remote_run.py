"""``run.dir=s3://...`` end to end through the CLI, against an S3 server started here (moto).

Reference: the same 6-step run trained straight through in a local directory. A run that
checkpoints to S3, stops, and resumes from S3 on a host with an empty cache must end on its
parameters bit for bit.
"""
from __future__ import annotations

import json

import pytest
import torch

import distmeta
from distmeta.cli import main
from distmeta.persistence.lease import current_generation
from distmeta.persistence.location import open_run
from distmeta.persistence.storage import open_store
from distmeta.training.metrics import read_metrics
from tests.helpers import QUIET, SINUSOID_TINY

ARGS = [*SINUSOID_TINY, *QUIET, "run.log_every=1", "run.checkpoint_every=2", "train.steps=6"]


@pytest.fixture
def run_uri(bucket) -> str:
    return f"s3://{bucket}/runs/a"


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict[str, torch.Tensor]:
    run = tmp_path_factory.mktemp("straight") / "run"
    assert main(["train", *ARGS, f"run.dir={run}"]) == 0
    return distmeta.load_checkpoint(run).meta_params


def test_stop_and_resume_from_s3_matches_the_local_run_bit_for_bit(run_uri, straight, tmp_path, monkeypatch) -> None:
    assert main(["train", *ARGS, "train.steps=4", f"run.dir={run_uri}"]) == 0
    store = open_store(run_uri)
    gen = current_generation(store)
    assert gen.uri.startswith(f"{run_uri}/gen-00000001-")
    assert sorted(gen.listdir("checkpoints")) == ["step_00000002", "step_00000004"]
    assert {"config.yaml", "metrics.jsonl", "results.json"} <= set(gen.listdir())
    assert any(f.startswith("tensorboard/events.out.tfevents") for f in gen.walk())
    beats = [f for f in store.walk(".distmeta-lease") if f.endswith(".beat")]
    assert len(beats) == 1 and json.loads(store.read_bytes(f".distmeta-lease/{beats[0]}"))["released"], \
        "the lease is released on close"

    monkeypatch.setenv("DISTMETA_CACHE_DIR", str(tmp_path / "another-host"))  # nothing cached: all from S3
    assert main(["train", "--resume", run_uri, *ARGS, "train.steps=6"]) == 0
    final = distmeta.load_checkpoint(run_uri)
    assert final.step == 6
    # The URIs a run had before generations still name its checkpoints (in the current generation).
    assert distmeta.load_checkpoint(f"{run_uri}/checkpoints").step == 6
    assert distmeta.load_checkpoint(f"{run_uri}/checkpoints/step_00000004").step == 4
    for n, t in straight.items():
        assert final.meta_params[n].dtype == t.dtype and torch.equal(final.meta_params[n], t), n

    gen = current_generation(store)
    assert gen.uri.startswith(f"{run_uri}/gen-00000002-")
    assert [n for n in store.listdir() if n.startswith("gen-")] == [gen.uri.rsplit("/", 1)[1]], "the first swept"
    rows = [json.loads(line) for line in gen.read_bytes("metrics.jsonl").decode().splitlines()]
    train_steps = [r["step"] for r in rows if "train/loss" in r]
    assert train_steps == [1, 2, 3, 4, 5, 6], "resumed past step 4 once, no duplicated rows"
    assert read_metrics(run_uri) == rows
    assert len([f for f in gen.walk("tensorboard") if "tfevents" in f]) == 2  # first run's and the resumed one's

    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", run_uri, "--episodes", "4", "--no-baseline", "--output", str(out)]) == 0
    assert json.loads(out.read_text())["step"] == 6


def test_existing_run_needs_a_flag_and_overwrite_moves_it_aside(run_uri, capsys) -> None:
    assert main(["train", *ARGS, "train.steps=2", f"run.dir={run_uri}"]) == 0
    assert main(["train", *ARGS, "train.steps=2", f"run.dir={run_uri}"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--overwrite", *ARGS, "train.steps=2", f"run.dir={run_uri}"]) == 0
    bucket = open_store(run_uri.rsplit("/", 1)[0])
    aside = [n for n in bucket.listdir() if n.startswith("a.replaced-")]
    assert len(aside) == 1 and current_generation(bucket.child(aside[0])).exists("checkpoints/step_00000002/manifest.json")


def test_second_writer_is_refused_while_the_first_holds_the_lease(run_uri, tmp_path, monkeypatch, capsys) -> None:
    first = open_run(run_uri)
    try:
        monkeypatch.setenv("DISTMETA_CACHE_DIR", str(tmp_path / "another-host"))  # not stopped by the local flock
        assert main(["train", "--overwrite", *ARGS, "train.steps=2", f"run.dir={run_uri}"]) == 2
        assert "in use by another distmeta writer: pid" in capsys.readouterr().err
    finally:
        first.close()
    assert not [f for f in open_store(run_uri).walk() if f.endswith("step_00000002/manifest.json")]


def test_missing_bucket_fails_before_training_naming_the_uri(endpoint, capsys) -> None:
    assert main(["train", *ARGS, "run.dir=s3://no-such-bucket-dm/run"]) == 2
    err = capsys.readouterr().err
    assert "s3://no-such-bucket-dm/run" in err and "does not exist" in err


def test_writer_killed_mid_publication_resumes_bit_for_bit(run_uri, straight, tmp_path, monkeypatch, capsys) -> None:
    from distmeta.persistence import storage

    real_copy = storage.Store.copy

    def dies_before_the_manifest(self, src_rel: str, dst_rel: str) -> None:
        if dst_rel == "step_00000004/manifest.json":  # every data file of step 4 copied, its manifest not
            raise storage.StorageError("connection reset (simulated)")
        real_copy(self, src_rel, dst_rel)

    monkeypatch.setattr(storage.Store, "copy", dies_before_the_manifest)
    assert main(["train", *ARGS, f"run.dir={run_uri}"]) == 2
    assert "could not publish checkpoint step_00000004" in capsys.readouterr().err
    monkeypatch.setattr(storage.Store, "copy", real_copy)
    store = open_store(run_uri)
    gen = current_generation(store)
    assert gen.exists("checkpoints/step_00000004/meta_params.safetensors")
    assert not gen.exists("checkpoints/step_00000004/manifest.json")  # not a checkpoint: readers skip it
    with pytest.warns(UserWarning, match="step_00000004 has no manifest"):
        assert distmeta.load_checkpoint(run_uri).step == 2

    monkeypatch.setenv("DISTMETA_CACHE_DIR", str(tmp_path / "another-host"))
    resumed = open_run(run_uri, resume=True)  # the next writer finishes the publication from .tmp-step_00000004-*
    try:
        assert [p.name for p in (resumed.local / "checkpoints").iterdir()] == ["step_00000004"]
    finally:
        resumed.close()
    assert main(["train", "--resume", run_uri, *ARGS]) == 0
    final = distmeta.load_checkpoint(run_uri)
    assert final.step == 6 and not [f for f in store.walk() if ".tmp-" in f]
    assert len([n for n in store.listdir() if n.startswith("gen-")]) == 1, "older generations swept"
    for n, t in straight.items():
        assert torch.equal(final.meta_params[n], t), n
