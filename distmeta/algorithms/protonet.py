"""Prototypical Networks: classify queries by squared distance to class-mean embeddings.

No inner loop: "adaptation" is computing the prototypes, so the meta-gradient is the
plain gradient of the query loss through the encoder.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distmeta.algorithms.base import Algorithm
from distmeta.algorithms.functional import Params, task_metrics
from distmeta.tasks.materialise import Task


def prototype_logits(support: Tensor, support_y: Tensor, query: Tensor, ways: int) -> Tensor:
    """Negative squared Euclidean distance of each query to each class mean.

    ``support [..., N, D]``, ``support_y [..., N]``, ``query [..., Q, D]`` -> ``[..., Q, ways]``;
    leading dimensions are tasks.
    """
    # (y == arange) rather than F.one_hot, which inspects values and so cannot run under vmap.
    onehot = (support_y.unsqueeze(-1) == torch.arange(ways, device=support_y.device)).to(support.dtype)
    protos = onehot.transpose(-2, -1) @ support / onehot.sum(-2).unsqueeze(-1)
    sq = ((query * query).sum(-1, keepdim=True) - 2 * query @ protos.transpose(-2, -1)
          + (protos * protos).sum(-1).unsqueeze(-2))
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

    def prefers_vmap(self, max_adapted: int) -> bool:
        return True  # nothing is adapted: the group is one batch (see batch_grad)

    def batch_grad(self, meta: Params, batch: Task, use_vmap: bool = True) -> tuple[Params, dict[str, Tensor]]:
        """With ``use_vmap``, the group as one batch: nothing is adapted, so the encoder runs once
        on all the group's examples (one large forward and backward, no per-task transform),
        then the prototype loss per task; the gradient is that of the tasks' summed loss."""
        if not use_vmap:
            return super().batch_grad(meta, batch, use_vmap)
        leaves = {n: p.detach().requires_grad_() for n, p in meta.items()}
        with torch.enable_grad():
            support, query = self._group_features(self.model_params(leaves), batch)
            logits = prototype_logits(support, batch["support_y"], query, self.ways)  # [T, Q, ways]
            tasks, queries = logits.shape[:2]
            per_query = F.cross_entropy(logits.flatten(0, 1), batch["query_y"].flatten(), reduction="none")
            losses = per_query.view(tasks, queries).mean(-1)
            losses.sum().backward()
        total = {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in leaves.items()}
        accuracy = (logits.detach().argmax(-1) == batch["query_y"]).to(logits.dtype).mean(-1)
        return total, {"loss": losses.detach(), "accuracy": accuracy}

    def _group_features(self, params: Params, batch: Task) -> tuple[Tensor, Tensor]:
        """Support and query features ``[T, N, D]`` of every task, each part encoded in one call."""
        out = []
        for part in ("support", "query"):
            cached = batch.get(f"{part}_f")
            if cached is not None:
                out.append(cached)
                continue
            x = batch[f"{part}_x"]
            out.append(self.model(params, x.flatten(0, 1), head=False).unflatten(0, x.shape[:2]))
        return out[0], out[1]

    def task_eval(self, meta: Params, task: Task, inner_steps: int) -> dict[str, Tensor]:
        with torch.no_grad():
            logits = self._logits(meta, task)
            return task_metrics(self.kind, self.loss(logits, task["query_y"]), logits, task["query_y"])
