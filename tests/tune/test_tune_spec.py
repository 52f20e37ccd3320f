"""The tune YAML is checked completely before Ray starts, with errors that name the key; trial resources."""
from __future__ import annotations

import pytest
import yaml

from distmeta.config import load_config
from distmeta.errors import ConfigError
from distmeta.sweeps.search import load_search
from distmeta.sweeps.trial import trial_config, trial_resources

SINUSOID_BASE = {"data": {"source": "sinusoid", "shots": 5, "queries": 5}, "model": {"name": "mlp"},
                 "resources": {"workers": 2, "cpus_per_worker": 0.5}, "run": {"eval_every": 2}}


def spec(**extra):
    base = {"base": dict(SINUSOID_BASE), "search_space": {"algorithm.inner_lr": {"loguniform": [0.01, 1.0]}}}
    base.update(extra)
    return base


def error_of(raw) -> str:
    with pytest.raises(ConfigError) as err:
        load_search(raw)
    return str(err.value)


def test_shipped_tune_configs_validate():
    asha = load_search("configs/tune_sinusoid_asha.yaml")
    assert asha.metric == "val_neg_mse" and asha.spec.scheduler.name == "asha"
    assert set(asha.param_space()) == {"_base", "algorithm.inner_lr", "algorithm.inner_steps", "outer.lr"}
    pbt = load_search("configs/tune_icd10cm_pbt.yaml")
    assert pbt.metric == "val_accuracy" and set(pbt.mutations()) == {"algorithm.inner_lr", "outer.lr"}
    assert pbt.base["algorithm"]["name"] == "fomaml" and pbt.base["resources"]["workers"] == 2


def test_errors_name_the_key():
    assert "unknown tune config key 'num_sample'; did you mean 'num_samples'" in error_of(spec(num_sample=3))
    assert "scheduler.max_tt" in error_of(spec(scheduler={"name": "asha", "max_tt": 3}))
    msg = error_of(spec(search_space={"algorithm.inner_lrr": {"uniform": [0.1, 0.2]}}))
    assert "search_space.algorithm.inner_lrr" in msg and "did you mean 'algorithm.inner_lr'" in msg
    msg = error_of(spec(search_space={"algorithm.inner_lr": {"uniform": [-1.0, 0.2]}}))
    assert "search_space.algorithm.inner_lr: value -1.0" in msg and "greater than 0" in msg
    assert "search_space.outer.lr.loguniform: a log range needs low > 0" in error_of(
        spec(search_space={"outer.lr": {"loguniform": [0, 1]}}))
    assert "search_space.algorithm.inner_steps: expected one of" in error_of(
        spec(search_space={"algorithm.inner_steps": {"pick": [1, 2]}}))
    assert "search_space.algorithm.name: value 'protonet'" in error_of(
        spec(search_space={"algorithm.name": {"choice": ["maml", "protonet"]}}))  # protonet cannot do sinusoid
    assert "search_space.resources.workers: trial resources are fixed" in error_of(
        spec(search_space={"resources.workers": {"choice": [1, 2]}}))
    assert "metric: 'val_accuracy' is not reported" in error_of(spec(metric="val_accuracy"))
    assert "base: invalid config" in error_of(spec(base={**SINUSOID_BASE, "resources": {"workers": -1}}))
    assert "base resources.workers: 'auto' cannot size a trial" in error_of(
        spec(base={**SINUSOID_BASE, "resources": {"workers": "auto"}}))
    assert "base run.eval_every: must be > 0" in error_of(spec(base={**SINUSOID_BASE, "run": {"eval_every": 0}}))
    assert "max_t is not a setting of the 'pbt' scheduler" in error_of(spec(scheduler={"name": "pbt", "max_t": 3}))
    assert "scheduler: grace_period=5 exceeds max_t=2" in error_of(spec(scheduler={"max_t": 2, "grace_period": 5}))


def test_pbt_may_only_mutate_what_a_checkpoint_can_continue_with():
    space = {"data.ways": {"choice": [3, 5]}, "outer.lr": {"loguniform": [0.001, 0.01]}}
    text = {"base": {"data": {"source": "csv:x.csv", "ways": 3}, "resources": {"workers": 1}, "run": {"eval_every": 1}},
            "search_space": space, "num_samples": 2,
            "scheduler": {"name": "pbt", "hyperparam_mutations": ["data.ways", "outer.lr"]}}
    assert "scheduler.hyperparam_mutations: 'data.ways' changes the meta-parameters" in error_of(text)
    assert "PBT needs a population of at least 2" in error_of(spec(scheduler={"name": "pbt"}, num_samples=1))
    ok = load_search({**text, "scheduler": {"name": "pbt"}})  # default mutations: the mutable keys only
    assert set(ok.mutations()) == {"outer.lr"}


def test_base_path_is_relative_to_the_yaml_and_overrides_split(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(SINUSOID_BASE))
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(spec(base="base.yaml", storage_path=str(tmp_path / "st"))))
    s = load_search(tmp_path / "tune.yaml", ["num_samples=7", "train.steps=9", "scheduler.max_t=4"])
    assert s.spec.num_samples == 7 and s.spec.scheduler.max_t == 4 and s.base["train"]["steps"] == 9
    assert s.experiment_path == tmp_path / "st" / "tune"


def test_trial_config_and_resources():
    cfg = load_config(None, ["data.source=sinusoid", "model.name=mlp", "algorithm.name=maml", "resources.workers=3", "resources.cpus_per_worker=0.5",
                             "resources.gpus_per_worker=0.25"])
    pgf = trial_resources(cfg, driver_cpus=1)
    assert pgf.bundles == [{"CPU": 1.0}] + [{"CPU": 0.5, "GPU": 0.25}] * 3
    no_driver = trial_resources(cfg, driver_cpus=0)
    assert no_driver.head_bundle_is_empty and no_driver.bundles == [{"CPU": 0.5, "GPU": 0.25}] * 3
    raw = trial_config({"_base": {"algorithm": {"name": "maml"}}, "algorithm.inner_lr": 0.3, "outer": {"lr": 0.1}})
    assert raw == {"algorithm": {"name": "maml", "inner_lr": 0.3}, "outer": {"lr": 0.1}}


def test_workers_take_the_last_bundles_of_a_trial_placement_group():
    from distmeta.distributed.plan import worker_bundles as _worker_bundles

    w = {"CPU": 0.5}
    assert _worker_bundles([{"CPU": 1.0}, w, w], 2, w) == 1  # driver bundle first
    assert _worker_bundles([w, w], 2, w) == 0  # empty driver bundle: dropped by Tune
    with pytest.raises(ConfigError, match="no room for 3 workers"):
        _worker_bundles([w, w], 3, w)
    with pytest.raises(ConfigError, match="no room for 2 workers"):
        _worker_bundles([{"CPU": 1.0}, {"CPU": 0.25}, w], 2, w)


def test_cli_tune_refuses_a_bad_search_before_ray_starts(tmp_path, capsys):
    import ray

    from distmeta.cli import main

    bad = tmp_path / "tune.yaml"
    bad.write_text(yaml.safe_dump(spec(search_space={"outer.lr": {"loguniform": [0.1, 0.01]}})))
    started = ray.is_initialized()
    assert main(["tune", "--config", str(bad)]) == 2
    assert "search_space.outer.lr.loguniform: low must be below high" in capsys.readouterr().err
    assert ray.is_initialized() == started
