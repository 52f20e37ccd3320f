"""ProtoNet and Reptile against hand-written references."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distmeta.tasks.materialise import split_task
from tests.algorithms.conftest import PATHS, grad_via, make_algorithm, manual_forward


@pytest.mark.parametrize("path", PATHS)
def test_protonet_gradient_matches_reference(tasks, path):
    alg, meta = make_algorithm("protonet")
    assert not any(n.startswith("head.") for n in meta), "the unused head must not be meta-trained"
    task = split_task(tasks, 0)
    got, metrics = grad_via(alg, meta, task, path)

    leaves = {n: p.clone().requires_grad_(True) for n, p in meta.items()}
    s = manual_forward(leaves, task["support_x"], head=False)
    q = manual_forward(leaves, task["query_x"], head=False)
    protos = torch.stack([s[task["support_y"] == c].mean(0) for c in range(3)])
    logits = -torch.cdist(q, protos) ** 2
    loss = F.cross_entropy(logits, task["query_y"])
    want = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
    for n in meta:
        torch.testing.assert_close(got[n], want[n], atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(metrics["loss"], loss.detach())
    acc = (logits.argmax(-1) == task["query_y"]).double().mean()
    torch.testing.assert_close(metrics["accuracy"], acc)


def test_reptile_gradient_is_the_displacement_of_inner_sgd(tasks):
    alg, meta = make_algorithm("reptile", steps=3, lr=0.2)
    task = split_task(tasks, 0)
    got, _ = alg.task_grad(meta, task)
    fast = {n: p.clone() for n, p in meta.items()}
    for _ in range(3):
        leaves = {n: p.clone().requires_grad_(True) for n, p in fast.items()}
        loss = F.cross_entropy(manual_forward(leaves, task["support_x"]), task["support_y"])
        grads = torch.autograd.grad(loss, list(leaves.values()))
        fast = {n: fast[n] - 0.2 * g for n, g in zip(leaves, grads)}
    for n in meta:
        torch.testing.assert_close(got[n], meta[n] - fast[n], atol=1e-12, rtol=1e-10)
