"""Proto-MAML (Triantafillou et al. 2020): a linear head initialised from the prototypes, then MAML.

Per task: encode the support set, build a ``ways``-way linear head from its prototypes,
adapt it (and, with ``adapt: all`` / ``last:N``, those encoder parameters) with the
differentiable inner loop, then the query loss. The head's initial value depends on the
encoder, so the meta-gradient reaches the encoder through the initialisation as well as
through the features, and (unless ``first_order``) through the inner steps, second order.

- Euclidean: ``W_k = 2 c_k``, ``b_k = -||c_k||^2``, logits ``f W^T + b``: before any step
  these are ProtoNet's ``-||f - c_k||^2`` plus ``||f||^2``, a per-query constant.
- Cosine: ``W_k = c_k / ||c_k||``, ``b = 0``, logits ``T (f / ||f||) W^T + b``: before any
  step the cosine ProtoNet's logits.

The model's own ``head.*`` is unused, so episodes may have any number of ways.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distmeta.algorithms.base import InnerSettings
from distmeta.algorithms.functional import ModelFn, Params, task_metrics
from distmeta.algorithms.inner import inner_loop
from distmeta.algorithms.protonet import PrototypeAlgorithm, prototypes
from distmeta.tasks.materialise import Task

#: Inner-loop names of the prototype head's weight ``[ways, D]`` and bias ``[ways]``.
WEIGHT, BIAS = "prototype_head.weight", "prototype_head.bias"


def prototype_head(support: Tensor, support_y: Tensor, ways: int, distance: str) -> Params:
    """The head's initial ``{WEIGHT, BIAS}`` from the support features ``[N, D]`` (see the module docstring)."""
    c = prototypes(support, support_y, ways, distance)
    if distance == "euclidean":
        return {WEIGHT: 2 * c, BIAS: -(c * c).sum(-1)}
    return {WEIGHT: c, BIAS: c.new_zeros(c.shape[:-1])}


def head_logits(head: Params, features: Tensor, distance: str, scale: Tensor | float) -> Tensor:
    """Logits ``[Q, ways]`` of the prototype head on features ``[Q, D]`` (cosine: on unit features, scaled)."""
    weight, bias = head[WEIGHT], head[BIAS]
    if distance == "euclidean":
        return features @ weight.transpose(-2, -1) + bias
    return scale * (F.normalize(features, dim=-1) @ weight.transpose(-2, -1)) + bias


class ProtoMAML(PrototypeAlgorithm):
    """Proto-MAML; ``adapt`` names the encoder parameters adapted besides the head (``head``: none)."""

    name = "protomaml"

    def __init__(self, model: ModelFn, kind: str, adapt: list[str], inner: InnerSettings, ways: int, *,
                 distance: str = "euclidean", temperature: float = 10.0, learn_temperature: bool = True,
                 first_order: bool = False) -> None:
        super().__init__(model, kind, adapt, inner, ways, distance=distance, temperature=temperature,
                         learn_temperature=learn_temperature)
        self.first_order = first_order
        # The model's head is unused: the inner loop adapts the prototype head instead.
        self.encoder_adapt = [n for n in self.adapt if not model.is_head(n)]

    def _logits(self, head: Params, features: Tensor, meta: Params) -> Tensor:
        return head_logits(head, features, self.distance, self.scale(meta))

    def _adapt_and_predict(self, meta: Params, task: Task, steps: int, first_order: bool) -> Tensor:
        """Query logits after ``steps`` inner steps from the prototype initialisation."""
        params = self.model_params(meta)
        support_y = task["support_y"]
        f_support = self.features(params, task, "support")
        head = prototype_head(f_support, support_y, self.ways, self.distance)
        kwargs = dict(lr=float(self.inner.lr), steps=steps, optimizer=self.inner.optimizer,
                      momentum=self.inner.momentum, first_order=first_order)
        if not self.encoder_adapt:
            # Only the head adapts: the features are computed once per task.
            adapted = inner_loop(lambda h: self.loss(self._logits(h, f_support, meta), support_y), head, **kwargs)
            return self._logits(adapted, self.features(params, task, "query"), meta)
        full = {**self.model.frozen, **params}
        # The head is its own parameter once initialised: the inner gradient of an encoder
        # parameter holds it fixed. A view makes each encoder parameter a fresh graph node, so the
        # loop path's autograd.grad does not also follow the head's dependence on the meta-parameter
        # (torch.func.grad treats its inputs as independent anyway); the outer gradient sees both.
        fast = {**head, **{n: full[n].view_as(full[n]) for n in self.encoder_adapt}}

        def encode(f: Params, part: str) -> Tensor:
            encoder = {**params, **{n: f[n] for n in self.encoder_adapt}}
            return self.model(encoder, task[f"{part}_x"], head=False)

        adapted = inner_loop(lambda f: self.loss(self._logits(f, encode(f, "support"), meta), support_y), fast, **kwargs)
        return self._logits(adapted, encode(adapted, "query"), meta)

    def objective(self, meta: Params, task: Task) -> tuple[Tensor, dict[str, Tensor]]:
        logits = self._adapt_and_predict(meta, task, self.inner.steps, self.first_order)
        loss = self.loss(logits, task["query_y"])
        return loss, task_metrics(self.kind, loss, logits, task["query_y"])

    def task_eval(self, meta: Params, task: Task, inner_steps: int) -> dict[str, Tensor]:
        logits = self._adapt_and_predict(meta, task, inner_steps, first_order=True).detach()
        return task_metrics(self.kind, self.loss(logits, task["query_y"]), logits, task["query_y"])
