"""Prototypical Networks: classify queries by squared distance to class-mean embeddings.

No inner loop: "adaptation" is computing the prototypes, so the meta-gradient is the
plain gradient of the query loss through the encoder.
"""
from __future__ import annotations

import torch
from torch import Tensor

from distmeta.algorithms.base import Algorithm
from distmeta.algorithms.functional import Params, task_metrics
from distmeta.tasks.materialise import Task


def prototype_logits(support: Tensor, support_y: Tensor, query: Tensor, ways: int) -> Tensor:
    """Negative squared Euclidean distance of each query to each class mean."""
    # (y == arange) rather than F.one_hot, which inspects values and so cannot run under vmap.
    onehot = (support_y.unsqueeze(-1) == torch.arange(ways, device=support_y.device)).to(support.dtype)
    protos = onehot.transpose(0, 1) @ support / onehot.sum(0).unsqueeze(-1)
    sq = (query * query).sum(-1, keepdim=True) - 2 * query @ protos.transpose(0, 1) + (protos * protos).sum(-1)
    return -sq


class ProtoNet(Algorithm):
    name = "protonet"

    @property
    def uses_fixed_features(self) -> bool:
        return True

    def _logits(self, meta: Params, task: Task) -> Tensor:
        params = self.model_params(meta)
        support = self.features(params, task, "support")
        query = self.features(params, task, "query")
        return prototype_logits(support, task["support_y"], query, self.ways)

    def objective(self, meta: Params, task: Task) -> tuple[Tensor, dict[str, Tensor]]:
        logits = self._logits(meta, task)
        loss = self.loss(logits, task["query_y"])
        return loss, task_metrics(self.kind, loss, logits, task["query_y"])

    def task_eval(self, meta: Params, task: Task, inner_steps: int) -> dict[str, Tensor]:
        with torch.no_grad():
            logits = self._logits(meta, task)
            return task_metrics(self.kind, self.loss(logits, task["query_y"]), logits, task["query_y"])
