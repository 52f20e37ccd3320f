"""Tokenisation: texts to fixed-length id tensors (``[PAD]`` = 0)."""
from distmeta.text.tokenizer import (
    PAD_ID,
    SPECIAL_TOKENS,
    encode,
    load_pretrained_tokenizer,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)

__all__ = [
    "PAD_ID", "SPECIAL_TOKENS", "encode", "load_pretrained_tokenizer", "load_tokenizer", "save_tokenizer", "train_tokenizer",
]
