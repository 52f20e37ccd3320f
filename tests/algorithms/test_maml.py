"""MAML-family meta-gradients against plain autograd and float64 finite differences."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distmeta.tasks.materialise import split_task
from tests.algorithms.conftest import (
    PATHS,
    assert_matches_finite_differences,
    grad_via,
    make_algorithm,
    manual_forward,
    random_tasks,
)


def reference_query_loss(meta, task, *, steps, lr, first_order=False, optimizer="sgd", momentum=0.9,
                         adapt=None, lrs=None, loss=F.cross_entropy):
    """MAML as the tutorials write it: autograd.grad(create_graph=True) in a Python loop."""
    names = adapt or list(meta)
    fast = dict(meta)
    vel = {n: torch.zeros_like(meta[n]) for n in names}
    for _ in range(steps):
        support_loss = loss(manual_forward(fast, task["support_x"]), task["support_y"])
        grads = torch.autograd.grad(support_loss, [fast[n] for n in names], create_graph=not first_order)
        new = dict(fast)
        for n, g in zip(names, grads):
            if first_order:
                g = g.detach()
            step_lr = lrs[n] if lrs is not None else lr
            if optimizer == "sgd":
                upd = g
            else:
                vel[n] = momentum * vel[n] + g
                upd = g + momentum * vel[n] if optimizer == "nesterov" else vel[n]
            new[n] = fast[n] - step_lr * upd
        fast = new
    return loss(manual_forward(fast, task["query_x"]), task["query_y"])


def reference_grad(meta, task, **kw):
    leaves = {n: p.clone().requires_grad_(True) for n, p in meta.items()}
    model = {n: p for n, p in leaves.items() if not n.startswith("lr.")}
    if any(n.startswith("lr.") for n in meta):
        kw["lrs"] = {n[3:]: p for n, p in leaves.items() if n.startswith("lr.")}
    loss = reference_query_loss(model, task, **kw)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return {n: (g if g is not None else torch.zeros_like(leaves[n])) for n, g in zip(leaves, grads)}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov"])
def test_second_order_maml_matches_autograd_reference(tasks, optimizer, path):
    alg, meta = make_algorithm("maml", steps=3, lr=0.4, optimizer=optimizer)
    task = split_task(tasks, 0)
    got, _ = grad_via(alg, meta, task, path)
    want = reference_grad(meta, task, steps=3, lr=0.4, optimizer=optimizer)
    for n in meta:
        torch.testing.assert_close(got[n], want[n], atol=1e-10, rtol=1e-8, msg=n)


@pytest.mark.parametrize("path", PATHS)
def test_second_order_maml_matches_finite_differences(tasks, path):
    alg, meta = make_algorithm("maml", steps=2, lr=0.5)
    task = split_task(tasks, 1)
    got, _ = grad_via(alg, meta, task, path)

    def loss_at(params):
        leaves = {n: p.clone().requires_grad_(True) for n, p in params.items()}
        return float(reference_query_loss(leaves, task, steps=2, lr=0.5).detach())

    assert_matches_finite_differences(got, meta, loss_at)


@pytest.mark.parametrize("path", PATHS)
def test_second_order_differs_from_first_order(tasks, path):
    # Guards against the "second-order" path silently dropping the Hessian terms.
    task = split_task(tasks, 0)
    so, _ = grad_via(*make_algorithm("maml", steps=2), task, path)
    fo, _ = grad_via(*make_algorithm("fomaml", steps=2), task, path)
    assert max(float((so[n] - fo[n]).abs().max()) for n in so) > 1e-4


@pytest.mark.parametrize("path", PATHS)
def test_first_order_maml_matches_reference(tasks, path):
    alg, meta = make_algorithm("fomaml", steps=3, lr=0.4)
    task = split_task(tasks, 2)
    got, _ = grad_via(alg, meta, task, path)
    want = reference_grad(meta, task, steps=3, lr=0.4, first_order=True)
    for n in meta:
        torch.testing.assert_close(got[n], want[n], atol=1e-10, rtol=1e-8, msg=n)


@pytest.mark.parametrize("path", PATHS)
def test_anil_adapts_head_only_and_matches_reference(tasks, path):
    alg, meta = make_algorithm("anil", steps=2, lr=0.4)
    assert alg.head_only
    task = split_task(tasks, 0)
    got, _ = grad_via(alg, meta, task, path)
    want = reference_grad(meta, task, steps=2, lr=0.4, adapt=["head.weight", "head.bias"])
    for n in meta:
        torch.testing.assert_close(got[n], want[n], atol=1e-10, rtol=1e-8, msg=n)
    assert float(got["body.weight"].abs().sum()) > 0  # the body still gets a meta-gradient


@pytest.mark.parametrize("path", PATHS)
def test_metasgd_learning_rates_receive_reference_gradients(tasks, path):
    alg, meta = make_algorithm("metasgd", steps=2, lr=0.3)
    lr_names = [n for n in meta if n.startswith("lr.")]
    assert sorted(lr_names) == sorted(f"lr.{n}" for n in ("body.weight", "body.bias", "head.weight", "head.bias"))
    task = split_task(tasks, 0)
    got, _ = grad_via(alg, meta, task, path)
    want = reference_grad(meta, task, steps=2, lr=None)
    for n in meta:
        torch.testing.assert_close(got[n], want[n], atol=1e-10, rtol=1e-8, msg=n)
    for n in lr_names:
        assert float(got[n].abs().sum()) > 1e-6, f"{n} received no gradient"


def test_regression_maml_uses_mse():
    tasks = random_tasks(kind="regression")
    alg, meta = make_algorithm("maml", steps=1, lr=0.1, kind="regression", out=1)
    task = split_task(tasks, 0)
    got, metrics = alg.task_grad(meta, task)
    want = reference_grad(meta, task, steps=1, lr=0.1, loss=F.mse_loss)
    for n in meta:
        torch.testing.assert_close(got[n], want[n], atol=1e-10, rtol=1e-8)
    assert "accuracy" not in metrics
