"""Texts are computed at their own width: a group at its longest text, a task of the loop path at its own.

Trailing padding changes no real token's result, so the meta-gradient must equal the one of
the same tasks padded to ``data.max_length``, computed here by a plain autograd MAML loop.
"""
from __future__ import annotations

import csv
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from distmeta.config import load_config
from distmeta.experiment import prepare_experiment
from distmeta.tasks.materialise import split_task, trim_padding
from distmeta.worker import Worker
from tests.helpers import WORDS


def test_trim_padding_cuts_only_columns_that_are_padding_in_every_row():
    ids = torch.tensor([[5, 6, 0, 0, 0], [7, 0, 0, 0, 0], [8, 9, 4, 0, 0]])
    assert trim_padding(ids).tolist() == [[5, 6, 0], [7, 0, 0], [8, 9, 4]]
    states = torch.zeros(2, 6, 3)
    states[0, :2] = 1.0
    states[1, :4] = 1.0
    assert trim_padding(states).shape == (2, 4, 3)
    sinusoid = torch.randn(5, 1)
    assert trim_padding(sinusoid) is sinusoid, "regression inputs are not text"
    assert trim_padding(torch.zeros(3, 4, dtype=torch.long)).shape == (3, 1), "at least one position"
    mpnet = torch.tensor([[0, 6, 2, 1, 1], [0, 2, 1, 1, 1]])  # <s> = 0 starts each row, <pad> = 1
    assert trim_padding(mpnet, pad_id=1).tolist() == [[0, 6, 2], [0, 2, 1]]
    assert trim_padding(mpnet).shape == mpnet.shape, "with pad 0 assumed nothing is cut (0 is only <s>)"


@pytest.fixture
def ragged_csv(tmp_path):
    """Eight topics, texts of 1 to 14 words: tasks whose longest texts differ."""
    rng = random.Random(0)
    path = tmp_path / "ragged.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for label, words in WORDS.items():
            vocab = words.split()
            for _ in range(12):
                w.writerow([" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 14))), label])
    return path


def reference_maml(module, params, tasks, lr: float, steps: int) -> dict[str, torch.Tensor]:
    """Second-order MAML summed over tasks, plain autograd, on the given (fully padded) inputs."""
    leaves = {n: p.detach().clone().requires_grad_() for n, p in params.items()}
    for sx, sy, qx, qy in tasks:
        fast = dict(leaves)
        for _ in range(steps):
            loss = F.cross_entropy(functional_call(module, fast, (sx,)), sy)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            fast = {n: p - lr * g for (n, p), g in zip(fast.items(), grads)}
        F.cross_entropy(functional_call(module, fast, (qx,)), qy).backward()
    return {n: p.grad for n, p in leaves.items()}


def transformer_maml(path, *extra: str):
    return load_config(None, [
        "resources.workers=0", f"data.source=csv:{path}", "model.name=transformer", "model.dim=16", "model.heads=2",
        "model.layers=1", "model.ff_dim=32", "tokenizer.vocab_size=200", "tokenizer.min_frequency=1",
        "data.max_length=24", "data.ways=3", "data.shots=2", "data.queries=3", "eval.queries=3", "eval.settings=[[3,2]]", "data.split.train=0.625",
        "data.split.val=0", "data.split.test=0.375", "algorithm.name=maml", "algorithm.inner_steps=2",
        "algorithm.inner_lr=0.3", "algorithm.vmap=false", "algorithm.group_size=4", "dtype=float64", *extra,
    ])


def test_the_loop_path_at_each_tasks_width_equals_maml_on_full_padding(ragged_csv):
    cfg = transformer_maml(ragged_csv)
    exp = prepare_experiment(cfg)
    worker = Worker(cfg, **exp.worker_args())
    specs = exp.sampler("train").batch(0, 4)
    batch = worker.builder.build(specs)
    widths = [split_task(batch, t)["support_x"].shape[-1] for t in range(4)]
    assert len(set(widths)) > 1 and max(widths) <= batch["support_x"].shape[-1] < cfg.data.max_length, \
        "the group is padded to its longest text and its tasks to theirs"
    meta = {n: t.numpy() for n, t in worker.initial_meta.items()}
    got = worker.meta_grad(meta, specs).grad

    sx, sy, qx, qy = worker.builder.rows(specs)
    full = lambda rows: torch.from_numpy(exp.corpus.padded(np.asarray(rows)))  # noqa: E731 - max_length wide
    tasks = [(full(sx[t]), torch.tensor(sy[t]), full(qx[t]), torch.tensor(qy[t])) for t in range(4)]
    assert tasks[0][0].shape[-1] == cfg.data.max_length
    want = reference_maml(worker.module, {n: torch.from_numpy(v) for n, v in meta.items()}, tasks, 0.3, 2)
    for n, w in want.items():
        np.testing.assert_allclose(got[n], w.numpy(), rtol=1e-9, atol=1e-12, err_msg=n)


def test_the_vmap_path_equals_the_loop_for_a_transformer(ragged_csv):
    """Second-order MAML adapting every LayerNorm: the group under vmap (one width) equals the loop (each
    task at its own width). torch's own layer_norm gets this wrong under vmap (distmeta.models.norm)."""
    loop_cfg = transformer_maml(ragged_csv, "model.layers=2")
    exp = prepare_experiment(loop_cfg)
    specs = exp.sampler("train").batch(0, 4)
    grads = []
    for vmap_on in (False, True):
        cfg = transformer_maml(ragged_csv, "model.layers=2", f"algorithm.vmap={str(vmap_on).lower()}")
        worker = Worker(cfg, **exp.worker_args())
        assert worker.use_vmap == vmap_on
        meta = {n: t.numpy() for n, t in worker.initial_meta.items()}
        grads.append(worker.meta_grad(meta, specs).grad)
    total = float(np.sqrt(sum((g ** 2).sum() for g in grads[0].values())))
    for n, want in grads[0].items():
        np.testing.assert_allclose(grads[1][n], want, rtol=1e-9, atol=1e-12 * total, err_msg=n)
