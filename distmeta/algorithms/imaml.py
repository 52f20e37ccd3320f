"""Implicit MAML (Rajeswaran et al. 2019): the meta-gradient of a regularised inner problem.

The inner loop minimises ``L_s(phi, psi) + lambda/2 ||phi - theta||^2`` from ``phi = theta``
(``theta``: the adapted meta-parameters, ``psi``: the other ones), with the inner optimiser
and no graph. At a minimum ``phi*`` the implicit function theorem gives, with
``H = d^2 L_s / d phi^2`` and ``g = d L_q(phi*, psi) / d phi``:

- ``dL_q/dtheta = v`` where ``(I + H / lambda) v = g`` (conjugate gradient on
  Hessian-vector products, ``torch.func.vjp`` of the inner gradient);
- ``dL_q/dpsi = d L_q/d psi - (d^2 L_s / d psi d phi) v / lambda`` (one more vector-Jacobian
  product: the encoder of an adapted head still gets its meta-gradient).

Nothing of the inner steps is kept, so memory does not depend on their number. Every
operation is a ``torch.func`` transform with a fixed number of CG iterations, so the
vmap path and the per-task loop path run the same code.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch.func import grad, vjp

from distmeta.algorithms.base import Algorithm, InnerSettings
from distmeta.algorithms.functional import ModelFn, Params, task_metrics
from distmeta.algorithms.inner import inner_loop
from distmeta.tasks.materialise import Task


def _dot(a: Params, b: Params) -> Tensor:
    return sum((a[n] * b[n]).sum() for n in a)  # type: ignore[return-value]


def conjugate_gradient(matvec: Callable[[Params], Params], b: Params, steps: int) -> Params:
    """Approximate solution of ``A x = b`` for a symmetric positive-definite ``A`` after ``steps`` CG iterations.

    No value-dependent control flow (vmap-safe): once the residual is exactly zero, or a
    search direction has non-positive curvature (``A`` not positive definite), the
    remaining steps are zero, so ``x`` is the last iterate of the positive-definite part.

    Args:
        matvec: ``x -> A x`` on parameter dicts.
        b: the right-hand side.
        steps: number of iterations (exact after ``dim`` of them in exact arithmetic).

    Returns:
        ``x`` with the structure of ``b``.
    """
    x = {n: torch.zeros_like(t) for n, t in b.items()}
    r = dict(b)
    p = dict(b)
    rr = _dot(r, r)
    live = torch.ones_like(rr, dtype=torch.bool)
    for _ in range(steps):
        ap = matvec(p)
        pap = _dot(p, ap)
        # Stop for good at a direction of non-positive curvature (A indefinite: a non-convex
        # inner loss with a small lambda) or once the residual is exactly zero.
        live = live & (pap > 0) & (rr > 0)
        alpha = torch.where(live, rr / torch.where(live, pap, torch.ones_like(pap)), torch.zeros_like(pap))
        x = {n: x[n] + alpha * p[n] for n in x}
        r = {n: r[n] - alpha * ap[n] for n in r}
        rr_new = _dot(r, r)
        beta = torch.where(live, rr_new / torch.where(live, rr, torch.ones_like(rr)), torch.zeros_like(rr))
        p = {n: r[n] + beta * p[n] for n in p}
        rr = rr_new
    return x


class IMAML(Algorithm):
    """Implicit MAML; ``imaml_lambda`` is the proximal strength, ``cg_steps`` the CG iterations."""

    name = "imaml"

    def __init__(self, model: ModelFn, kind: str, adapt: list[str], inner: InnerSettings, ways: int, *,
                 imaml_lambda: float = 1.0, cg_steps: int = 5) -> None:
        super().__init__(model, kind, adapt, inner, ways)
        self.lam = float(imaml_lambda)
        self.cg_steps = cg_steps

    def _split(self, meta: Params) -> tuple[Params, Params]:
        """``(theta, psi)``: the adapted parameters' initial values and the other meta-parameters."""
        params = self.model_params(meta)
        full = {**self.model.frozen, **params}
        return {n: full[n] for n in self.adapt}, {n: p for n, p in params.items() if n not in self.adapt}

    def _loss(self, phi: Params, psi: Params, task: Task, part: str) -> tuple[Tensor, Tensor]:
        if self.head_only:
            out = self.model.head(phi, self.features(psi, task, part))
        else:
            out = self.model({**psi, **phi}, task[f"{part}_x"])
        return self.loss(out, task[f"{part}_y"]), out

    def adapt_task(self, theta: Params, psi: Params, task: Task, steps: int) -> Params:
        """``phi`` after ``steps`` inner steps on the regularised support loss (no graph kept)."""
        theta = {n: p.detach() for n, p in theta.items()}
        psi = {n: p.detach() for n, p in psi.items()}
        if self.head_only:  # the features do not change in the inner loop: computed once
            feats = self.features(psi, task, "support").detach()
            fixed = {**task, "support_f": feats}
            support = lambda phi: self._loss(phi, psi, fixed, "support")[0]  # noqa: E731
        else:
            support = lambda phi: self._loss(phi, psi, task, "support")[0]  # noqa: E731

        def regularised(phi: Params) -> Tensor:
            return support(phi) + 0.5 * self.lam * sum(((phi[n] - theta[n]) ** 2).sum() for n in phi)

        adapted = inner_loop(regularised, theta, lr=float(self.inner.lr), steps=steps, optimizer=self.inner.optimizer,
                             momentum=self.inner.momentum, first_order=True)
        return {n: p.detach() for n, p in adapted.items()}

    def task_grad(self, meta: Params, task: Task) -> tuple[Params, dict[str, Tensor]]:
        theta, psi = self._split(meta)
        phi = self.adapt_task(theta, psi, task, self.inner.steps)
        def query(f: Params, s: Params) -> tuple[Tensor, tuple[Tensor, Tensor]]:
            loss, out = self._loss(f, s, task, "query")
            return loss, (loss, out)

        (g_phi, g_psi), (loss, out) = grad(query, argnums=(0, 1), has_aux=True)(phi, psi)
        inner_grad = lambda f, s: grad(lambda f2: self._loss(f2, s, task, "support")[0])(f)  # noqa: E731
        _, hvp = vjp(lambda f: inner_grad(f, psi), phi)
        v = conjugate_gradient(lambda u: {n: u[n] + h / self.lam for n, h in hvp(u)[0].items()}, g_phi, self.cg_steps)
        grads: Params = {}
        if psi:
            _, cross = vjp(lambda s: inner_grad(phi, s), psi)
            mixed = cross(v)[0]
            grads.update({n: g_psi[n] - mixed[n] / self.lam for n in psi})
        grads.update({n: v[n] for n in theta if n in meta})
        grads = {n: grads.get(n, torch.zeros_like(p)) for n, p in meta.items()}
        return grads, task_metrics(self.kind, loss.detach(), out.detach(), task["query_y"])

    def task_eval(self, meta: Params, task: Task, inner_steps: int) -> dict[str, Tensor]:
        theta, psi = self._split(meta)
        phi = self.adapt_task(theta, psi, task, inner_steps)
        with torch.no_grad():
            loss, out = self._loss(phi, psi, task, "query")
        return task_metrics(self.kind, loss, out, task["query_y"])
