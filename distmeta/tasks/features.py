"""Pooled features of corpus rows, cached per parameter set for evaluation.

An algorithm whose adaptation leaves the encoder fixed (ProtoNet, head-only MAML/ANIL)
scores evaluation episodes from each example's pooled features; a :class:`FeatureBank`
encodes each row once per parameter set (``key``) and serves every episode that draws it.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor


class FeatureBank:
    """Pooled features of the corpus rows evaluated under one parameter set (one ``key``).

    Memory follows the rows evaluated, not the corpus: rows get slots as they are first
    encoded. A new key starts an empty bank.
    """

    CHUNK = 256  # rows encoded per forward pass

    def __init__(self) -> None:
        self.key: str | None = None
        self.slot: dict[int, int] = {}
        self.bank: Tensor | None = None
        self.device: torch.device = torch.device("cpu")

    def fill(self, key: str, rows: np.ndarray, encode: Callable[[Tensor], Tensor]) -> None:
        """Encode (``encode(rows_tensor) -> [n, D]``) the sorted ``rows`` not yet in the bank for ``key``."""
        if self.key != key:
            self.key, self.slot, self.bank = key, {}, None
        missing = torch.tensor([r for r in rows.tolist() if r not in self.slot], dtype=torch.long)
        for chunk in missing.split(self.CHUNK) if len(missing) else ():  # split() of an empty tensor gives one empty chunk
            feats = encode(chunk)
            used = len(self.slot)
            if self.bank is None or used + len(feats) > len(self.bank):  # grow by doubling
                grown = torch.zeros(max(2 * used, used + len(feats)), feats.shape[-1], dtype=feats.dtype, device=feats.device)
                if self.bank is not None:
                    grown[:used] = self.bank[:used]
                self.bank, self.device = grown, feats.device
            self.bank[used : used + len(feats)] = feats
            self.slot.update({r: used + i for i, r in enumerate(chunk.tolist())})

    def take(self, rows: list[list[int]]) -> Tensor:
        """``[len(rows), len(rows[0]), D]`` features of corpus rows already filled."""
        assert self.bank is not None
        index = torch.tensor([[self.slot[r] for r in task] for task in rows], device=self.bank.device)
        return self.bank[index]


__all__ = ["FeatureBank"]
