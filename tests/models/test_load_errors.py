"""Model-loading errors name the path and what to do (issue 23): never a raw UnpicklingError or tokenizers Exception."""
from __future__ import annotations

import pytest

from distmeta.errors import ConfigError

transformers = pytest.importorskip("transformers")


@pytest.fixture()
def bert_config_dir(tmp_path):
    config = transformers.BertConfig(vocab_size=100, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=8, max_position_embeddings=16)
    config.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


class NotWeights:
    """A pickled object that weights-only loading refuses (UnpicklingError)."""


@pytest.mark.parametrize("content", ["garbage", "a pickle of an arbitrary object"])
def test_an_unpicklable_weights_file_is_a_config_error_naming_the_path(bert_config_dir, content):
    import torch

    from distmeta.models.hf import build_hf_encoder

    weights = bert_config_dir / "pytorch_model.bin"
    if content == "garbage":
        weights.write_bytes(b"this is not a pickle, nor a zip archive")
    else:
        torch.save({"embeddings.word_embeddings.weight": NotWeights()}, weights)
    with pytest.raises(ConfigError, match=rf"model\.path '{bert_config_dir}'.*save_pretrained") as info:
        build_hf_encoder(str(bert_config_dir), out_dim=2)
    assert info.value.__cause__ is None and "\n" not in str(info.value)


def test_a_corrupt_pretrained_tokenizer_is_a_config_error_naming_the_path(bert_config_dir):
    from distmeta.text import load_pretrained_tokenizer

    (bert_config_dir / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(ConfigError, match=rf"'{bert_config_dir}/tokenizer.json' cannot be read"):
        load_pretrained_tokenizer(bert_config_dir)
