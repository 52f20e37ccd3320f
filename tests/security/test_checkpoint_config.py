"""Item 1: a crafted checkpoint config (valid manifest) cannot choose the cluster, faults, run dir or files read."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from distmeta.cli import main
from distmeta.distributed import session as ray_session
from distmeta.persistence import checkpoint as ck
from tests.helpers import QUIET, SINUSOID_TINY, text_tiny, write_tiny_csv

HOSTILE = {"ray": {"address": "10.66.66.66:6379"}, "resources": {"workers": 2}, "run": {"dir": "/tmp/attacker-run"},
           "faults": [{"kind": "stall", "step": 0, "seconds": 3600}]}


def recraft(step_dir: Path, edit) -> None:
    """What a checkpoint's author can do: change state.json's config and re-manifest it (checksums pass)."""
    doc = json.loads((step_dir / ck.STATE_FILE).read_text())
    edit(doc["config"])
    (step_dir / ck.STATE_FILE).write_text(json.dumps(doc))
    manifest = json.loads((step_dir / ck.MANIFEST_FILE).read_text())
    for name in ck.DATA_FILES:
        data = (step_dir / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (step_dir / ck.MANIFEST_FILE).write_text(json.dumps(manifest))
    ck.verify_checkpoint(step_dir)


@pytest.fixture
def no_ray(monkeypatch):
    """Any attempt to join or start a Ray cluster fails the test."""
    monkeypatch.setattr(ray_session, "connect", lambda cfg: pytest.fail(f"joined Ray at {cfg.ray.address!r}"))


def test_eval_ignores_a_crafted_ray_address_faults_workers_and_run_dir(tmp_path, no_ray):
    run = tmp_path / "run"
    assert main(["train", *SINUSOID_TINY, *QUIET, f"run.dir={run}"]) == 0
    recraft(ck.latest_checkpoint(run), lambda c: c.update(HOSTILE))
    out = tmp_path / "r.json"
    with pytest.warns(UserWarning, match="ray.address"):
        assert main(["eval", "--checkpoint", str(run), "--episodes", "4", "--no-baseline", "--output", str(out)]) == 0
    assert json.loads(out.read_text())["step"] == 3 and not Path("/tmp/attacker-run").exists()


def test_eval_refuses_a_data_path_the_user_did_not_give(tmp_path, no_ray, capsys):
    data = write_tiny_csv(tmp_path / "d.csv")
    secret = write_tiny_csv(tmp_path / "victim_secret.csv", seed=1)  # readable by the victim, not the author
    run = tmp_path / "run"
    assert main(["train", *text_tiny(data), *QUIET, f"run.dir={run}"]) == 0
    recraft(ck.latest_checkpoint(run), lambda c: c["data"].update(source=f"csv:{secret}"))
    run.chmod(0o770)  # a shared run directory: its group could have crafted the checkpoint, so it is foreign
    assert main(["eval", "--checkpoint", str(run), "--episodes", "4", "--no-baseline"]) == 2
    err = capsys.readouterr().err
    assert "data.source" in err and str(secret) in err and "--trust-checkpoint-config" in err, err
    assert "not your own run" in err and "writable by other users" in err, err
    # Given by the user (or trusted on purpose), the same path is used.
    assert main(["eval", "--checkpoint", str(run), "--episodes", "4", "--no-baseline", f"data.source=csv:{secret}"]) == 0
    assert main(["eval", "--checkpoint", str(run), "--episodes", "4", "--no-baseline", "--trust-checkpoint-config",
                 "resources.workers=0"]) == 0


def test_resume_ignores_a_crafted_config_yaml_environment(tmp_path, no_ray):
    run = tmp_path / "run"
    args = [*SINUSOID_TINY, *QUIET, "run.checkpoint_every=1", f"run.dir={run}"]
    assert main(["train", *args, "train.steps=2"]) == 0
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved.update(HOSTILE)
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.warns(UserWarning, match="ray.address"):
        assert main(["train", "--resume", str(run), "train.steps=3"]) == 0
    assert ck.load_checkpoint(run).step == 3 and not Path("/tmp/attacker-run").exists()


def _train_own_csv_run(tmp_path: Path) -> Path:
    data = write_tiny_csv(tmp_path / "d.csv")
    run = tmp_path / "run"
    assert main(["train", *text_tiny(data), *QUIET, f"run.dir={run}"]) == 0
    return run


def test_eval_of_your_own_run_needs_no_data_source_again(tmp_path, no_ray):
    """Issue 26 item 4: a run directory only you can write is yours; its saved data.source is taken."""
    run = _train_own_csv_run(tmp_path)
    out = tmp_path / "r.json"
    assert main(["eval", "--checkpoint", str(run), "--episodes", "4", "--no-baseline", "--output", str(out)]) == 0
    assert json.loads(out.read_text())["step"] == 3
    # Its step directory too; and where and how to run still come from the command line, not the run.
    assert main(["eval", "--checkpoint", str(ck.latest_checkpoint(run)), "--episodes", "4", "--no-baseline"]) == 0


@pytest.mark.parametrize("make_foreign", ["other-writable file", "other owner"])
def test_eval_of_a_run_someone_else_could_write_is_refused(tmp_path, no_ray, capsys, make_foreign):
    run = _train_own_csv_run(tmp_path)
    state = ck.latest_checkpoint(run) / ck.STATE_FILE
    if make_foreign == "other owner":
        if os.getuid() != 0:
            pytest.skip("chown to another uid needs root")
        os.chown(state, 4242, -1)
    else:
        state.chmod(0o646)
    assert main(["eval", "--checkpoint", str(run), "--episodes", "4", "--no-baseline"]) == 2
    err = capsys.readouterr().err
    assert "data.source" in err and "not your own run" in err and str(state) in err, err
    assert ("uid 4242" if make_foreign == "other owner" else "writable by other users") in err, err


def test_not_yours_names_the_reason(tmp_path):
    from distmeta.security import not_yours

    step = tmp_path / "run" / "checkpoints" / "step_00000003"
    step.mkdir(parents=True, mode=0o750)
    (step / "state.json").write_text("{}")
    (tmp_path / "run").chmod(0o750)
    (tmp_path / "run" / "checkpoints").chmod(0o750)
    assert not_yours(tmp_path / "run", step) is None
    (tmp_path / "run" / "checkpoints").chmod(0o770)
    assert "checkpoints is writable by other users" in not_yours(tmp_path / "run", step)
    (tmp_path / "run" / "checkpoints").chmod(0o750)
    assert "outside the run directory" in not_yours(tmp_path / "other", step)


def test_a_run_made_under_umask_002_is_still_yours(tmp_path, no_ray):
    """A group-writable umask (user private groups) must not turn your own run foreign: distmeta writes its run
    directory 0750 and the files it reads back without group write, as it writes checkpoints."""
    old = os.umask(0o002)
    try:
        run = _train_own_csv_run(tmp_path)
    finally:
        os.umask(old)
    assert (run.stat().st_mode & 0o777) == 0o750
    assert main(["eval", "--checkpoint", str(run), "--episodes", "4", "--no-baseline"]) == 0
