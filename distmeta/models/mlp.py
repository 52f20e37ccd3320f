"""The MAML paper's sinusoid-regression network."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from distmeta.models._common import names_under


class SinusoidMLP(nn.Module):
    """1 -> hidden[0] -> ... -> hidden[-1] -> 1 with ReLU (``[40, 40]`` is Finn et al. 2017)."""

    def __init__(self, hidden: list[int] | tuple[int, ...] = (40, 40)) -> None:
        super().__init__()
        sizes = [1, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.embed_dim = sizes[-1]
        self.head = nn.Linear(sizes[-1], 1)

    def forward(self, x: Tensor, head: bool = True) -> Tensor:
        """``x`` [B, 1] -> prediction [B, 1], or the last hidden activation [B, hidden[-1]] if not ``head``."""
        h = x
        for layer in self.layers:
            h = F.relu(layer(h))
        return self.head(h) if head else h

    def layer_groups(self) -> list[list[str]]:
        """[layers.0], [layers.1], ..., [head]."""
        groups = [names_under(self, f"layers.{i}") for i in range(len(self.layers))]
        return groups + [names_under(self, "head")]
