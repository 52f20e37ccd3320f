"""Tokenisation: tokenizers, and corpora as compact ragged token ids cached on disk (padded with the tokenizer's own pad id)."""
from distmeta.text.corpus import TokenCorpus
from distmeta.text.tokenized_cache import tokenize_corpus
from distmeta.text.tokenizer import (
    PAD_ID,
    SPECIAL_TOKENS,
    encode,
    load_pretrained_tokenizer,
    load_tokenizer,
    pad_id_of,
    save_tokenizer,
    train_tokenizer,
)

__all__ = [
    "PAD_ID", "TokenCorpus", "tokenize_corpus", "SPECIAL_TOKENS", "encode", "load_pretrained_tokenizer", "load_tokenizer", "pad_id_of", "save_tokenizer", "train_tokenizer",
]
