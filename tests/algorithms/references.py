"""Hand-written float64 references for the prototype classifiers (ProtoNet, Proto-MAML).

Written from the papers' definitions with plain autograd, boolean masks and
``F.cosine_similarity``, sharing no code with ``distmeta.algorithms``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.algorithms.conftest import manual_forward

WAYS = 3


def unit(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` divided by their Euclidean norm."""
    return x / x.norm(dim=-1, keepdim=True)


def class_mean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[WAYS, D]``: mean of the rows of ``x`` per label."""
    return torch.stack([x[y == c].mean(0) for c in range(WAYS)])


def reference_logits(support, support_y, query, distance: str, scale=1.0) -> torch.Tensor:
    """Nearest-centroid logits: ``-||q - mean||^2`` or ``T cos(q, mean of unit support)``."""
    if distance == "euclidean":
        return -torch.cdist(query, class_mean(support, support_y)) ** 2
    means = class_mean(unit(support), support_y)
    return scale * F.cosine_similarity(query[:, None, :], means[None, :, :], dim=-1)


def protonet_loss(meta, task, distance: str, temperature=None) -> tuple[torch.Tensor, torch.Tensor]:
    """ProtoNet's query loss and logits; the scale is ``meta["temperature"]`` if present, else ``temperature``."""
    scale = meta.get("temperature", temperature)
    s = manual_forward(meta, task["support_x"], head=False)
    q = manual_forward(meta, task["query_x"], head=False)
    logits = reference_logits(s, task["support_y"], q, distance, scale)
    return F.cross_entropy(logits, task["query_y"]), logits


def protomaml_loss(meta, task, *, distance: str, steps: int, lr: float, first_order: bool = False,
                   adapt_encoder: bool = False, temperature=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Proto-MAML's query loss and logits: prototype head, ``steps`` of inner SGD, query loss.

    ``meta`` holds ``body.weight``, ``body.bias`` (requiring grad) and, for a learned
    scale, ``temperature``. ``adapt_encoder`` also adapts the body in the inner loop.
    """
    scale = meta.get("temperature", temperature)
    body = {n: meta[n] for n in ("body.weight", "body.bias")}
    s = manual_forward(body, task["support_x"], head=False)
    if distance == "euclidean":
        c = class_mean(s, task["support_y"])
        fast = {"W": 2 * c, "b": -(c * c).sum(1)}
    else:
        c = class_mean(unit(s), task["support_y"])
        fast = {"W": unit(c), "b": torch.zeros(WAYS, dtype=s.dtype, requires_grad=True)}
    if adapt_encoder:
        # Fresh graph nodes: the inner gradient of the encoder holds the head fixed (the head is
        # its own parameter once initialised), while the outer gradient still reaches both.
        fast.update({n: p.clone() for n, p in body.items()})

    def logits_of(p, x):
        feats = manual_forward(p if adapt_encoder else body, x, head=False)
        if distance == "euclidean":
            return feats @ p["W"].T + p["b"]
        return scale * (unit(feats) @ p["W"].T) + p["b"]

    for _ in range(steps):
        loss = F.cross_entropy(logits_of(fast, task["support_x"]), task["support_y"])
        names = list(fast)
        grads = torch.autograd.grad(loss, [fast[n] for n in names], create_graph=not first_order)
        fast = {n: fast[n] - lr * (g.detach() if first_order else g) for n, g in zip(names, grads)}
    logits = logits_of(fast, task["query_x"])
    return F.cross_entropy(logits, task["query_y"]), logits


def reference_grad(loss_fn, meta, task, **kw) -> dict[str, torch.Tensor]:
    """Gradient of ``loss_fn(leaves, task, **kw)[0]`` w.r.t. every entry of ``meta``."""
    leaves = {n: p.clone().requires_grad_(True) for n, p in meta.items()}
    loss, _ = loss_fn(leaves, task, **kw)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return {n: g if g is not None else torch.zeros_like(leaves[n]) for n, g in zip(leaves, grads)}
