"""Implicit MAML against float64 references that share no code with it.

- A ridge-regression head: the regularised inner problem has a closed-form minimum, so
  the exact meta-gradient is autograd through ``torch.linalg.solve`` (for the head's
  initial values and, through the features, for the body).
- Every parameter adapted on a classification task: the inner problem solved by many plain
  gradient steps, then the implicit-function-theorem gradient with the dense Hessian.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distmeta.algorithms.imaml import conjugate_gradient
from distmeta.tasks.materialise import split_task
from tests.algorithms.conftest import (
    PATHS,
    assert_vmap_equals_loop,
    grad_via,
    make_algorithm,
    manual_forward,
    random_tasks,
)

HEAD = ["head.weight", "head.bias"]


def ridge_reference(meta, task, lam):
    """Query MSE at the closed-form minimum of ``mean((A z - y)^2) + lam/2 ||z - theta||^2``, ``A = [features, 1]``."""
    def design(x):
        f = manual_forward(meta, x, head=False)
        return torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype)], 1)

    a, y = design(task["support_x"]), task["support_y"]
    theta = torch.cat([meta["head.weight"].reshape(-1), meta["head.bias"]])
    n = len(a)
    z = torch.linalg.solve(2 / n * a.T @ a + lam * torch.eye(a.shape[1], dtype=a.dtype), 2 / n * a.T @ y[:, 0] + lam * theta)
    return ((design(task["query_x"]) @ z - task["query_y"][:, 0]) ** 2).mean()


@pytest.mark.parametrize("path", PATHS)
def test_ridge_head_meta_gradient_equals_the_closed_form(path):
    lam = 2.0
    alg, meta = make_algorithm("imaml", steps=600, lr=0.05, kind="regression", out=1, adapt=HEAD,
                               imaml_lambda=lam, cg_steps=12)
    assert alg.head_only
    task = split_task(random_tasks(kind="regression", seed=7), 0)
    got, metrics = grad_via(alg, meta, task, path)
    leaves = {n: p.clone().requires_grad_(True) for n, p in meta.items()}
    loss = ridge_reference(leaves, task, lam)
    want = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
    for n in meta:
        torch.testing.assert_close(got[n], want[n], atol=1e-10, rtol=1e-8, msg=n)
        assert float(got[n].abs().sum()) > 1e-8, f"{n} received no meta-gradient"
    torch.testing.assert_close(metrics["loss"], loss.detach(), atol=1e-10, rtol=1e-8)


def dense_implicit_reference(meta, task, lam, steps, lr):
    names = list(meta)
    shapes = [meta[n].shape for n in names]
    sizes = [meta[n].numel() for n in names]
    theta = torch.cat([meta[n].reshape(-1) for n in names])

    def unpack(z):
        return {n: t.reshape(s) for n, t, s in zip(names, z.split(sizes), shapes)}

    def support(z):
        return F.cross_entropy(manual_forward(unpack(z), task["support_x"]), task["support_y"])

    z = theta.clone()
    for _ in range(steps):
        zl = z.clone().requires_grad_(True)
        g, = torch.autograd.grad(support(zl) + lam / 2 * ((zl - theta) ** 2).sum(), zl)
        z = z - lr * g
    zl = z.clone().requires_grad_(True)
    g_q, = torch.autograd.grad(F.cross_entropy(manual_forward(unpack(zl), task["query_x"]), task["query_y"]), zl)
    hess = torch.autograd.functional.hessian(support, z)
    v = torch.linalg.solve(torch.eye(len(z), dtype=z.dtype) + hess / lam, g_q)
    return unpack(v)


@pytest.mark.parametrize("path", PATHS)
def test_every_parameter_adapted_matches_the_dense_implicit_gradient(tasks, path):
    lam, steps, lr = 1.5, 400, 0.2
    alg, meta = make_algorithm("imaml", steps=steps, lr=lr, imaml_lambda=lam, cg_steps=60)
    task = split_task(tasks, 1)
    got, _ = grad_via(alg, meta, task, path)
    want = dense_implicit_reference(meta, task, lam, steps, lr)
    for n in meta:
        torch.testing.assert_close(got[n], want[n], atol=1e-9, rtol=1e-7, msg=n)


def test_conjugate_gradient_solves_a_spd_system_and_stays_finite_after_convergence():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = m @ m.T + torch.eye(6, dtype=torch.float64)
    b = {"x": torch.randn(6, generator=g, dtype=torch.float64)}
    x = conjugate_gradient(lambda u: {"x": a @ u["x"]}, b, 30)  # far more iterations than the dimension
    torch.testing.assert_close(x["x"], torch.linalg.solve(a, b["x"]), atol=1e-10, rtol=1e-10)
    zero = conjugate_gradient(lambda u: {"x": a @ u["x"]}, {"x": torch.zeros(6, dtype=torch.float64)}, 3)
    assert torch.equal(zero["x"], torch.zeros(6, dtype=torch.float64))


@pytest.mark.parametrize("adapt", [None, HEAD])
def test_imaml_vmap_equals_loop(adapt):
    alg, meta = make_algorithm("imaml", steps=3, adapt=adapt, imaml_lambda=1.0, cg_steps=4)
    assert_vmap_equals_loop(alg, meta, random_tasks(n_tasks=4), 4)


def test_more_inner_steps_keep_no_graph():
    # Memory independent of inner steps: the adapted parameters carry no autograd history.
    alg, meta = make_algorithm("imaml", steps=7)
    leaves = {n: p.clone().requires_grad_(True) for n, p in meta.items()}
    theta, psi = alg._split(leaves)
    phi = alg.adapt_task(theta, psi, split_task(random_tasks(), 0), 7)
    assert all(p.grad_fn is None and not p.requires_grad for p in phi.values())
