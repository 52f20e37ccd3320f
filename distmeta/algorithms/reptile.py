"""Reptile: the meta-gradient is the displacement ``theta - phi`` after plain inner SGD.

No second-order terms. With outer SGD at rate eps this is the paper's update
``theta <- theta + eps (phi - theta)``, averaged over the meta-batch.
"""
from __future__ import annotations

import torch
from torch import Tensor

from distmeta.algorithms.functional import Params, task_metrics
from distmeta.algorithms.inner import inner_loop
from distmeta.algorithms.maml import MAML
from distmeta.tasks.materialise import Task


class Reptile(MAML):
    name = "reptile"

    def task_grad(self, meta: Params, task: Task) -> tuple[Params, dict[str, Tensor]]:
        params = self.model_params(meta)
        full = {**self.model.frozen, **params}
        fast = {n: full[n] for n in self.adapt}
        support_loss = lambda f: self.loss(self.model({**params, **f}, task["support_x"]), task["support_y"])  # noqa: E731
        adapted = inner_loop(
            support_loss, fast, lr=float(self.inner.lr), steps=self.inner.steps,
            optimizer=self.inner.optimizer, momentum=self.inner.momentum, first_order=True,
        )
        adapted = {n: p.detach() for n, p in adapted.items()}
        grads = {n: (meta[n] - adapted[n]) if n in adapted else torch.zeros_like(p) for n, p in meta.items()}
        out = self.model({**params, **adapted}, task["query_x"])
        loss = self.loss(out, task["query_y"])
        return grads, task_metrics(self.kind, loss, out.detach(), task["query_y"])
