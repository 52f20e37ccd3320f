"""LayerNorm whose second-order gradients are right under ``torch.func.vmap``.

torch's batching rule for ``native_layer_norm_backward`` gives a wrong input gradient
(pytorch/functorch#534, still open in torch 2.13). The first-order gradient through a
LayerNorm is right, but differentiating it again, as second-order MAML does when the
inner loop adapts the LayerNorm's weight or bias and a group's tasks run under ``vmap``,
gives a meta-gradient that is off by about 1e-3 relative. The plain autograd loop is right.

Under a ``torch.func`` transform, :class:`LayerNorm` therefore computes the same function
from elementary ops: mean, biased variance, ``rsqrt``, affine. Everywhere else it is
``F.layer_norm``, bit for bit as before. :func:`make_transform_safe` gives a pretrained
(Hugging Face) encoder's ``nn.LayerNorm`` modules this forward in place. Their parameters,
names and state dicts do not change.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _transforms_active() -> bool:
    return torch._C._functorch.maybe_current_level() is not None


def layer_norm_composite(x: Tensor, normalized_shape: tuple[int, ...], weight: Tensor | None, bias: Tensor | None,
                         eps: float) -> Tensor:
    """``F.layer_norm`` written with elementary ops (each with correct batching rules at any order)."""
    dims = tuple(range(-len(normalized_shape), 0))
    mean = x.mean(dims, keepdim=True)
    centred = x - mean
    var = (centred * centred).mean(dims, keepdim=True)
    out = centred * torch.rsqrt(var + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` that switches to :func:`layer_norm_composite` inside ``torch.func`` transforms."""

    def forward(self, x: Tensor) -> Tensor:
        if _transforms_active():
            return layer_norm_composite(x, tuple(self.normalized_shape), self.weight, self.bias, self.eps)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


def make_transform_safe(module: nn.Module) -> int:
    """Give every plain ``nn.LayerNorm`` inside ``module`` :class:`LayerNorm`'s forward, in place.

    Returns:
        How many modules were changed.
    """
    changed = 0
    for m in module.modules():
        if type(m) is nn.LayerNorm:
            m.__class__ = LayerNorm
            changed += 1
    return changed


__all__ = ["LayerNorm", "layer_norm_composite", "make_transform_safe"]
