"""The baselines every meta-test prints, against hand-written references on random embeddings."""
from __future__ import annotations

import math

import pytest
import torch

from distmeta.baselines import (
    baseline_metrics,
    centroid_accuracy,
    error_reduction,
    finetune_accuracy,
    transductive_accuracy,
)
from distmeta.config import load_config
from distmeta.errors import ConfigError
from distmeta.training.trainer import Trainer
from tests.helpers import QUIET, text_tiny, write_tiny_csv


def episodes(tasks=6, ways=4, shots=3, queries=5, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(tasks, ways, dim, generator=g) * 2
    sy = torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1)
    qy = torch.arange(ways).repeat_interleave(queries).repeat(tasks, 1)
    s = centres.gather(1, sy.unsqueeze(-1).expand(-1, -1, dim)) + torch.randn(tasks, ways * shots, dim, generator=g) * 2
    q = centres.gather(1, qy.unsqueeze(-1).expand(-1, -1, dim)) + torch.randn(tasks, ways * queries, dim, generator=g) * 2
    return s.double(), sy, q.double(), qy


def reference_centroid(s, sy, q, qy, ways, cosine):
    """One episode at a time: (normalised) class means, nearest by cosine or squared Euclidean."""
    accs = []
    for t in range(len(s)):
        st, qt = (torch.nn.functional.normalize(s[t], dim=-1), torch.nn.functional.normalize(q[t], dim=-1)) if cosine else (s[t], q[t])
        means = torch.stack([st[sy[t] == c].mean(0) for c in range(ways)])
        if cosine:
            pred = torch.nn.functional.cosine_similarity(qt[:, None], means[None], dim=-1).argmax(-1)
        else:
            pred = torch.cdist(qt, means).argmin(-1)
        accs.append((pred == qy[t]).double().mean())
    return torch.stack(accs)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_centroid_accuracy_matches_reference(distance):
    s, sy, q, qy = episodes()
    got = centroid_accuracy(s, sy, q, qy, 4, distance)
    want = reference_centroid(s, sy, q, qy, 4, distance == "cosine")
    torch.testing.assert_close(got, want)
    assert 0.3 < float(want.mean()) < 1.0  # a non-trivial problem: the check can fail


def test_finetune_starts_at_the_cosine_centroid_and_fits_the_support_set():
    s, sy, q, qy = episodes(shots=5)
    torch.testing.assert_close(finetune_accuracy(s, sy, q, qy, 4, steps=0), centroid_accuracy(s, sy, q, qy, 4, "cosine"))
    on_support = finetune_accuracy(s, sy, s, sy, 4, steps=100)
    assert float(on_support.mean()) >= float(centroid_accuracy(s, sy, s, sy, 4, "cosine").mean())
    assert float(on_support.mean()) > 0.95  # 100 steps fit 20 support examples of 8 dimensions


def test_episodes_are_independent():
    s, sy, q, qy = episodes()
    together = baseline_metrics(s, sy, q, qy, 4)
    for t in (0, 3):
        alone = baseline_metrics(s[t : t + 1], sy[t : t + 1], q[t : t + 1], qy[t : t + 1], 4)
        for k in together:
            assert float(alone[k][0]) == pytest.approx(float(together[k][t]), abs=1e-6), k


def test_error_reduction():
    assert error_reduction(0.85, 0.80) == pytest.approx(0.25)
    assert error_reduction(0.70, 0.80) == pytest.approx(-0.5)


def test_error_reduction_against_a_flawless_baseline_is_not_a_number_and_prints_n_a():
    """Both at 100 %: no error to reduce, so no +100 % (issue 26 item 4); shown as n/a."""
    from distmeta.training.evaluation import format_results

    assert math.isnan(error_reduction(1.0, 1.0)) and math.isnan(error_reduction(0.9, 1.0))
    r = {"5way_1shot": {"accuracy": 1.0, "accuracy_ci95": 0.0, "episodes": 10.0}}
    b = {"5way_1shot": {"accuracy": 1.0, "accuracy_ci95": 0.0, "episodes": 10.0}}
    from distmeta.training.evaluation import add_error_reduction

    add_error_reduction(r, b)
    line = format_results(r, b)
    assert "error reduction vs frozen n/a" in line and "+100" not in line, line


