"""Config loading: YAML + overrides, and errors that name the field."""
from __future__ import annotations

from pathlib import Path

import pytest

from distmeta.config import DEFAULT_CONFIG, dump_config, load_config
from distmeta.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_default_yaml_is_the_embedded_default(monkeypatch):
    # `distmeta train` without --config and `--config configs/default.yaml` must be the same run.
    monkeypatch.delenv("DISTMETA_BASE_CONFIG")  # tests/conftest.py points it at the bag config
    assert load_config(ROOT / "configs" / "default.yaml") == load_config(None)
    assert (ROOT / "configs" / "default.yaml").read_text() == DEFAULT_CONFIG.read_text()
    monkeypatch.setenv("DISTMETA_BASE_CONFIG", str(ROOT / "configs" / "bag_protonet.yaml"))
    assert load_config(None).model.name == "bag"  # a site-wide base config, when one is set


# Tune search and grid files (tune_*, grid_*) are read by `distmeta tune` / `distmeta grid`: tests/tune loads each.
TRAIN_CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith(("tune_", "grid_")))


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    load_config(path)


def test_overrides_are_typed_and_nested():
    cfg = load_config(None, ["algorithm.inner_lr=0.1", "data.ways=3", "eval.settings=[[3,1]]", "resources.workers=auto"])
    assert cfg.algorithm.inner_lr == 0.1 and cfg.data.ways == 3
    assert cfg.eval.settings == [(3, 1)] and cfg.resources.workers == "auto"


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
        (["resources.workers=-1"], "resources.workers: workers must be >= 0"),
        (["model.trainable=last:x"], "model.trainable"),
        (["data.source=sinusoid"], "model.name=mlp"),
        (["model.name=minilm"], "tokenizer.kind=pretrained"),
        (["data.split.train=0.9"], "sum to 1"),
        (["data.ways_range=[1,5]"], "data.ways_range: lower bound 1 must be >= 2"),
        (["data.ways_range=[6,5]"], "data.ways_range: lower bound 6 is above upper bound 5"),
        (["data.shots_range=[0,5]"], "data.shots_range: lower bound 0 must be >= 1"),
        (["data.shots_range=[3,2]"], "data.shots_range: lower bound 3 is above upper bound 2"),
        (["data.shots_range=[1,2,3]"], "data.shots_range"),
        (["algorithm.name=maml", "data.ways_range=[2,5]"], "data.ways_range: maml has one 5-way head"),
        (["algorithm.name=anil", "data.ways_range=[2,5]"], "data.ways_range: anil has one 5-way head"),
        (["algorithm.name=reptile", "data.ways_range=[2,5]"], "data.ways_range: reptile has one 5-way head"),
        (["data.source=sinusoid", "model.name=mlp", "algorithm.name=maml", "data.shots_range=[2,5]"],
         "data.shots_range: variable-shape episodes are for classification sources"),
        (["data.source=sinusoid", "model.name=mlp", "algorithm.name=maml", "data.ways_range=[2,5]"],
         "data.ways_range: variable-shape episodes are for classification sources"),
        (["algorithm.name=protonet", "data.ways_range=[2,5]", "data.mixture=[{source: icd10cm}]"],
         "data.ways_range: not with data.mixture"),
        (["data.shots_range=[1,5]", "data.mixture=[{source: icd10cm}]"], "data.shots_range: not with data.mixture"),
    ],
)
def test_bad_values_name_the_field(override, needle):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(None, override)
    assert needle in str(info.value)


@pytest.mark.parametrize("algorithm", ["protonet", "protomaml"])
def test_variable_shape_ranges_load_and_round_trip(algorithm, tmp_path):
    cfg = load_config(None, [f"algorithm.name={algorithm}", "data.ways_range=[3,10]", "data.shots_range=[1,5]",
                             "data.ways=20", "data.shots=7"])  # data.ways / data.shots (validation) need not lie in them
    assert (cfg.data.ways_range, cfg.data.shots_range) == ((3, 10), (1, 5))
    assert (cfg.data.train_ways(), cfg.data.train_shots()) == (10, 5)
    p = tmp_path / "c.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(p) == cfg
    plain = load_config(None, [f"algorithm.name={algorithm}"])
    assert plain.data.ways_range is None and plain.data.shots_range is None
    assert (plain.data.train_ways(), plain.data.train_shots()) == (plain.data.ways, plain.data.shots)


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "anil", "metasgd", "reptile", "protonet", "protomaml"])
def test_shots_range_is_for_every_classification_algorithm(algorithm):
    assert load_config(None, [f"algorithm.name={algorithm}", "data.shots_range=[1,5]"]).data.shots_range == (1, 5)


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


