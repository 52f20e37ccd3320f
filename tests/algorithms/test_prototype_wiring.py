"""Config keys, build_algorithm and the worker for the prototype classifiers (ProtoNet, Proto-MAML)."""
from __future__ import annotations

import numpy as np
import pytest

from distmeta.algorithms import ProtoMAML, ProtoNet, build_algorithm, resolve_distance
from distmeta.config import PRETRAINED_MODELS, load_config
from distmeta.errors import ConfigError
from distmeta.experiment import prepare_experiment
from distmeta.models import build_model
from distmeta.worker import Worker
from tests.helpers import SINUSOID_TINY, text_tiny, write_tiny_csv


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory):
    return write_tiny_csv(tmp_path_factory.mktemp("proto") / "d.csv")


def test_distance_auto_is_cosine_for_pretrained_encoders_only(csv_path):
    assert set(PRETRAINED_MODELS) == {"minilm", "hf"}
    bag = load_config(None, [*text_tiny(csv_path), "algorithm.name=protonet"])
    assert bag.algorithm.distance == "auto" and resolve_distance(bag) == "euclidean"
    minilm = load_config(None, [*text_tiny(csv_path), "algorithm.name=protonet", "model.name=minilm",
                                "tokenizer.kind=pretrained"])
    assert resolve_distance(minilm) == "cosine"
    for chosen in ("euclidean", "cosine"):
        assert resolve_distance(load_config(None, [*text_tiny(csv_path), f"algorithm.distance={chosen}"])) == chosen


def test_new_algorithm_keys_are_validated(csv_path):
    cfg = load_config(None, [*text_tiny(csv_path), "algorithm.name=protomaml"])
    a = cfg.algorithm
    assert (a.temperature, a.learn_temperature, a.first_order, a.prototype_head) == (10.0, True, False, True)
    for bad, field in [("algorithm.temperature=0", "algorithm.temperature"),
                       ("algorithm.distance=manhattan", "algorithm.distance")]:
        with pytest.raises(ConfigError, match=field):
            load_config(None, [*text_tiny(csv_path), bad])
    with pytest.raises(ConfigError, match="protomaml needs a classification source"):
        load_config(None, [*SINUSOID_TINY, "algorithm.name=protomaml"])


def test_protomaml_mixture_may_mix_numbers_of_ways(csv_path):
    mixture = f"data.mixture=[{{source: 'csv:{csv_path}'}}, {{source: 'csv:{csv_path}', ways: 2}}]"
    load_config(None, [*text_tiny(csv_path), "algorithm.name=protomaml", mixture])
    with pytest.raises(ConfigError, match="one 3-way head"):
        load_config(None, [*text_tiny(csv_path), "algorithm.name=maml", mixture])


@pytest.mark.parametrize("name, cls", [("protonet", ProtoNet), ("protomaml", ProtoMAML)])
def test_build_algorithm_passes_the_prototype_options(csv_path, name, cls):
    cfg = load_config(None, [*text_tiny(csv_path), f"algorithm.name={name}", "algorithm.distance=cosine",
                             "algorithm.temperature=5", "algorithm.first_order=true", "algorithm.adapt=head"])
    exp = prepare_experiment(cfg)
    algorithm, meta = build_algorithm(cfg, build_model(cfg, exp.worker_args()["vocab_size"], 3))
    assert isinstance(algorithm, cls) and algorithm.distance == "cosine" and algorithm.any_ways
    assert not any(n.startswith("head.") for n in meta), "the model's head is unused"
    assert meta["temperature"].tolist() == [5.0]
    assert "temperature" not in algorithm.model_params(meta)
    if cls is ProtoMAML:
        assert algorithm.first_order and algorithm.head_only


@pytest.mark.parametrize("adapt", ["head", "all"])
def test_worker_runs_protomaml_on_any_number_of_ways(csv_path, adapt):
    cfg = load_config(None, [*text_tiny(csv_path), "dtype=float64", "algorithm.name=protomaml",
                             f"algorithm.adapt={adapt}", "algorithm.distance=cosine"])
    exp = prepare_experiment(cfg)
    worker = Worker(cfg, **exp.worker_args())
    meta = {n: t.numpy() for n, t in worker.initial_meta.items()}
    result = worker.meta_grad(meta, exp.sampler("train").batch(0, 4))
    assert result.finite and np.abs(result.grad["temperature"]).sum() > 0
    for ways in (2, 3):
        specs = exp.sampler("test", ways=ways, shots=1, queries=3).batch(0, 4)
        plain = worker.evaluate(meta, specs, inner_steps=2)
        cached = worker.evaluate(meta, specs, inner_steps=2, cache_key="k")  # head-only reuses features
        assert len(plain["accuracy"]) == 4
        np.testing.assert_allclose(cached["loss"], plain["loss"], rtol=1e-9)


def test_worker_refuses_other_ways_for_a_fixed_head(csv_path):
    cfg = load_config(None, [*text_tiny(csv_path), "algorithm.name=maml"])
    exp = prepare_experiment(cfg)
    worker = Worker(cfg, **exp.worker_args())
    meta = {n: t.numpy() for n, t in worker.initial_meta.items()}
    with pytest.raises(ValueError, match="3-way head"):
        worker.evaluate(meta, exp.sampler("test", ways=2, shots=1, queries=3).batch(0, 2), inner_steps=1)