def test_meta_test_with_a_fine_tuned_head_reports_both(tmp_path):
    csv = write_tiny_csv(tmp_path / "d.csv")
    cfg = load_config(None, [*text_tiny(csv), *QUIET, "algorithm.name=protonet", "eval.baseline=true",
                             "eval.finetune_head=true", f"run.dir={tmp_path / 'run'}"])
    with Trainer(cfg) as t:
        r = t.fit()
    test, base = r["test"]["3way_1shot"], r["before_meta_training"]["3way_1shot"]
    assert {"accuracy", "ci95", "accuracy_centroid", "error_reduction"} <= set(test)
    assert {"accuracy", "accuracy_euclidean", "accuracy_finetune"} <= set(base)


def reference_transductive(s, sy, q, qy, ways, steps, scale=10.0):
    """One episode and one query at a time: soft k-means over normalised features, written out with loops."""
    accs = []
    for t in range(len(s)):
        st, qt = torch.nn.functional.normalize(s[t], dim=-1), torch.nn.functional.normalize(q[t], dim=-1)
        protos = [torch.nn.functional.normalize(st[sy[t] == c].mean(0), dim=0) for c in range(ways)]
        for _ in range(steps):
            weights = [torch.softmax(torch.stack([scale * (x @ p) for p in protos]), 0) for x in qt]
            protos = []
            for c in range(ways):
                total = st[sy[t] == c].sum(0) + sum(w[c] * x for w, x in zip(weights, qt))
                count = (sy[t] == c).sum() + sum(w[c] for w in weights)
                protos.append(torch.nn.functional.normalize(total / count, dim=0))
        pred = torch.stack([torch.stack([x @ p for p in protos]).argmax() for x in qt])
        accs.append((pred == qy[t]).double().mean())
    return torch.stack(accs)


@pytest.mark.parametrize("steps", [0, 1, 3])
def test_transductive_accuracy_matches_a_per_query_reference(steps):
    s, sy, q, qy = episodes(shots=1, queries=6)
    got = transductive_accuracy(s, sy, q, qy, 4, steps)
    torch.testing.assert_close(got, reference_transductive(s.float(), sy, q.float(), qy, 4, steps))
    if steps == 0:
        torch.testing.assert_close(got, centroid_accuracy(s, sy, q, qy, 4, "cosine"))


def test_transduction_recovers_a_query_that_an_outlying_support_example_misplaces():
    # Classes at 0 and 90 degrees; class 1's one support example lies at 50, so the cosine
    # centroid sends the class-0 query at 30 to class 1. Class 1's queries at 85 and 90 pull
    # its prototype back: the refined classifier gets every query right.
    def at(*degrees):
        return torch.tensor([[[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in degrees]])

    s, sy = at(0, 50), torch.tensor([[0, 1]])
    q, qy = at(0, 5, 30, 85, 90), torch.tensor([[0, 0, 0, 1, 1]])
    assert float(centroid_accuracy(s, sy, q, qy, 2, "cosine")) == pytest.approx(0.8)
    assert float(transductive_accuracy(s, sy, q, qy, 2, 3)) == 1.0


def test_transductive_needs_an_encoder_fixed_while_adapting():
    with pytest.raises(ConfigError, match="eval.transductive"):
        load_config(None, ["algorithm.name=maml", "eval.transductive=3"])
    assert load_config(None, ["algorithm.name=maml", "algorithm.adapt=head", "eval.transductive=3"]).eval.transductive == 3


def test_meta_test_scores_both_encoders_transductively_on_the_same_episodes(tmp_path):
    csv = write_tiny_csv(tmp_path / "d.csv")
    base = [*text_tiny(csv), *QUIET, "algorithm.name=protonet", "eval.baseline=true"]
    results = {}
    for steps in (0, 3):
        cfg = load_config(None, [*base, f"eval.transductive={steps}", f"run.dir={tmp_path / f'run{steps}'}"])
        with Trainer(cfg) as t:
            results[steps] = t.fit()
    plain, trans = results[0]["test"]["3way_1shot"], results[3]["test"]["3way_1shot"]
    frozen = results[3]["before_meta_training"]["3way_1shot"]
    assert "accuracy_transductive" not in plain and "accuracy_transductive" in frozen
    # The option adds figures and changes none: same training, same episodes.
    assert trans["accuracy"] == plain["accuracy"]
    assert 0.0 <= trans["accuracy_transductive"] <= 1.0
    want = 1 - (1 - trans["accuracy_transductive"]) / (1 - frozen["accuracy_transductive"])
    assert trans["error_reduction_transductive"] == pytest.approx(want)
