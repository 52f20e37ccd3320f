"""The Ray-free Worker: group results equal the algorithm's own per-task sums."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from distmeta.config import load_config
from distmeta.experiment import prepare_experiment
from distmeta.worker import Worker
from tests.helpers import SINUSOID_TINY, text_tiny, write_tiny_csv


def _grads_by_task(worker, meta, specs):
    return [worker.meta_grad(meta, [s]).grad for s in specs]


def test_group_gradient_is_the_sum_of_its_tasks(tmp_path):
    cfg = load_config(None, [*text_tiny(write_tiny_csv(tmp_path / "d.csv")), "dtype=float64", "algorithm.name=maml"])
    exp = prepare_experiment(cfg)
    worker = Worker(cfg, **exp.worker_args())
    meta = {n: t.numpy() for n, t in worker.initial_meta.items()}
    specs = exp.sampler("train").batch(0, 4)
    group = worker.meta_grad(meta, specs)
    singles = _grads_by_task(worker, meta, specs)
    for n in meta:
        np.testing.assert_allclose(group.grad[n], sum(s[n] for s in singles), rtol=1e-10, atol=1e-12)
    assert group.tasks == [(0, i) for i in range(4)]
    assert len(group.metrics["loss"]) == 4 and group.finite


def test_two_workers_build_identical_replicas():
    cfg = load_config(None, SINUSOID_TINY)
    a, b = Worker(cfg), Worker(cfg)
    for n in a.initial_meta:
        assert torch.equal(a.initial_meta[n], b.initial_meta[n])


def test_sinusoid_tasks_are_materialised_from_specs():
    cfg = load_config(None, SINUSOID_TINY)
    exp = prepare_experiment(cfg)
    spec = exp.sampler("train").sample(3, 1)
    batch = Worker(cfg).builder.build([spec])
    x = torch.tensor(spec.support_x, dtype=torch.float64)
    want = spec.amplitude * torch.sin(x - spec.phase)
    torch.testing.assert_close(batch["support_y"][0, :, 0].double(), want, rtol=1e-6, atol=1e-6)


def test_specs_are_a_pure_function_of_seed_step_index(tmp_path):
    cfg = load_config(None, text_tiny(write_tiny_csv(tmp_path / "d.csv")))
    exp = prepare_experiment(cfg)
    s1 = exp.sampler("train").batch(5, 4)
    s2 = [exp.sampler("train").sample(5, i) for i in (3, 1, 0, 2)]
    assert s1[3] == s2[0] and s1[1] == s2[1]
    assert exp.sampler("train").batch(6, 4) != s1
    assert set(exp.sampler("test").sample(0, 0).classes) <= set(exp.split.test)


def test_cached_features_give_the_same_evaluation(tmp_path):
    # ProtoNet and head-only adaptation reuse encoder features across episodes; the numbers must not change.
    csv_path = write_tiny_csv(tmp_path / "d.csv")
    for algorithm in ("protonet", "anil"):
        cfg = load_config(None, [*text_tiny(csv_path), "dtype=float64", f"algorithm.name={algorithm}"])
        exp = prepare_experiment(cfg)
        worker = Worker(cfg, **exp.worker_args())
        meta = {n: t.numpy() for n, t in worker.initial_meta.items()}
        specs = exp.sampler("test").batch(0, 6)
        plain = worker.evaluate(meta, specs, inner_steps=2)
        cached = worker.evaluate(meta, specs, inner_steps=2, cache_key="k")
        again = worker.evaluate(meta, specs[:3], inner_steps=2, cache_key="k")
        np.testing.assert_allclose(cached["loss"], plain["loss"], rtol=1e-9)
        np.testing.assert_allclose(cached["accuracy"], plain["accuracy"])
        np.testing.assert_allclose(again["loss"], plain["loss"][:3], rtol=1e-9)


def test_bf16_autocast_gradient_is_close_to_fp32(tmp_path):
    csv_path = write_tiny_csv(tmp_path / "d.csv")
    grads = {}
    for precision in ("fp32", "bf16"):
        cfg = load_config(None, [*text_tiny(csv_path), "algorithm.name=maml", f"precision={precision}"])
        exp = prepare_experiment(cfg)
        worker = Worker(cfg, **exp.worker_args())
        meta = {n: t.numpy() for n, t in worker.initial_meta.items()}
        result = worker.meta_grad(meta, exp.sampler("train").batch(0, 4))
        assert result.finite
        grads[precision] = np.concatenate([g.ravel() for g in result.grad.values()])
    cos = grads["fp32"] @ grads["bf16"] / (np.linalg.norm(grads["fp32"]) * np.linalg.norm(grads["bf16"]))
    assert cos > 0.95, cos
    assert not np.array_equal(grads["fp32"], grads["bf16"])  # autocast really ran in bf16


def test_vmap_auto_picks_by_adapted_parameter_count(tmp_path):
    # vmap: auto batches a group under vmap unless each task adapts more than
    # algorithm.vmap_max_params parameters; ProtoNet adapts nothing and always batches.
    csv_path = write_tiny_csv(tmp_path / "d.csv")
    cases = {
        ("protonet", "0"): True,
        ("anil", "1000"): True,  # only the head (51 parameters) is adapted
        ("maml", "1000000"): True,
        ("maml", "1000"): False,  # the tiny bag adapts all its ~3.6K parameters
    }
    for (name, limit), want in cases.items():
        cfg = load_config(None, [*text_tiny(csv_path), f"algorithm.name={name}", f"algorithm.vmap_max_params={limit}"])
        worker = Worker(cfg, **prepare_experiment(cfg).worker_args())
        assert cfg.algorithm.vmap == "auto"
        assert worker.use_vmap is want, (name, limit, worker.algorithm.adapted_numel())
    cfg = load_config(None, [*text_tiny(csv_path), "algorithm.name=maml", "algorithm.vmap=false"])
    assert Worker(cfg, **prepare_experiment(cfg).worker_args()).use_vmap is False
    cfg = load_config(None, [*text_tiny(csv_path), "algorithm.name=maml", "algorithm.vmap=true", "algorithm.vmap_max_params=0"])
    assert Worker(cfg, **prepare_experiment(cfg).worker_args()).use_vmap is True


def test_default_sized_models_choose_the_faster_path():
    # The rule's thresholds on the shipped models: the default ProtoNet batches; MAML adapting
    # a 4000 x 64 embedding (~260K) loops; MAML on the sinusoid MLP (1.8K) vmaps.
    from distmeta.algorithms import build_algorithm
    from distmeta.models import build_model

    for overrides, vocab, want in [
        ([], 8000, True),
        (["model.dim=64", "algorithm.name=maml"], 4000, False),
        (SINUSOID_TINY, 0, True),
    ]:
        cfg = load_config(None, [*overrides, "resources.workers=0"])
        out = 1 if cfg.data.is_regression else cfg.data.ways
        algorithm, _ = build_algorithm(cfg, build_model(cfg, vocab, out))
        assert algorithm.prefers_vmap(cfg.algorithm.vmap_max_params) is want, overrides


def test_by_ways_copies_prototype_algorithms_and_refuses_other_ways_for_fixed_heads(tmp_path):
    from distmeta.algorithms.by_ways import ByWays

    csv_path = write_tiny_csv(tmp_path / "d.csv")

    def worker(name: str) -> Worker:
        cfg = load_config(None, [*text_tiny(csv_path), f"algorithm.name={name}"])
        return Worker(cfg, **prepare_experiment(cfg).worker_args())

    proto = worker("protonet")
    by_ways = ByWays(proto.algorithm)
    assert by_ways(3) is proto.algorithm and by_ways(None) is proto.algorithm  # its own ways; tasks without ways
    five = by_ways(5)
    assert five is not proto.algorithm and five.ways == 5 and by_ways(5) is five and proto.algorithm.ways == 3
    assert five.model is proto.algorithm.model  # a shallow copy: one network
    maml = ByWays(worker("maml").algorithm)
    with pytest.raises(ValueError, match="maml has a 3-way head"):
        maml(5)
    sine = ByWays(Worker(load_config(None, SINUSOID_TINY)).algorithm)
    assert sine(7) is sine.base  # one regression output, whatever the ways


def test_eval_features_are_kept_only_for_the_rows_evaluated(tmp_path):
    csv_path = write_tiny_csv(tmp_path / "d.csv")
    cfg = load_config(None, [*text_tiny(csv_path), "algorithm.name=protonet"])
    exp = prepare_experiment(cfg)
    worker = Worker(cfg, **exp.worker_args())
    meta = {n: t.numpy() for n, t in worker.initial_meta.items()}
    specs = exp.sampler("test").batch(0, 2)
    worker.evaluate(meta, specs, inner_steps=0, cache_key="k")
    rows = {r for s in specs for part in (s.support, s.query) for group in part for r in group}
    assert set(worker._features.slot) == rows and len(rows) < len(exp.corpus)
    worker.evaluate(meta, specs[:1], inner_steps=0, cache_key="other")
    assert len(worker._features.slot) < len(rows)  # a new parameter set starts an empty bank


def test_the_worker_reads_the_shared_corpus_in_place_and_pads_only_episode_rows(tmp_path):
    csv_path = write_tiny_csv(tmp_path / "d.csv")
    cfg = load_config(None, [*text_tiny(csv_path), "algorithm.name=protonet"])
    exp = prepare_experiment(cfg)
    worker = Worker(cfg, **exp.worker_args())
    assert worker.builder.corpus is exp.corpus and worker.builder.corpus.ids.dtype == np.uint8  # no private copy
    spec = exp.sampler("train").sample(0, 0)
    batch = worker.builder.build([spec])
    rows = [r for group in spec.support for r in group]
    longest = max(int(exp.corpus.offsets[r + 1]) - int(exp.corpus.offsets[r]) for r in rows)
    assert longest < cfg.data.max_length, "the tiny texts are shorter than max_length: the test needs that"
    assert batch["support_x"].dtype == torch.long and batch["support_x"].shape[-1] == longest, \
        "padded to the episode rows' longest text, not to max_length"
    np.testing.assert_array_equal(batch["support_x"][0].numpy(), exp.corpus.padded(rows)[:, :longest])
    assert not exp.corpus.padded(rows)[:, longest:].any(), "what was cut is padding only"
