"""Pieces shared by the text encoders: pad masks, masked mean pooling, name groups.

Everything here is written to stay valid under ``torch.func`` transforms (vmap and
nested grad): no in-place updates, no data-dependent Python control flow.
"""
from __future__ import annotations

from torch import Tensor, nn

PAD_ID = 0  # distmeta.text.PAD_ID: trained tokenizers pad with 0; a pretrained encoder names its own


def pad_mask(x: Tensor, pad_id: int = PAD_ID) -> Tensor:
    """``True`` at real tokens of a ``[B, L]`` id tensor right-padded with ``pad_id``."""
    return x != pad_id


def masked_mean(h: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``h [B, L, D]`` over the positions where ``mask [B, L]`` is true (0 for an all-pad row)."""
    # A [B, 1, L] @ [B, L, D] product: one batched matmul forward and backward instead of
    # a broadcast multiply and a reduction over a [B, L, D] temporary.
    m = mask.to(h.dtype)
    count = m.sum(-1, keepdim=True).clamp(min=1.0)
    return (m.unsqueeze(-2) @ h).squeeze(-2) / count


def names_under(module: nn.Module, prefix: str) -> list[str]:
    """``named_parameters()`` names of ``module`` that belong to the submodule ``prefix``."""
    return [n for n, _ in module.named_parameters() if n == prefix or n.startswith(prefix + ".")]
