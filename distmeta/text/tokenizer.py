"""Text to fixed-length token-id tensors with HF ``tokenizers``.

A tokenizer is either trained on the meta-train split (so no test-class text leaks
into the vocabulary; its ``[PAD]`` is id 0, checked) or the pretrained encoder's own, whose
padding id is the model's (0 for BERT-like vocabularies, 1 for RoBERTa, MPNet, XLM-R). A
pretrained tokenizer whose padding id is not 0 keeps a padding setting at that id, so the
``tokenizer.json`` a run saves says which id pads (:func:`pad_id_of`); corpora and models
mask padding with that id, never with a hard-coded 0.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

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
    """A trained (or saved trained) tokenizer pads with ``[PAD]`` = 0; a saved pretrained one names its own pad id."""
    if tok.padding is not None:  # a pretrained vocabulary's own padding id, recorded by load_pretrained_tokenizer
        return
    pad = tok.token_to_id("[PAD]")
    if pad != PAD_ID:
        raise ConfigError(f"{what}: [PAD] must be token id {PAD_ID} (a tokenizer without a padding setting pads "
                          f"with id {PAD_ID}), got {pad}")


def pad_id_of(tok: Tokenizer) -> int:
    """The id ``tok`` pads with: its padding setting's ``pad_id``, else ``PAD_ID`` (0, trained tokenizers).

    Args:
        tok: a tokenizer from :func:`train_tokenizer`, :func:`load_pretrained_tokenizer` or :func:`load_tokenizer`.
    Returns:
        The padding token id the corpus pads rows with and the models mask out.
    """
    padding = tok.padding
    return int(padding["pad_id"]) if padding is not None else PAD_ID


def _config_pad_id(model_dir: Path) -> int | None:
    """``pad_token_id`` of ``model_dir/config.json`` (None when the file or the key is absent or unreadable)."""
    try:
        value = json.loads((Path(model_dir) / "config.json").read_text()).get("pad_token_id")
    except (OSError, ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, int) else None


def _pretrained_pad(tok: Tokenizer, model_dir: Path, path: Path) -> tuple[int, str]:
    """The pretrained tokenizer's padding id and token, checked against the model's ``config.json``.

    The tokenizer's own padding setting wins, then ``[PAD]`` / ``<pad>`` in its vocabulary. The model
    masks and positions padding by ``config.json``'s ``pad_token_id`` (0 when absent): the two must agree.
    """
    padding = tok.padding
    if padding is not None:
        pad, token = int(padding["pad_id"]), str(padding["pad_token"])
    else:
        found = [(tok.token_to_id(t), t) for t in ("[PAD]", "<pad>") if tok.token_to_id(t) is not None]
        if not found:
            raise ConfigError(f"pretrained tokenizer {str(path)!r} has no padding setting and no [PAD] or <pad> "
                              "token: save the model's tokenizer with transformers' save_pretrained")
        pad, token = found[0]
    model_pad = _config_pad_id(model_dir)
    if pad != (PAD_ID if model_pad is None else model_pad):
        raise ConfigError(
            f"pretrained tokenizer {str(path)!r} pads with id {pad} ({token!r}) but the model's config.json "
            f"{'has no pad_token_id (the model masks id 0)' if model_pad is None else f'has pad_token_id {model_pad}'}"
            f": set pad_token_id to {pad} in {str(Path(model_dir) / 'config.json')!r} or use the model's own tokenizer")
    return pad, token


def load_pretrained_tokenizer(model_dir: str | Path) -> Tokenizer:
    """The tokenizer of a pretrained encoder, from ``model_dir/tokenizer.json`` (else its slow tokenizer's files).

    Its padding id is the model's (``config.json``'s ``pad_token_id``, checked); when it is not 0
    the returned tokenizer keeps a padding setting at that id (no fixed length) so that a saved
    copy still says which id pads (:func:`pad_id_of`).
    """
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
    pad, token = _pretrained_pad(tok, Path(model_dir), path)
    tok.no_truncation()  # encode() sets its own length
    tok.no_padding()
    if pad != PAD_ID:
        tok.enable_padding(direction="right", pad_id=pad, pad_token=token)
    return tok


def encode(tok: Tokenizer, texts: Sequence[str], max_length: int) -> torch.Tensor:
    """``[n, max_length]`` LongTensor of ``[CLS] ... [SEP]`` ids, truncated and right-padded with the pad id.

    The pad id is :func:`pad_id_of` ``tok``: 0 for trained tokenizers, the model's own for pretrained ones.

    Works on a copy, so the caller's tokenizer keeps its own padding/truncation settings.
    """
    work = Tokenizer.from_str(tok.to_str())
    work.enable_truncation(max_length=max_length)
    pad = pad_id_of(tok)
    work.enable_padding(direction="right", pad_id=pad, pad_token=tok.id_to_token(pad) or "[PAD]", length=max_length)
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
