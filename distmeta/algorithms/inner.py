"""The differentiable inner loop: a few optimiser steps written as pure functions.

Each step's gradient comes from ``torch.func.grad``; unless ``first_order`` the
result stays differentiable, so an outer ``torch.func.grad`` sees second-order terms.
"""
from __future__ import annotations

from typing import Callable, Mapping, Union

import torch
from torch import Tensor
from torch.func import grad

from distmeta.algorithms.functional import Params

LearningRates = Union[float, Mapping[str, Tensor]]


def inner_loop(
    loss_of: Callable[[Params], Tensor],
    params: Params,
    *,
    lr: LearningRates,
    steps: int,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    first_order: bool = False,
) -> Params:
    """Return ``params`` after ``steps`` of SGD / momentum / Nesterov on ``loss_of``.

    ``lr`` is a float or a per-parameter tensor dict (Meta-SGD). ``first_order``
    detaches each inner gradient, which drops the second-order terms (FOMAML).
    """
    fast = dict(params)
    velocity = {n: torch.zeros_like(p) for n, p in fast.items()} if optimizer != "sgd" else {}
    for _ in range(steps):
        grads = grad(loss_of)(fast)
        if first_order:
            grads = {n: g.detach() for n, g in grads.items()}
        new = {}
        for n, p in fast.items():
            step_lr = lr if isinstance(lr, float) else lr[n]
            g = grads[n]
            if optimizer == "sgd":
                update = g
            else:
                velocity[n] = momentum * velocity[n] + g
                update = g + momentum * velocity[n] if optimizer == "nesterov" else velocity[n]
            new[n] = p - step_lr * update
        fast = new
    return fast
