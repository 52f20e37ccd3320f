"""Task mixtures (``data.mixture``): deterministic weighted sampling, per-source shapes and data, training."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import distmeta
from distmeta.config import load_config
from distmeta.errors import ConfigError
from distmeta.experiment import prepare_experiment
from distmeta.tasks.materialise import by_source
from tests.helpers import QUIET, SINUSOID_TINY, text_tiny, write_tiny_csv

SINE_MIX = ("data.mixture=[{source: sinusoid, weight: 0.7, shots: 3, queries: 4}, "
            "{source: sinusoid, weight: 0.3, sinusoid: {amplitude: [0.1, 1.0]}}]")


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    d = tmp_path_factory.mktemp("mix")
    return write_tiny_csv(d / "a.csv"), write_tiny_csv(d / "b.csv", per_class=12, seed=3)


def text_mix(a, b, *extra: str) -> list[str]:
    return [*text_tiny(a), *QUIET, "data.ways=2", "eval.settings=[[2,1]]", "data.split.train=0.5",
            "data.split.val=0.25", "data.split.test=0.25",
            f"data.mixture=[{{source: 'csv:{a}', weight: 0.6}}, {{source: 'csv:{b}', weight: 0.4, shots: 2}}]", *extra]


def test_mixture_sampling_is_a_weighted_pure_function_of_seed_step_index():
    cfg = load_config(None, [*SINUSOID_TINY, SINE_MIX])
    one, two = prepare_experiment(cfg).sampler("train"), prepare_experiment(cfg).sampler("train")
    batch = one.batch(5, 64)
    assert batch == two.batch(5, 64), "another sampler (another process) draws the same tasks"
    assert batch[:16] == one.batch(5, 16) and one.sample(5, 40) == batch[40], "independent of batch size and order"
    assert batch != one.batch(6, 64)
    draws = [s.source for step in range(40) for s in one.batch(step, 50)]
    assert abs(np.mean(np.array(draws) == 0) - 0.7) < 0.04, "components drawn by weight"
    for s in batch:  # each component keeps its own shape and family
        assert (len(s.support_x), len(s.query_x)) == ((3, 4) if s.source == 0 else (5, 5))
        assert s.amplitude <= 1.0 or s.source == 0
    other_seed = load_config(None, [*SINUSOID_TINY, SINE_MIX, "seed=1"])
    assert prepare_experiment(other_seed).sampler("train").batch(5, 64) != batch
    val = prepare_experiment(cfg).sampler("val").batch(5, 64)
    assert {(s.amplitude, s.phase) for s in val}.isdisjoint({(s.amplitude, s.phase) for s in batch})


def test_worker_materialises_each_source_from_its_own_data_and_sums_the_group(corpora):
    a, b = corpora
    cfg = load_config(None, text_mix(a, b, "algorithm.name=protonet", "data.split.train=0.625", "data.split.val=0",
                                     "data.split.test=0.375",
                                     f"data.mixture=[{{source: 'csv:{a}'}}, {{source: 'csv:{b}', ways: 3, shots: 2}}]"))
    exp = prepare_experiment(cfg)
    specs = exp.sampler("train").batch(3, 12)
    assert {s.source for s in specs} == {0, 1}
    for s in specs:  # rows of the source's own corpus, classes of its own meta-train split
        part = exp.sources[s.source]
        assert set(s.classes) <= set(part.split.train)
        assert all(part.data.labels[r] == c for c, rows in zip(s.classes, s.support) for r in rows)
        assert (s.ways, s.shots) == ((2, 1) if s.source == 0 else (3, 2))
    worker = distmeta.Worker(cfg, **exp.worker_args())
    parts = [worker.builder.build(part) for _, part in by_source(specs)]  # one stacked batch per source
    assert [tuple(t["support_x"].shape[:2]) for t in parts] == [
        (sum(s.source == 0 for s in specs), 2), (sum(s.source == 1 for s in specs), 6)]
    for c, t in enumerate(parts):  # a source's rows come from its own block of the shared corpus
        first = next(s for s in specs if s.source == c)
        want = exp.corpus.padded(exp.corpus.global_rows(c, first.support[0]))
        width = t["support_x"].shape[-1]  # the group is padded to its longest text, not max_length
        assert not want[:, width:].any(), "only padding is cut"
        assert torch.equal(t["support_x"][0, : len(first.support[0])], torch.from_numpy(want[:, :width]))
    meta = {n: t.numpy() for n, t in worker.initial_meta.items()}
    mixed = worker.meta_grad(meta, specs)
    parts = [worker.meta_grad(meta, [s for s in specs if s.source == c]) for c in (0, 1)]
    for n in mixed.grad:  # the group's gradient is the sum of its sources' (one vmap per source)
        np.testing.assert_allclose(mixed.grad[n], parts[0].grad[n] + parts[1].grad[n], rtol=1e-5, atol=1e-6)
    by_task = {k: v for p in parts for k, v in zip(p.tasks, p.metrics["loss"])}
    assert mixed.tasks == [(3, i) for i in range(12)]
    np.testing.assert_allclose(mixed.metrics["loss"], [by_task[k] for k in mixed.tasks], rtol=1e-5)


def test_text_mixture_trains_validates_and_meta_tests_then_evaluates_from_checkpoint(corpora, tmp_path):
    a, b = corpora
    run = tmp_path / "run"
    cfg = load_config(None, text_mix(a, b, "algorithm.name=fomaml", "run.eval_every=2", "eval.val_episodes=6",
                                     f"run.dir={run}"))
    seen = []
    with distmeta.Trainer(cfg, callbacks=[lambda e, t, p: seen.append(e)]) as trainer:
        results = trainer.fit()
    assert "validation" in seen and 0 <= results["test"]["2way_1shot"]["accuracy"] <= 1
    for name in ("split_0.json", "split_1.json", "tokenizer.json"):
        assert (run / name).exists(), name
    for c in (0, 1):
        saved = json.loads((run / f"split_{c}.json").read_text())
        assert [len(saved[k]) for k in ("train", "val", "test")] == [4, 2, 2]
    with distmeta.Trainer.from_checkpoint(run, trust_config=True) as again:  # the saved splits and tokenizer rebuild the same tasks
        res = again.evaluate(episodes=10, baseline=False)
    assert res["test"]["2way_1shot"] == results["test"]["2way_1shot"]


def test_sinusoid_family_mixture_trains_through_the_backend(tmp_path):
    from distmeta.training.in_process import LocalBackend

    cfg = load_config(None, [*SINUSOID_TINY, *QUIET, SINE_MIX, f"run.dir={tmp_path / 'run'}"])
    exp = prepare_experiment(cfg)
    backend = LocalBackend(cfg, exp.worker_args())
    specs = exp.sampler("train").batch(0, 8)
    result = backend.compute({n: t.numpy() for n, t in backend.initial_meta.items()}, [specs[:4], specs[4:]], 0)
    assert [r.tasks for r in result] == [[(0, i) for i in range(4)], [(0, i) for i in range(4, 8)]]
    assert all(np.isfinite(r.grad[n]).all() for r in result for n in r.grad)
    with distmeta.Trainer(cfg) as trainer:
        before = {n: t.clone() for n, t in trainer.backend.initial_meta.items()} if trainer.backend else None
        results = trainer.fit()
        after = trainer.meta_params
    assert before is None and results["step"] == 3 and np.isfinite(results["test"]["5shot"]["loss"])
    assert any(not torch.equal(after[n], backend.initial_meta[n]) for n in after), "the outer loop moved the parameters"


def test_mixture_config_errors_name_the_source(corpora):
    a, b = corpora
    with pytest.raises(ConfigError, match=r"data.mixture.1.ways=2: maml has one 3-way head \(data.ways\)"):
        load_config(None, [*text_tiny(a), "algorithm.name=maml",
                           f"data.mixture=[{{source: 'csv:{a}'}}, {{source: 'csv:{b}', ways: 2}}]"])
    with pytest.raises(ConfigError, match=r"data.mixture.1.source='csv:.*a text source cannot join data.source=sinusoid"):
        load_config(None, [*SINUSOID_TINY, f"data.mixture=[{{source: sinusoid}}, {{source: 'csv:{a}'}}]"])
    with pytest.raises(ConfigError, match=r"data.mixture.0.source='sinusoid': sinusoid families need data.source=sinusoid"):
        load_config(None, [*text_tiny(a), "data.mixture=[{source: sinusoid}]"])
    with pytest.raises(ConfigError, match=r"unknown config key 'data.mixture.0.weigth'"):
        load_config(None, [*SINUSOID_TINY, "data.mixture=[{source: sinusoid, weigth: 2}]"])
