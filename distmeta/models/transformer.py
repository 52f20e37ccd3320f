"""A BERT-style encoder written out in plain tensor ops, so ``torch.func`` can take it apart.

Attention is ``softmax(QK^T / sqrt(d), masked) V`` spelled out: fused kernels such as
``F.scaled_dot_product_attention`` have no double backward, and second-order MAML
differentiates through the inner-loop gradient. Padded keys are excluded with
``torch.where`` (a finite large negative, so softmax never sees -inf or NaN).
The same class, with pretrained sizes and weights, is all-MiniLM-L6-v2 (``minilm.py``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distmeta.models._common import masked_mean, names_under, pad_mask
from distmeta.models.norm import LayerNorm

INIT_STD = 0.02  # BERT's initializer_range


class Embeddings(nn.Module):
    """word + position + token-type (always type 0) embeddings, then LayerNorm."""

    def __init__(self, vocab_size: int, dim: int, max_length: int, type_vocab_size: int, eps: float) -> None:
        super().__init__()
        self.word = nn.Embedding(vocab_size, dim)
        self.position = nn.Embedding(max_length, dim)
        self.token_type = nn.Embedding(type_vocab_size, dim)
        self.norm = LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        length = x.shape[-1]
        if length > self.position.num_embeddings:
            raise ValueError(f"sequence length {length} exceeds the {self.position.num_embeddings} position embeddings")
        h = self.word(x) + self.position.weight[:length] + self.token_type.weight[0]
        return self.norm(h)


class Block(nn.Module):
    """Post-LN transformer layer: h = LN(h + Attn(h)); h = LN(h + FFN(h)), GELU (erf form)."""

    def __init__(self, dim: int, heads: int, ff_dim: int, eps: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"model.dim={dim} is not divisible by model.heads={heads}")
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.attn_norm = LayerNorm(dim, eps=eps)
        self.ff_in = nn.Linear(dim, ff_dim)
        self.ff_out = nn.Linear(ff_dim, dim)
        self.ff_norm = LayerNorm(dim, eps=eps)

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        """``h`` [B, L, D], ``mask`` [B, L] true at real tokens (keys elsewhere get no attention)."""
        b, length, dim = h.shape
        d = dim // self.heads

        def split(t: Tensor) -> Tensor:  # [B, L, D] -> [B, H, L, d]
            return t.reshape(b, length, self.heads, d).transpose(1, 2)

        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d)
        scores = torch.where(mask[:, None, None, :], scores, torch.finfo(scores.dtype).min)
        ctx = torch.matmul(scores.softmax(dim=-1), v).transpose(1, 2).reshape(b, length, dim)
        h = self.attn_norm(h + self.out(ctx))
        return self.ff_norm(h + self.ff_out(F.gelu(self.ff_in(h))))


class TransformerEncoder(nn.Module):
    """Embeddings -> ``layers`` blocks -> masked mean over non-pad tokens -> ``head``."""

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        layers: int,
        heads: int,
        ff_dim: int,
        max_length: int,
        out_dim: int,
        type_vocab_size: int = 2,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.embed_dim = dim
        self.embeddings = Embeddings(vocab_size, dim, max_length, type_vocab_size, eps)
        self.layers = nn.ModuleList(Block(dim, heads, ff_dim, eps) for _ in range(layers))
        self.head = nn.Linear(dim, out_dim)
        self._init_body()

    def _init_body(self) -> None:
        """BERT initialisation (normal(0, 0.02), zero biases, unit LayerNorm) for all but the head."""
        for name, module in self.named_modules():
            if name.startswith("head"):
                continue
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=INIT_STD)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor, head: bool = True) -> Tensor:
        """``x`` [B, L] token ids (0 = pad) -> logits [B, out_dim], or the pooled embedding [B, dim] if not ``head``."""
        mask = pad_mask(x)
        h = self.embeddings(x)
        for block in self.layers:
            h = block(h, mask)
        pooled = masked_mean(h, mask)
        return self.head(pooled) if head else pooled

    def layer_groups(self) -> list[list[str]]:
        """[embeddings], [layers.0], ..., [layers.n-1], [head]."""
        groups = [names_under(self, "embeddings")]
        groups += [names_under(self, f"layers.{i}") for i in range(len(self.layers))]
        return groups + [names_under(self, "head")]
