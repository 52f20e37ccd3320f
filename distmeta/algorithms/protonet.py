"""Prototypical Networks: classify queries by their closeness to class-mean embeddings.

No inner loop: "adaptation" is computing the prototypes, so the meta-gradient is the
plain gradient of the query loss through the encoder. Closeness is the negative squared
Euclidean distance (Snell et al. 2017) or a scaled cosine similarity, the usual choice
for pretrained sentence encoders whose embeddings are compared by angle.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distmeta.algorithms.base import Algorithm, InnerSettings
from distmeta.algorithms.functional import ModelFn, Params, task_metrics
from distmeta.tasks.materialise import Task

DISTANCES = ("euclidean", "cosine")


def class_means(x: Tensor, y: Tensor, ways: int) -> Tensor:
    """Mean of the rows of ``x [..., N, D]`` with each label ``y [..., N]`` in ``0..ways-1`` -> ``[..., ways, D]``."""
    # (y == arange) rather than F.one_hot, which inspects values and so cannot run under vmap.
    onehot = (y.unsqueeze(-1) == torch.arange(ways, device=y.device)).to(x.dtype)
    return onehot.transpose(-2, -1) @ x / onehot.sum(-2).unsqueeze(-1)


def prototypes(support: Tensor, support_y: Tensor, ways: int, distance: str) -> Tensor:
    """The class prototypes ``[..., ways, D]`` that :func:`centroid_logits` compares queries with.

    Euclidean: the class means of the features. Cosine: the class means of the
    L2-normalised features, normalised again (only their direction matters).
    """
    if distance == "euclidean":
        return class_means(support, support_y, ways)
    if distance == "cosine":
        return F.normalize(class_means(F.normalize(support, dim=-1), support_y, ways), dim=-1)
    raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")


def prototype_logits(support: Tensor, support_y: Tensor, query: Tensor, ways: int) -> Tensor:
    """Negative squared Euclidean distance of each query to each class mean.

    ``support [..., N, D]``, ``support_y [..., N]``, ``query [..., Q, D]`` -> ``[..., Q, ways]``;
    leading dimensions are tasks.
    """
    protos = class_means(support, support_y, ways)
    sq = ((query * query).sum(-1, keepdim=True) - 2 * query @ protos.transpose(-2, -1)
          + (protos * protos).sum(-1).unsqueeze(-2))
    return -sq


def centroid_logits(support: Tensor, support_y: Tensor, query: Tensor, ways: int, distance: str,
                    scale: Tensor | float = 1.0) -> Tensor:
    """Nearest-centroid logits ``[..., Q, ways]`` of ``query [..., Q, D]`` against the classes of ``support [..., N, D]``.

    ``distance="euclidean"``: ``-scale * ||q - c_k||^2`` with ``c_k`` the class mean.
    ``distance="cosine"``: ``scale * <q / ||q||, c_k / ||c_k||>`` with ``c_k`` the mean of the
    L2-normalised support features of class ``k``. Leading dimensions are tasks; no
    value-dependent control flow, so it runs under ``vmap``.
    """
    if distance == "euclidean":
        logits = prototype_logits(support, support_y, query, ways)
    else:
        protos = prototypes(support, support_y, ways, distance)
        logits = F.normalize(query, dim=-1) @ protos.transpose(-2, -1)
    return logits if isinstance(scale, float) and scale == 1.0 else scale * logits


class PrototypeAlgorithm(Algorithm):
    """Shared by ProtoNet and Proto-MAML: a classifier built per task from the support prototypes.

    The model's own ``head.*`` is unused (not meta-trained), so one copy per number of
    ways serves episodes of any ways. With ``distance="cosine"`` the logits are scaled by
    ``temperature``, a meta-parameter of shape ``[1]`` when ``learn_temperature``.
    """

    any_ways = True

    def __init__(self, model: ModelFn, kind: str, adapt: list[str], inner: InnerSettings, ways: int, *,
                 distance: str = "euclidean", temperature: float = 10.0, learn_temperature: bool = True) -> None:
        super().__init__(model, kind, adapt, inner, ways)
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        self.distance = distance
        self.temperature = float(temperature)
        self.learn_temperature = learn_temperature

    def own_meta_params(self, model_params: Params) -> Params:
        """``temperature [1]`` for cosine logits with a learned scale; nothing otherwise."""
        if self.distance != "cosine" or not self.learn_temperature:
            return {}
        like = next(iter(self.model.module.parameters()))
        return {"temperature": torch.full((1,), self.temperature, dtype=like.dtype, device=like.device)}

    def scale(self, meta: Params) -> Tensor | float:
        """The logit scale: the learned temperature, the fixed one (cosine), or 1 (Euclidean)."""
        if self.distance != "cosine":
            return 1.0
        return meta["temperature"] if self.learn_temperature else self.temperature


class ProtoNet(PrototypeAlgorithm):
    """Prototypical Networks: the query loss of :func:`centroid_logits`, differentiated through the encoder."""

    name = "protonet"

    @property
    def uses_fixed_features(self) -> bool:
        return True

    def _logits(self, meta: Params, task: Task) -> Tensor:
        params = self.model_params(meta)
        support = self.features(params, task, "support")
        query = self.features(params, task, "query")
        return centroid_logits(support, task["support_y"], query, self.ways, self.distance, self.scale(meta))

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
            logits = centroid_logits(support, batch["support_y"], query, self.ways, self.distance,
                                     self.scale(leaves))  # [T, Q, ways]
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
