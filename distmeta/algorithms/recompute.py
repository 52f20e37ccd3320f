"""Second-order inner loops in bounded memory: each inner step recomputed in the backward pass.

A second-order inner loop normally keeps every step's activations and inner backward
graph until the outer backward pass, so memory grows with the number of steps. Here
each step is one :class:`_RecomputedStep`: its forward runs without a graph and keeps
only its inputs (the parameters before the step, and the task's tensors, which are
shared); its backward recomputes the step with its graph (plain autograd on the loop
path, ``torch.func.vjp`` under transforms) and returns the vector-Jacobian product (a
Hessian-vector product for the inner gradient). Only one
step's graph is alive at a time, plus one copy of the adapted parameters per step.

``torch.utils.checkpoint`` relies on saved-tensor hooks, which ``torch.func.grad`` and
``vjp`` refuse; a ``torch.autograd.Function`` with ``setup_context`` and a generated
vmap rule works under ``grad``, ``vmap`` and plain ``backward()`` alike, so the vmap path
and the per-task loop path share this code. Everything a step reads must be an explicit
input (a tensor captured by closure would receive no gradient).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from torch.func import vjp

from distmeta.algorithms.functional import Params
from distmeta.algorithms.inner import (
    LearningRates,
    apply_update,
    inner_gradients,
    transforms_active,
)

#: ``loss_of(fast, context)``: the support loss as a pure function of the adapted
#: parameters and of every other tensor it reads (meta-parameters, task data).
ContextLoss = Callable[[Params, Params], Tensor]


class _RecomputedStep(torch.autograd.Function):
    """``fn(*tensors)`` whose backward recomputes ``fn`` instead of keeping its graph."""

    generate_vmap_rule = True

    @staticmethod
    def forward(fn: Callable[..., tuple[Tensor, ...]], *tensors: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        with torch.no_grad():
            return tuple(t.detach() for t in fn(False, *tensors))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        fn, *tensors = inputs
        ctx.fn = fn
        ctx.save_for_backward(*tensors)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        tensors = list(ctx.saved_tensors)
        wrt = [i for i, t in enumerate(tensors) if t.is_floating_point()]
        grads = _recompute_vjp(ctx.fn, tensors, wrt, grad_outputs)
        out: list[Tensor | None] = [None] * len(tensors)
        for i, g in zip(wrt, grads):
            out[i] = g
        return (None, *out)


def _recompute_vjp(fn: Callable[..., tuple[Tensor, ...]], tensors: list[Tensor], wrt: list[int],
                   grad_outputs: Sequence[Tensor]) -> Sequence[Tensor]:
    """The step recomputed with its graph, and its vector-Jacobian product for ``tensors[wrt]``."""
    if not transforms_active():
        # Plain autograd (the per-task loop path): fresh leaves, so nothing outside this step is recorded.
        leaves = [t.detach().requires_grad_() if i in wrt else t for i, t in enumerate(tensors)]
        with torch.enable_grad():
            outs = fn(True, *leaves)
            grads = torch.autograd.grad(outs, [leaves[i] for i in wrt], grad_outputs, allow_unused=True)
        return [g if g is not None else torch.zeros_like(leaves[i]) for i, g in zip(wrt, grads)]

    def partial(*diff: Tensor) -> tuple[Tensor, ...]:
        full = list(tensors)
        for i, t in zip(wrt, diff):
            full[i] = t
        return tuple(fn(True, *full))

    # torch.func.vjp differentiates under an outer no_grad; regular autograd must not also record
    # the recomputation (its inputs are outputs of the previous step, which require grad), or
    # every step's graph would stay alive through the returned gradients until the end.
    with torch.no_grad():
        _, vjp_fn = vjp(partial, *[tensors[i] for i in wrt])
        return vjp_fn(tuple(grad_outputs))


def _flatten(groups: Sequence[Params]) -> tuple[list[Tensor], list[list[str]]]:
    names = [list(g) for g in groups]
    return [g[n] for g, ns in zip(groups, names) for n in ns], names


def _unflatten(flat: Sequence[Tensor], names: list[list[str]]) -> list[Params]:
    out, i = [], 0
    for ns in names:
        out.append(dict(zip(ns, flat[i: i + len(ns)])))
        i += len(ns)
    return out


def checkpointed_inner_loop(loss_of: ContextLoss, params: Params, context: Params, *, lr: LearningRates, steps: int,
                            optimizer: str = "sgd", momentum: float = 0.9) -> Params:
    """Second-order inner loop whose steps are recomputed in the backward pass (see the module docstring).

    The same result and, through it, the same meta-gradient as
    :func:`distmeta.algorithms.inner.inner_loop` with ``first_order=False``.

    Args:
        loss_of: the support loss ``loss_of(fast, context)``.
        params: the parameters the inner loop adapts (their initial values).
        context: every other tensor ``loss_of`` reads: the meta-gradient reaches them through it.
        lr: a float, or a tensor per adapted parameter (Meta-SGD: they receive meta-gradients too).
        steps: number of inner steps.
        optimizer: ``sgd``, ``momentum`` or ``nesterov``.
        momentum: the momentum coefficient.

    Returns:
        The adapted parameters, differentiable with respect to ``params``, ``context`` and ``lr``.
    """
    fast = dict(params)
    velocity = {n: torch.zeros_like(p) for n, p in fast.items()} if optimizer != "sgd" else {}
    lrs: Params = {} if isinstance(lr, float) else dict(lr)

    def step(differentiable: bool, *flat: Tensor) -> tuple[Tensor, ...]:
        f, v, c, r = _unflatten(flat, names)
        grads = inner_gradients(lambda p: loss_of(p, c), f, first_order=not differentiable)
        new, new_v = apply_update(f, v, grads, r if r else lr, optimizer, momentum)
        return (*new.values(), *new_v.values())

    for _ in range(steps):
        flat, names = _flatten([fast, velocity, context, lrs])
        out = _RecomputedStep.apply(step, *flat)
        fast = dict(zip(fast, out[: len(fast)]))
        velocity = dict(zip(velocity, out[len(fast):]))
    return fast
