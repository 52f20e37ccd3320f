"""Tokenise a corpus once per node: ``datasets.map`` in batches, packed as a compact ragged corpus on disk.

:func:`tokenize_corpus` encodes every text with ``[CLS] ... [SEP]``, truncated to
``max_length`` (the ids :func:`distmeta.text.encode` gives, without its padding), in
batches through ``datasets.map`` over the corpus's Arrow table, in several processes for
large corpora. The result is written as ``ids.npy`` (the smallest unsigned type the
vocabulary allows) and ``offsets.npy`` under a key made from the corpus content, the
tokenizer and ``max_length``, so a second run (or another run on the same corpus)
memory-maps it instead of tokenising again. Neither the texts nor the ids are ever held as
Python objects or padded arrays for the whole corpus.

Files live in ``$DISTMETA_CACHE_DIR/tokens`` (default ``~/.cache/distmeta/tokens``).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from distmeta.text.corpus import TokenCorpus, id_dtype, offset_dtype

FORMAT = "tokens-v1"
IDS, OFFSETS, META = "ids.npy", "offsets.npy", "meta.json"
ROWS_PER_PROCESS = 250_000  # corpora below this are tokenised in one process (a pool costs seconds to start)
MAP_BATCH = 10_000

_TOKENIZERS: dict[str, Any] = {}  # per process: the parsed tokenizer of each map call


def tokens_cache_dir() -> Path:
    """``$DISTMETA_CACHE_DIR/tokens``, else ``$XDG_CACHE_HOME/distmeta/tokens``, else ``~/.cache/distmeta/tokens``."""
    from distmeta.data.icd10cm import cache_root

    return cache_root() / "tokens"


def as_text_column(texts: Sequence[str]) -> Any:
    """``texts`` as a :class:`~distmeta.data.labelled.TextColumn` (a list becomes a small in-memory Dataset)."""
    import datasets

    from distmeta.data.labelled import TextColumn

    if isinstance(texts, TextColumn):
        return texts
    features = datasets.Features({"text": datasets.Value("string")})
    return TextColumn(datasets.Dataset.from_dict({"text": list(texts)}, features=features), "text")


def cached_tokenizer(key: str, train: Callable[[], Any], cache_dir: Path | None = None) -> Any:
    """The tokenizer cached under ``key`` (``tokenizers/<key>.json``), else ``train()``'s, saved there for next time.

    Args:
        key: identity of the training inputs (texts' fingerprints, rows, tokenizer settings).
        train: trains the tokenizer when the cache has none.
        cache_dir: where tokenizers live (default beside the token caches).
    """
    from distmeta.text.tokenizer import load_tokenizer, save_tokenizer

    path = (Path(cache_dir) if cache_dir is not None else tokens_cache_dir().parent / "tokenizers") / f"{key}.json"
    if path.is_file():
        return load_tokenizer(path)
    tok = train()
    try:
        save_tokenizer(tok, path)
    except OSError:  # an unwritable cache only costs the training next time
        pass
    return tok


def _encode_batch(batch: Any, column: str, key: str, tokenizer_json: str, max_length: int, dtype: str) -> Any:
    """``datasets.map`` function: an Arrow batch of texts -> an Arrow table with one ``ids`` list per row."""
    import pyarrow as pa
    from tokenizers import Tokenizer

    tok = _TOKENIZERS.get(key)
    if tok is None:
        tok = Tokenizer.from_str(tokenizer_json)
        tok.no_padding()
        tok.enable_truncation(max_length=max_length)
        _TOKENIZERS.clear()
        _TOKENIZERS[key] = tok
    rows = [e.ids for e in tok.encode_batch(batch.column(column).to_pylist())]
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=dtype, count=int(lengths.sum()))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.table({"ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))})


def _procs(rows: int) -> int:
    """Processes for ``rows`` texts: ``$DISTMETA_TOKENIZE_PROCS``, else one per ``ROWS_PER_PROCESS`` up to the CPUs."""
    explicit = os.environ.get("DISTMETA_TOKENIZE_PROCS")
    if explicit:
        return max(1, int(explicit))
    return max(1, min(os.cpu_count() or 1, rows // ROWS_PER_PROCESS))


def _pack(mapped: Any, out: Path, rows: int, dtype: np.dtype) -> None:
    """Write the mapped ``ids`` lists as ``ids.npy`` + ``offsets.npy`` in ``out``, a chunk at a time."""
    chunks = mapped.with_format("arrow").data.column("ids").chunks
    spans = [(np.asarray(c.offsets)[0], np.asarray(c.offsets)[-1]) for c in chunks]
    total = int(sum(int(b) - int(a) for a, b in spans))
    ids = np.lib.format.open_memmap(out / IDS, mode="w+", dtype=dtype, shape=(total,))
    offsets = np.lib.format.open_memmap(out / OFFSETS, mode="w+", dtype=offset_dtype(total), shape=(rows + 1,))
    offsets[0] = 0
    row = tok = 0
    for chunk in chunks:
        offs = np.asarray(chunk.offsets).astype(np.int64)
        values = np.asarray(chunk.values)[offs[0] : offs[-1]]
        ids[tok : tok + len(values)] = values
        offsets[row + 1 : row + len(chunk) + 1] = offs[1:] - offs[0] + tok
        row, tok = row + len(chunk), tok + len(values)
    assert row == rows and tok == total
    ids.flush()
    offsets.flush()
    del ids, offsets


def open_tokens(path: Path, max_length: int) -> TokenCorpus:
    """Map a finished token cache read-only."""
    return TokenCorpus(np.load(path / IDS, mmap_mode="r"), np.load(path / OFFSETS, mmap_mode="r"), max_length)


def tokenize_corpus(tokenizer: Any, texts: Sequence[str], max_length: int, cache_dir: Path | None = None) -> TokenCorpus:
    """The corpus of ``texts`` as compact ragged token ids, from the on-disk cache when this corpus was tokenised before.

    Args:
        tokenizer: an HF ``tokenizers.Tokenizer`` (``[PAD]`` = 0; its post-processor adds ``[CLS]``/``[SEP]``).
        texts: the corpus's texts: a :class:`~distmeta.data.labelled.TextColumn`, or any list of strings.
        max_length: tokens kept per row (the rest truncated); rows are padded to it when materialised.
        cache_dir: where token caches live (default :func:`tokens_cache_dir`).
    Returns:
        The memory-mapped :class:`~distmeta.text.corpus.TokenCorpus`.
    """
    column = as_text_column(texts)
    ds = column.dataset
    tokenizer_json = tokenizer.to_str()
    dtype = id_dtype(tokenizer.get_vocab_size())
    key = hashlib.sha256(json.dumps([FORMAT, column.fingerprint(), max_length, dtype.str]).encode()
                         + tokenizer_json.encode()).hexdigest()[:24]
    root = Path(cache_dir) if cache_dir is not None else tokens_cache_dir()
    path = root / key
    if (path / META).is_file():
        return open_tokens(path, max_length)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        _build(ds, column.column, tokenizer_json, key, max_length, dtype, tmp)
        try:
            os.replace(tmp, path)  # published whole or not at all
        except OSError:  # another process published it first: keep theirs
            if not (path / META).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return open_tokens(path, max_length)


def _build(ds: Any, column: str, tokenizer_json: str, key: str, max_length: int, dtype: np.dtype, out: Path) -> None:
    """Tokenise ``ds[column]`` with ``datasets.map`` into ``out`` (ids, offsets, meta)."""
    import datasets

    procs = _procs(len(ds))
    parallel = os.environ.get("TOKENIZERS_PARALLELISM")
    if procs > 1:  # each process encodes its own shard; the Rust pool inside a forked child could deadlock
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        mapped = ds.with_format("arrow").map(
            _encode_batch, batched=True, batch_size=MAP_BATCH, num_proc=procs if procs > 1 else None,
            remove_columns=list(ds.column_names), new_fingerprint=key, cache_file_name=str(out / "map.arrow"),
            fn_kwargs={"column": column, "key": key, "tokenizer_json": tokenizer_json, "max_length": max_length,
                       "dtype": dtype.str},
            features=datasets.Features({"ids": datasets.Sequence(datasets.Value(dtype.name))}),
        )
        _pack(mapped, out, len(ds), dtype)
    finally:
        if procs > 1:
            if parallel is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = parallel
    del mapped
    for f in out.glob("map*.arrow"):
        f.unlink()
    (out / META).write_text(json.dumps({"format": FORMAT, "rows": len(ds), "max_length": max_length,
                                        "dtype": dtype.name, "procs": procs}))


__all__ = ["as_text_column", "cached_tokenizer", "open_tokens", "tokenize_corpus", "tokens_cache_dir"]
