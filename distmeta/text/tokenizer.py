"""Text to fixed-length token-id tensors with HF ``tokenizers``.

A tokenizer is either trained on the meta-train split (so no test-class text leaks
into the vocabulary) or the pretrained encoder's own. Either way ``[PAD]`` is id 0:
the models find padding as ``x != 0``, so this is checked, not assumed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from distmeta.errors import CheckpointError, ConfigError

PAD_ID = 0
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]  # trained tokenizers: ids 0..3 in this order


def _cls_sep(tok: Tokenizer) -> processors.TemplateProcessing:
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    return processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )


def train_tokenizer(
    texts: Sequence[str],
    kind: str = "wordpiece",
    vocab_size: int = 8000,
    min_frequency: int = 2,
    lowercase: bool = True,
) -> Tokenizer:
    """Train a ``wordpiece`` (BERT-style) or byte-level ``bpe`` tokenizer on ``texts``.

    Special tokens are ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3``; encodings are
    ``[CLS] ... [SEP]``. The same texts in the same order give the same tokenizer.
    """
    if kind == "wordpiece":
        return _train_wordpiece(texts, vocab_size, min_frequency, lowercase)
    if kind == "bpe":
        return _train_bpe(texts, vocab_size, min_frequency, lowercase)
    raise ConfigError(f"tokenizer.kind must be 'wordpiece' or 'bpe' to train a tokenizer, got {kind!r}")


def _stream(texts: Sequence[str], size: int = 10_000) -> Iterator[list[str]]:
    """``texts`` in order, ``size`` at a time: a TextColumn streams from Arrow, nothing is copied whole."""
    batches = getattr(texts, "batches", None)
    if batches is not None:
        yield from batches(size)
        return
    for i in range(0, len(texts), size):
        yield list(texts[i : i + size])


def _train_bpe(texts: Sequence[str], vocab_size: int, min_frequency: int, lowercase: bool) -> Tokenizer:
    """Byte-level BPE: every string is representable, so [UNK] never appears.

    The whole byte alphabet is given up front, so token ids do not depend on the
    trainer's hash-map order (the same texts give the same tokenizer in any process).
    """
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_stream(texts), trainer=trainer, length=len(texts))
    tok.post_processor = _cls_sep(tok)
    _check_pad(tok, "trained bpe tokenizer")
    return tok


def _wordpiece_base(lowercase: bool) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    return tok


def _train_wordpiece(texts: Sequence[str], vocab_size: int, min_frequency: int, lowercase: bool) -> Tokenizer:
    """WordPiece training made deterministic across processes.

    The Rust trainer numbers the ``##c`` continuation tokens in hash-map order, which
    varies per process, and merge ties are broken by token id, so the same texts can
    give different vocabularies. A first pass without merges finds those tokens; the
    second pass pins them, sorted, right after the special tokens (passed as trainer
    special tokens, then dropped from the added-token table so they behave as ordinary
    vocabulary).
    """
    probe = _wordpiece_base(lowercase)
    probe.train_from_iterator(
        _stream(texts), trainers.WordPieceTrainer(vocab_size=0, special_tokens=SPECIAL_TOKENS, show_progress=False), length=len(texts)
    )
    pinned = sorted(t for t in probe.get_vocab() if t.startswith("##") and len(t) > 2)
    tok = _wordpiece_base(lowercase)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS + pinned, show_progress=False
    )
    tok.train_from_iterator(_stream(texts), trainer=trainer, length=len(texts))
    state = json.loads(tok.to_str())
    state["added_tokens"] = [t for t in state["added_tokens"] if t["content"] in SPECIAL_TOKENS]
    tok = Tokenizer.from_str(json.dumps(state))
    tok.post_processor = _cls_sep(tok)
    _check_pad(tok, "trained wordpiece tokenizer")
    return tok


def _check_pad(tok: Tokenizer, what: str) -> None:
    pad = tok.token_to_id("[PAD]")
    if pad != PAD_ID:
        raise ConfigError(f"{what}: [PAD] must be token id {PAD_ID} (the models mask x != 0), got {pad}")


def load_pretrained_tokenizer(model_dir: str | Path) -> Tokenizer:
    """The tokenizer of a pretrained encoder, from ``model_dir/tokenizer.json`` (its [PAD] must be id 0)."""
    path = Path(model_dir) / "tokenizer.json"
    if path.is_file():
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception on bad JSON
            raise ConfigError(f"pretrained tokenizer {str(path)!r} cannot be read ({err}); replace it with the "
                              "model's own tokenizer.json (saved by transformers' save_pretrained)") from None
    else:  # a directory with only a slow tokenizer's files: transformers converts it to a fast one
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(model_dir), use_fast=True).backend_tokenizer
        except Exception as err:  # transformers raises OSError, ValueError or its own types here
            raise ConfigError(f"pretrained tokenizer: {str(path)!r} does not exist and {str(model_dir)!r} has no "
                              f"tokenizer transformers can load ({err})") from None
    tok.no_truncation()  # encode() sets its own length
    tok.no_padding()
    _check_pad(tok, f"pretrained tokenizer {str(path)!r}")
    return tok


def encode(tok: Tokenizer, texts: Sequence[str], max_length: int) -> torch.Tensor:
    """``[n, max_length]`` LongTensor of ``[CLS] ... [SEP]`` ids, truncated and right-padded with ``PAD_ID``.

    Works on a copy, so the caller's tokenizer keeps its own padding/truncation settings.
    """
    work = Tokenizer.from_str(tok.to_str())
    work.enable_truncation(max_length=max_length)
    work.enable_padding(direction="right", pad_id=PAD_ID, pad_token="[PAD]", length=max_length)
    encodings = work.encode_batch(list(texts))
    if not encodings:
        return torch.zeros(0, max_length, dtype=torch.long)
    ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
    return torch.from_numpy(ids)


def save_tokenizer(tok: Tokenizer, path: Path) -> None:
    """Write ``tok`` as JSON atomically: a crash leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tok.save(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_tokenizer(path: Path) -> Tokenizer:
    """A tokenizer saved by :func:`save_tokenizer`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"tokenizer file {str(path)!r} does not exist")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception on bad JSON
        raise CheckpointError(f"tokenizer file {str(path)!r} is not a valid tokenizer: {err}") from None
    _check_pad(tok, f"tokenizer file {str(path)!r}")
    return tok