def test_one_override_helper_for_every_file_kind():
    from distmeta.config import set_key, split_overrides

    raw = {"a": {"b": 1}, "c": 2}
    assert set_key(raw, "a.d.e", 3) == {"a": {"b": 1, "d": {"e": 3}}, "c": 2} and raw == {"a": {"b": 1}, "c": 2}
    with pytest.raises(ConfigError, match="'c' is a value, not a section"):
        set_key(raw, "c.x", 1)
    with pytest.raises(ConfigError, match=r"override 'seed.x=3': 'seed' is a value, not a section"):
        load_config(None, ["seed.x=3"])
    assert split_overrides(["num_samples=2", "train.steps=5", "scheduler.max_t=3"], {"num_samples", "scheduler"}) == (
        ["num_samples=2", "scheduler.max_t=3"], ["train.steps=5"])


def test_one_error_formatter_for_every_file_kind():
    from pydantic import BaseModel, ConfigDict

    from distmeta.config import validate

    class Inner(BaseModel):
        model_config = ConfigDict(extra="forbid")
        max_t: int = 1

    class Spec(BaseModel):
        model_config = ConfigDict(extra="forbid")
        num_samples: int = 1
        scheduler: Inner = Inner()

    with pytest.raises(ConfigError) as info:
        validate(Spec, {"num_sample": 2, "scheduler": {"max_tt": 3}}, "tune config", "t.yaml")
    head, *lines = str(info.value).split("\n")
    assert head == "invalid tune config t.yaml:" and sorted(lines) == [
        "  unknown tune config key 'num_sample'; did you mean 'num_samples'?",
        "  unknown tune config key 'scheduler.max_tt'; did you mean 'scheduler.max_t'?"]
    with pytest.raises(ConfigError, match=r"^invalid config:\n  outer.lr: Input should be greater than 0 \(got -1\)$"):
        load_config(None, ["outer.lr=-1"])


@pytest.mark.parametrize("key", ["workers", "cpus_per_worker", "gpus_per_worker", "device", "threads"])
def test_a_resource_key_at_the_top_level_is_refused_naming_where_it_moved(key, tmp_path):
    # The resource keys live in their own section now; the old spelling, on the command line or in a
    # file, must say where the key went rather than "unknown key".
    value = {"device": "cpu"}.get(key, 1)
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"{key}={value}"])
    assert f"config key '{key}' moved to 'resources.{key}': write resources.{key}=..." in str(info.value)
    path = tmp_path / "old.yaml"
    path.write_text(f"{key}: {value}\n")
    with pytest.raises(ConfigError, match=f"'{key}' moved to 'resources.{key}'"):
        load_config(path)
    assert getattr(load_config(None, [f"resources.{key}={value}"]).resources, key) == value


def test_a_config_saved_before_the_move_is_read_into_resources():
    # A run directory or checkpoint written with top-level resource keys must stay resumable.
    from distmeta.config import config_from_dict, upgrade_saved

    old = {"workers": 2, "cpus_per_worker": 0.5, "threads": 3, "data": {"source": "sinusoid"}, "model": {"name": "mlp"}}
    cfg = config_from_dict(upgrade_saved(old))
    assert (cfg.resources.workers, cfg.resources.cpus_per_worker, cfg.resources.threads) == (2, 0.5, 3)
    assert "workers" in old, "the saved mapping itself is left as it was"
    both = {**old, "resources": {"workers": 4}}  # a section already written wins over a moved key
    assert config_from_dict(upgrade_saved(both)).resources.workers == 4


def test_resume_and_eval_read_a_saved_config_from_before_the_move():
    # distmeta train --resume and distmeta eval go through config_from_saved: an old run's config.yaml
    # must load there, its resource keys taken only when the user trusts the saved config.
    from distmeta.security import config_from_saved

    old = {"workers": 2, "threads": 3, "data": {"source": "sinusoid"}, "model": {"name": "mlp"},
           "algorithm": {"name": "maml"}}
    trusted = config_from_saved(old, [], trust=True, source="old/config.yaml")
    assert (trusted.resources.workers, trusted.resources.threads) == (2, 3)
    mine = config_from_saved(old, ["resources.workers=1"], trust=False, source="old/config.yaml")
    assert (mine.resources.workers, mine.resources.threads) == (1, None)  # where to run: the command line's
    assert mine.algorithm.name == "maml"
