"""The command line and the Python front door, end to end on tiny data."""
from __future__ import annotations

import argparse
import json

import pytest
import torch
import yaml

import distmeta
from distmeta.cli import _parser, main
from distmeta.config import BASE_CONFIG_ENV, RayConfig, load_config
from tests.helpers import QUIET, SINUSOID_TINY, text_tiny, write_tiny_csv


def test_train_then_eval_and_load_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    args = [*text_tiny(write_tiny_csv(tmp_path / "d.csv")), *QUIET, "algorithm.name=protonet", f"run.dir={run}"]
    assert main(["train", *args]) == 0
    out = capsys.readouterr().out
    assert "3way_1shot: meta-trained" in out
    for name in ("config.yaml", "split.json", "tokenizer.json", "metrics.jsonl", "results.json"):
        assert (run / name).exists(), name
    split = json.loads((run / "split.json").read_text())
    assert not set(split["train"]) & set(split["test"])

    ckpt = distmeta.load_checkpoint(str(run))
    assert ckpt.step == 3 and set(ckpt.meta_params) and all(isinstance(v, torch.Tensor) for v in ckpt.meta_params.values())

    out_json = tmp_path / "results.json"
    assert main(["eval", "--checkpoint", str(run), "--split", "test", "--episodes", "12", "--output", str(out_json),
                 "--trust-checkpoint-config"]) == 0
    res = json.loads(out_json.read_text())
    r = res["test"]["3way_1shot"]
    assert 0.0 <= r["accuracy"] <= 1.0 and r["ci95"] > 0 and r["episodes"] == 12


def test_second_train_into_the_same_run_dir_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    args = [*SINUSOID_TINY, *QUIET, f"run.dir={run}"]
    assert main(["train", *args]) == 0
    assert main(["train", *args]) == 2
    assert "--resume" in capsys.readouterr().err


def test_resume_continues_to_the_same_parameters(tmp_path):
    straight, split = tmp_path / "a", tmp_path / "b"
    base = [*SINUSOID_TINY, *QUIET, "run.checkpoint_every=2"]
    assert main(["train", *base, "train.steps=4", f"run.dir={straight}"]) == 0
    assert main(["train", *base, "train.steps=2", f"run.dir={split}"]) == 0
    assert main(["train", "--resume", str(split), "train.steps=4"]) == 0
    a, b = distmeta.load_checkpoint(str(straight)), distmeta.load_checkpoint(str(split))
    assert a.step == b.step == 4
    for n in a.meta_params:
        assert torch.equal(a.meta_params[n], b.meta_params[n]), n


def test_bad_override_exits_with_a_named_error(capsys):
    assert main(["train", "algorithm.inner_lr=-1"]) == 2
    assert "algorithm.inner_lr" in capsys.readouterr().err


def test_python_api_trainer_fit_and_evaluate(tmp_path):
    cfg = distmeta.load_config(None, [*SINUSOID_TINY, *QUIET, f"run.dir={tmp_path / 'r'}"])
    with distmeta.Trainer(cfg) as trainer:
        trainer.fit()
        res = trainer.evaluate(episodes=6)
    assert res["test"]["5shot"]["episodes"] == 6 and res["step"] == 3


def test_resume_from_a_step_directory_moved_out_of_its_run(tmp_path):
    """A checkpoint step directory alone (a Ray Tune trial checkpoint) continues the run bit for bit."""
    data = text_tiny(write_tiny_csv(tmp_path / "d.csv"))
    base = [*data, *QUIET, "algorithm.name=protonet", "run.checkpoint_every=2"]
    straight = distmeta.load_config(None, [*base, "train.steps=4", f"run.dir={tmp_path / 'a'}"])
    with distmeta.Trainer(straight) as trainer:
        trainer.fit()
    first = distmeta.load_config(None, [*base, "train.steps=2", f"run.dir={tmp_path / 'b'}"])
    with distmeta.Trainer(first) as trainer:
        trainer.fit()
    step_dir = tmp_path / "b" / "checkpoints" / "step_00000002"
    moved = tmp_path / "reported" / step_dir.name
    moved.parent.mkdir()
    step_dir.rename(moved)
    fresh = distmeta.load_config(None, [*base, "train.steps=4", f"run.dir={tmp_path / 'c'}"])
    with distmeta.Trainer(fresh, resume_from=moved) as trainer:
        trainer.fit()
    assert (tmp_path / "c" / "split.json").read_bytes() == (tmp_path / "b" / "split.json").read_bytes()
    a, c = distmeta.load_checkpoint(str(tmp_path / "a")), distmeta.load_checkpoint(str(tmp_path / "c"))
    assert a.step == c.step == 4
    for n in a.meta_params:
        assert torch.equal(a.meta_params[n], c.meta_params[n]), n


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """``{command: parser}`` of every subcommand (argparse keeps them in its one _SubParsersAction)."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {name: sub for a in actions for name, sub in a.choices.items()}


def test_every_option_of_every_command_has_a_help_text():
    """Walks the real parsers: an option added without ``help=`` fails here, naming the command and the option."""
    root = _parser()
    parsers = {"distmeta": root, **{f"distmeta {n}": p for n, p in _subparsers(root).items()}}
    assert {"distmeta train", "distmeta eval", "distmeta config", "distmeta tune", "distmeta grid"} <= set(parsers)
    missing = [f"{where}: {'/'.join(a.option_strings) or a.dest}"
               for where, p in parsers.items() for a in p._actions
               if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
               and (not a.help or a.help == argparse.SUPPRESS)]
    assert not missing, f"options without a help text: {missing}"
    commands = [a for a in root._actions if isinstance(a, argparse._SubParsersAction)][0]._choices_actions
    assert all(c.help for c in commands), "every command needs a one-line help in `distmeta --help`"


def test_bare_distmeta_prints_the_help_not_an_error(capsys):
    assert main([]) == 0
    captured = capsys.readouterr()
    assert "usage: distmeta" in captured.out and "train" in captured.out and "config" in captured.out
    assert "error" not in captured.err


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"distmeta {distmeta.__version__}"


def test_config_prints_the_resolved_config_that_train_would_run(tmp_path, capsys):
    """The printed YAML is the whole config (schema defaults filled in), and loads back to the same Config."""
    overrides = ["data.ways=7", "algorithm.inner_lr=0.05", f"run.dir={tmp_path / 'r'}"]
    assert main(["config", "--config", "configs/sinusoid_maml.yaml", *overrides]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    want = load_config("configs/sinusoid_maml.yaml", overrides)
    assert printed == want.model_dump(mode="json")
    assert printed["data"]["ways"] == 7 and printed["algorithm"]["inner_lr"] == 0.05
    assert printed["ray"]["step_timeout"] == RayConfig().step_timeout, "keys the file leaves out are printed too"
    again = tmp_path / "resolved.yaml"
    again.write_text(yaml.safe_dump(printed))
    assert load_config(again) == want
    assert not (tmp_path / "r").exists(), "printing a config creates no run directory"


def test_config_without_a_file_resolves_the_base_config(capsys, monkeypatch):
    monkeypatch.setenv(BASE_CONFIG_ENV, "configs/bag_protonet.yaml")
    assert main(["config", "train.steps=5"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["name"] == "bag" and printed["train"]["steps"] == 5


def test_config_with_a_bad_key_is_a_named_error(capsys):
    assert main(["config", "algorithm.inner_lrr=0.1"]) == 2
    assert "did you mean 'algorithm.inner_lr'" in capsys.readouterr().err
