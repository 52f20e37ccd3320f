"""Bag-of-embeddings encoder: the cheap text baseline (no word order)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from distmeta.models._common import masked_mean, names_under, pad_mask


class BagEncoder(nn.Module):
    """Embedding -> masked mean over non-pad tokens -> ``hidden_layers`` x (Linear + ReLU) -> ``head``.

    Written as a plain embedding lookup plus a masked mean rather than
    ``nn.EmbeddingBag``, which has no double backward and no vmap rule for batched weights.
    """

    def __init__(self, vocab_size: int, dim: int, out_dim: int, hidden_layers: int = 1) -> None:
        super().__init__()
        self.embed_dim = dim
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.hidden = nn.ModuleList(nn.Linear(dim, dim) for _ in range(hidden_layers))
        self.head = nn.Linear(dim, out_dim)

    def forward(self, x: Tensor, head: bool = True) -> Tensor:
        """``x`` [B, L] token ids (0 = pad) -> logits [B, out_dim], or the embedding [B, dim] if not ``head``."""
        h = masked_mean(self.embedding(x), pad_mask(x))
        for layer in self.hidden:
            h = F.relu(layer(h))
        return self.head(h) if head else h

    def layer_groups(self) -> list[list[str]]:
        """[embedding], [hidden.0], ..., [head]."""
        groups = [names_under(self, "embedding")]
        groups += [names_under(self, f"hidden.{i}") for i in range(len(self.hidden))]
        return groups + [names_under(self, "head")]
