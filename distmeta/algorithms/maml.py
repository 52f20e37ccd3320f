"""MAML and its family: second-order MAML, first-order MAML, ANIL and Meta-SGD.

One objective covers them all: adapt the ``adapt`` parameters on the support set
with a differentiable inner loop, then the loss on the query set.
- MAML: second order (gradients flow through the inner gradients).
- FOMAML: inner gradients detached.
- ANIL: MAML adapting the head only; the body's features are computed once per task.
- Meta-SGD: a learned learning-rate tensor per adapted parameter (meta-params ``lr.<name>``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from distmeta.algorithms.base import Algorithm
from distmeta.algorithms.functional import Params, task_metrics
from distmeta.algorithms.inner import LearningRates, inner_loop
from distmeta.algorithms.recompute import checkpointed_inner_loop
from distmeta.tasks.materialise import Task


class MAML(Algorithm):
    name = "maml"
    first_order = False

    def _lrs(self, meta: Params) -> LearningRates:
        return float(self.inner.lr)

    def _adapt_and_predict(self, meta: Params, task: Task, steps: int, first_order: bool) -> Tensor:
        """Query predictions of the task-adapted model."""
        params = self.model_params(meta)
        full = {**self.model.frozen, **params}
        fast = {n: full[n] for n in self.adapt}
        kwargs = dict(
            lr=self._lrs(meta), steps=steps, optimizer=self.inner.optimizer,
            momentum=self.inner.momentum, first_order=first_order,
        )
        if self.inner.checkpoint and not first_order and steps > 0:
            return self._checkpointed(meta, task, fast, kwargs)
        if first_order and steps > 0:
            # The inner loop on detached values, then a straight-through step: the adapted values
            # with the identity Jacobian d phi / d theta that first order means. Nothing of the inner
            # loop is recorded for the outer gradient (under vmap, its grad transform no longer wraps it).
            lr = kwargs["lr"]
            kwargs["lr"] = lr if isinstance(lr, float) else {n: t.detach() for n, t in lr.items()}
            detached = {n: p.detach() for n, p in params.items()}
            adapted = self._inner_loop(detached, task, {n: p.detach() for n, p in fast.items()}, kwargs)
            adapted = {n: fast[n] + (adapted[n] - fast[n]).detach() for n in fast}
        else:
            adapted = self._inner_loop(params, task, fast, kwargs)
        if self.head_only:
            return self.model.head(adapted, self.features(params, task, "query"))
        return self.model({**params, **adapted}, task["query_x"])

    def _inner_loop(self, params: Params, task: Task, fast: Params, kwargs: dict) -> Params:
        """``fast`` adapted on the support set, the other parameters ``params``."""
        if self.head_only:
            # Features do not change in the inner loop: compute them once.
            f_support = self.features(params, task, "support")
            return inner_loop(lambda h: self.loss(self.model.head(h, f_support), task["support_y"]), fast, **kwargs)
        support_loss = lambda f: self.loss(self.model({**params, **f}, task["support_x"]), task["support_y"])  # noqa: E731
        return inner_loop(support_loss, fast, **kwargs)

    def _checkpointed(self, meta: Params, task: Task, fast: Params, kwargs: dict) -> Tensor:
        """:meth:`_adapt_and_predict` with each inner step recomputed in the backward pass (``checkpoint_inner``).

        The support loss reads only explicit inputs (see :mod:`distmeta.algorithms.recompute`):
        the non-adapted meta-parameters (or the support features) and the support set.
        """
        params = self.model_params(meta)
        kwargs = {k: v for k, v in kwargs.items() if k != "first_order"}
        if self.head_only:
            context = {"f": self.features(params, task, "support"), "y": task["support_y"]}
            adapted = checkpointed_inner_loop(lambda h, c: self.loss(self.model.head(h, c["f"]), c["y"]), fast,
                                              context, **kwargs)
            return self.model.head(adapted, self.features(params, task, "query"))
        rest = {n: p for n, p in params.items() if n not in fast}
        context = {**{f"p.{n}": p for n, p in rest.items()}, "x": task["support_x"], "y": task["support_y"]}

        def support_loss(f: Params, c: Params) -> Tensor:
            body = {n[2:]: p for n, p in c.items() if n.startswith("p.")}
            return self.loss(self.model({**body, **f}, c["x"]), c["y"])

        adapted = checkpointed_inner_loop(support_loss, fast, context, **kwargs)
        return self.model({**params, **adapted}, task["query_x"])

    def objective(self, meta: Params, task: Task) -> tuple[Tensor, dict[str, Tensor]]:
        out = self._adapt_and_predict(meta, task, self.inner.steps, self.first_order)
        loss = self.loss(out, task["query_y"])
        return loss, task_metrics(self.kind, loss, out, task["query_y"])

    def task_eval(self, meta: Params, task: Task, inner_steps: int) -> dict[str, Tensor]:
        out = self._adapt_and_predict(meta, task, inner_steps, first_order=True)
        loss = self.loss(out, task["query_y"])
        return task_metrics(self.kind, loss, out.detach(), task["query_y"])


class FOMAML(MAML):
    name = "fomaml"
    first_order = True


class ANIL(MAML):
    """MAML with the inner loop restricted to the head (the caller passes head names)."""

    name = "anil"


class MetaSGD(MAML):
    """MAML whose inner learning rates are meta-learned, one tensor per adapted parameter."""

    name = "metasgd"

    def own_meta_params(self, model_params: Params) -> Params:
        full = {**self.model.frozen, **model_params}
        return {f"lr.{n}": torch.full_like(full[n], float(self.inner.lr)) for n in self.adapt}

    def _lrs(self, meta: Params) -> LearningRates:
        return {n: meta[f"lr.{n}"] for n in self.adapt}
