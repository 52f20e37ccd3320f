"""A model as a pure function of a parameter dict, plus the losses and metrics.

Meta-learning needs the network as ``f(params, x)`` so that the inner loop can
produce new parameter dicts and ``torch.func`` can differentiate through them.
"""
from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

Params = dict[str, Tensor]
Loss = Callable[[Tensor, Tensor], Tensor]


class ModelFn:
    """``module`` called with explicit parameters; parameters outside ``meta`` are constants."""

    def __init__(self, module: nn.Module, frozen: Params) -> None:
        self.module = module
        self.frozen = frozen
        self.head_prefix = "head."

    def __call__(self, params: Params, x: Tensor, head: bool = True) -> Tensor:
        """Logits (``head=True``) or pooled features from ``params`` merged over the frozen ones."""
        return functional_call(self.module, {**self.frozen, **params}, (x,), {"head": head})

    def head(self, params: Params, features: Tensor) -> Tensor:
        """The head alone on precomputed features (``params`` holds ``head.*`` names)."""
        full = {**self.frozen, **params}
        sub = {k[len(self.head_prefix) :]: v for k, v in full.items() if k.startswith(self.head_prefix)}
        return functional_call(self.module.head, sub, (features,))

    def is_head(self, name: str) -> bool:
        return name.startswith(self.head_prefix)


def classification_loss(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y)


def regression_loss(pred: Tensor, y: Tensor) -> Tensor:
    return F.mse_loss(pred, y)


def loss_for(kind: str) -> Loss:
    """Cross-entropy for classification, MSE for regression."""
    return classification_loss if kind == "classification" else regression_loss


def task_metrics(kind: str, loss: Tensor, out: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Per-task metrics as 0-d tensors (vmap stacks them)."""
    metrics = {"loss": loss.detach()}
    if kind == "classification":
        metrics["accuracy"] = (out.argmax(-1) == y).to(out.dtype).mean().detach()
    return metrics
