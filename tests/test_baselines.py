"""The baselines every meta-test prints, against hand-written references on random embeddings."""
from __future__ import annotations

import pytest
import torch

from distmeta.baselines import baseline_metrics, centroid_accuracy, error_reduction, finetune_accuracy
from distmeta.config import load_config
from distmeta.runtime.driver import Trainer
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


def test_meta_test_with_a_fine_tuned_head_reports_both(tmp_path):
    csv = write_tiny_csv(tmp_path / "d.csv")
    cfg = load_config(None, [*text_tiny(csv), *QUIET, "algorithm.name=protonet", "eval.baseline=true",
                             "eval.finetune_head=true", f"run.dir={tmp_path / 'run'}"])
    with Trainer(cfg) as t:
        r = t.fit()
    test, base = r["test"]["3way_1shot"], r["before_meta_training"]["3way_1shot"]
    assert {"accuracy", "ci95", "accuracy_centroid", "error_reduction"} <= set(test)
    assert {"accuracy", "accuracy_euclidean", "accuracy_finetune"} <= set(base)
