"""Config loading: YAML + overrides, and errors that name the field."""
from __future__ import annotations

from pathlib import Path

import pytest

from distmeta.config import DEFAULT_CONFIG, Config, dump_config, load_config
from distmeta.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_default_yaml_is_the_embedded_default():
    # `distmeta train` without --config and `--config configs/default.yaml` must be the same run.
    assert load_config(ROOT / "configs" / "default.yaml") == load_config(None)
    assert (ROOT / "configs" / "default.yaml").read_text() == DEFAULT_CONFIG.read_text()


# Tune search and grid files (tune_*, grid_*) are read by `distmeta tune` / `distmeta grid`: tests/tune loads each.
TRAIN_CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith(("tune_", "grid_")))


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    load_config(path)


def test_overrides_are_typed_and_nested():
    cfg = load_config(None, ["algorithm.inner_lr=0.1", "data.ways=3", "eval.settings=[[3,1]]", "workers=auto"])
    assert cfg.algorithm.inner_lr == 0.1 and cfg.data.ways == 3
    assert cfg.eval.settings == [(3, 1)] and cfg.workers == "auto"


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, ["algorithm.name=reptile", "outer.name=nesterov"])
    p = tmp_path / "c.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(p) == cfg


@pytest.mark.parametrize(
    "override, needle",
    [
        (["algorithm.inner_lrr=0.1"], "did you mean 'algorithm.inner_lr'"),
        (["trian.steps=3"], "did you mean 'train'"),
        (["algorithm.name=mamll"], "algorithm.name"),
        (["algorithm.inner_lr=0"], "algorithm.inner_lr"),
        (["outer.lr=-1"], "outer.lr"),
        (["data.ways=0"], "data.ways"),
        (["data.source=ftp:x"], "unknown data source"),
        (["dtype=float16"], "dtype"),
        (["workers=-1"], "workers"),
        (["model.trainable=last:x"], "model.trainable"),
        (["data.source=sinusoid"], "model.name=mlp"),
        (["model.name=minilm"], "tokenizer.kind=pretrained"),
        (["data.split.train=0.9"], "sum to 1"),
    ],
)
def test_bad_values_name_the_field(override, needle):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(None, override)
    assert needle in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(lst)


def test_yaml_is_loaded_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("seed: !!python/object/apply:os.system ['touch /tmp/distmeta-pwned']\n")
    with pytest.raises(ConfigError):
        load_config(evil)
    assert not Path("/tmp/distmeta-pwned").exists()
