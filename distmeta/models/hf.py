"""Any pretrained Hugging Face encoder as a distmeta model (``model.name: hf``; MiniLM is one case).

The weights load through ``transformers.AutoModel`` from a local directory or a name in
the local HF cache (offline when ``HF_HUB_OFFLINE=1``), with eager attention so that
second-order MAML terms flow through softmax attention.

BERT-like stacks (an ``embeddings`` module and a list of layers, as in BERT, RoBERTa,
ELECTRA, MPNet, bge, e5, gte, MiniLM) are run layer by layer with an additive attention mask
built here: transformers' own mask helpers branch on tensor values, which ``torch.func.vmap``
refuses. That also lets the encoder start *after* a frozen prefix: a float input
``[B, L, D]`` is the cached output of the first ``prefix_layers`` layers
(:mod:`distmeta.models.prefix`), with padding positions exactly zero. Other architectures
run as one ``AutoModel`` call (no vmap, no prefix cache, ``model.trainable`` all or head).

Padding is the model's own ``pad_token_id`` (0 for BERT-like vocabularies, 1 for RoBERTa and
MPNet), the id the pretrained tokenizer pads with (:func:`distmeta.text.pad_id_of`, checked
against ``config.json`` when the tokenizer loads). MPNet adds a relative position bias that its
encoder computes once per forward from the sequence width and a table of its own
(``encoder.relative_attention_bias``, here ``relative_bias``, grouped with the embeddings): every
call of :meth:`HFEncoder.run_layers` recomputes it for its width, so a suffix that starts after a
cached prefix adds the same bias as the whole forward.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import Tensor, nn

from distmeta.algorithms.inner import transforms_active
from distmeta.errors import ConfigError
from distmeta.models._common import masked_mean, names_under, pad_mask
from distmeta.models.norm import make_transform_safe

POOLINGS = ("mean", "cls")


def _layer_stack(model: nn.Module) -> tuple[nn.Module, nn.ModuleList] | None:
    """``(embeddings, layers)`` of a BERT-like encoder, or None for other architectures."""
    embeddings = getattr(model, "embeddings", None)
    encoder = getattr(model, "encoder", None)
    layers = getattr(encoder, "layer", None) if encoder is not None else None
    if isinstance(embeddings, nn.Module) and isinstance(layers, nn.ModuleList) and len(layers) > 0:
        return embeddings, layers
    return None


def _position_bias_of(model: nn.Module) -> tuple[nn.Module, Callable[[Tensor], Tensor]] | None:
    """MPNet-style ``(bias table, encoder.compute_position_bias)``: a bias the encoder adds in every layer."""
    encoder = getattr(model, "encoder", None)
    table = getattr(encoder, "relative_attention_bias", None)
    compute = getattr(encoder, "compute_position_bias", None)
    if isinstance(table, nn.Module) and callable(compute):
        return table, compute
    return None


def load_auto_model(path: str) -> nn.Module:
    """``AutoModel.from_pretrained(path)`` in eval mode with eager attention; errors name ``model.path``."""
    try:
        from transformers import AutoModel
    except ImportError:  # pragma: no cover - transformers is a core dependency
        raise ConfigError("model.name=hf needs the transformers package: pip install transformers") from None
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a per-load weights bar, in every actor too: noise in logs
    try:
        model = AutoModel.from_pretrained(path, attn_implementation="eager")
    except Exception as err:  # OSError, ValueError, pickle.UnpicklingError, RuntimeError, SafetensorError, ...
        raise ConfigError(
            f"model.path {path!r}: cannot load a pretrained encoder ({type(err).__name__}: {_first_line(err)}). "
            "Point model.path at a directory holding config.json and model.safetensors (or pytorch_model.bin) "
            "saved by transformers' save_pretrained, or re-download the model into it") from None
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    return model.eval()


def _first_line(err: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, at most ``limit`` characters."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class HFEncoder(nn.Module):
    """A pretrained encoder -> pooled sentence embedding -> linear ``head`` (zero-initialised).

    Args:
        model: a transformers encoder (``AutoModel``), in eval mode.
        out_dim: outputs of the head (ways, or 1).
        pooling: ``mean`` over real tokens (sentence-transformers) or the ``cls`` token.

    Token ids are right-padded with ``pad_id`` (the model config's ``pad_token_id``, 0 when unset).
    """

    def __init__(self, model: nn.Module, out_dim: int, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"model.pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        stack = _layer_stack(model)
        self.config = model.config
        self.embed_dim = int(model.config.hidden_size)
        self.prefix_layers = 0  # set by the worker when a prefix cache feeds the encoder
        self.length_buckets = 1  # model.length_buckets
        self.pad_id = int(getattr(model.config, "pad_token_id", None) or 0)
        self._position_bias: Callable[[Tensor], Tensor] | None = None
        if stack is not None:
            self.embeddings, self.layers = stack
            self.whole = None
            bias = _position_bias_of(model)
            if bias is not None:  # the same module object as the encoder's: compute_position_bias reads it
                self.relative_bias, self._position_bias = bias
            self._embed_kwargs = self._embedding_kwargs(self.embeddings)
        else:
            self.embeddings, self.layers, self.whole = None, nn.ModuleList(), model
        self.head = nn.Linear(self.embed_dim, out_dim)
        with torch.no_grad():  # every class starts equal, which suits MAML's label permutations
            self.head.weight.zero_()
            self.head.bias.zero_()
        self.eval()

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def train(self, mode: bool = True) -> "HFEncoder":
        """Always eval mode: dropout would make meta-gradients depend on an RNG state the workers do not share."""
        return super().train(False)

    @staticmethod
    def _embedding_kwargs(embeddings: nn.Module) -> tuple[str, ...]:
        """Which optional inputs the embeddings take: ``token_type_ids`` for BERT and RoBERTa, none for MPNet."""
        params = inspect.signature(embeddings.forward).parameters
        return ("token_type_ids",) if "token_type_ids" in params else ()

    def embed(self, x: Tensor) -> Tensor:
        """Token ids ``[B, L]`` (right-padded with ``pad_id``) -> the input of layer 0 ``[B, L, D]``.

        RoBERTa and MPNet number positions from the ids (padding keeps the padding position), so the
        ids reach the embeddings as the tokenizer gave them.
        """
        assert self.embeddings is not None
        extra: dict[str, Any] = {"token_type_ids": torch.zeros_like(x)} if self._embed_kwargs else {}
        return self.embeddings(input_ids=x, **extra)

    def run_layers(self, h: Tensor, mask: Tensor, start: int, stop: int | None = None) -> Tensor:
        """Layers ``start:stop`` on hidden states ``h`` with real-token ``mask`` ``[B, L]``.

        An MPNet position bias is computed here from ``h``'s width, once for the layers run.
        """
        # A finite large negative on padded keys: softmax never sees -inf (no NaN in double backward).
        additive = (~mask).to(h.dtype)[:, None, None, :] * torch.finfo(h.dtype).min
        extra: dict[str, Tensor] = {}
        if self._position_bias is not None:
            extra["position_bias"] = self._position_bias(h)
        for layer in self.layers[start:stop]:
            out = layer(h, attention_mask=additive, **extra)
            h = out[0] if isinstance(out, tuple) else out
        return h

    def forward(self, x: Tensor, head: bool = True) -> Tensor:
        """Token ids ``[B, L]`` (``pad_id`` = pad), or cached prefix outputs ``[B, L, D]``, -> logits or the pooled embedding.

        Outside ``torch.func`` transforms a batch runs as ``length_buckets`` sub-batches of
        similar lengths, each cut to its own longest row: padding costs attention and
        feed-forward time but changes no real token's result.
        """
        mask = (x != 0).any(-1) if x.is_floating_point() else pad_mask(x, self.pad_id)
        if self.length_buckets > 1 and x.shape[0] > 1 and not transforms_active():
            pooled = self._bucketed(x, mask)
        else:
            pooled = self._pooled(x, mask)
        return self.head(pooled) if head else pooled

    def _pooled(self, x: Tensor, mask: Tensor) -> Tensor:
        """Pooled embeddings of one batch, all rows at the batch's width."""
        if self.whole is not None:
            h = self.whole(input_ids=x, attention_mask=mask.long()).last_hidden_state
        elif x.is_floating_point():
            h = self.run_layers(x, mask, self.prefix_layers)
        else:
            h = self.run_layers(self.embed(x), mask, 0)
        return masked_mean(h, mask) if self.pooling == "mean" else h[..., 0, :]

    def _bucketed(self, x: Tensor, mask: Tensor) -> Tensor:
        """:meth:`_pooled` over length-sorted sub-batches, each trimmed to its longest row, in the input's order."""
        lengths = mask.sum(-1)
        order = torch.argsort(lengths, stable=True)
        outs = []
        for idx in order.tensor_split(min(self.length_buckets, x.shape[0])):
            width = max(1, int(lengths[idx].max()))
            outs.append(self._pooled(x[idx, :width], mask[idx, :width]))
        return torch.cat(outs).index_select(0, torch.argsort(order))

    def layer_groups(self) -> list[list[str]]:
        """[embeddings (+ MPNet's relative bias)], [layer 0], ..., [layer N-1], [head]; one body group otherwise.

        MPNet's bias table feeds every layer, so it sits with the embeddings: ``last:N`` leaves it frozen
        and the frozen prefix (and its cache key) covers it.
        """
        if self.whole is not None:
            return [names_under(self, "whole"), names_under(self, "head")]
        groups = [names_under(self, "embeddings") + names_under(self, "relative_bias")]
        groups += [names_under(self, f"layers.{i}") for i in range(len(self.layers))]
        return groups + [names_under(self, "head")]


def build_hf_encoder(path: str, out_dim: int, pooling: str = "mean", length_buckets: int = 1) -> HFEncoder:
    """Load ``path`` (directory or local-cache name) and wrap it; padding is its config's ``pad_token_id``."""
    model = load_auto_model(path)
    make_transform_safe(model)  # right second-order gradients under vmap (distmeta.models.norm)
    encoder = HFEncoder(model, out_dim, pooling)
    encoder.length_buckets = length_buckets
    return encoder


__all__ = ["HFEncoder", "POOLINGS", "build_hf_encoder", "load_auto_model", "masked_mean"]
