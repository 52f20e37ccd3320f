"""Tokenise a corpus once per node: ``datasets.map`` in batches, packed as a compact ragged corpus on disk.

:func:`tokenize_corpus` encodes every text with ``[CLS] ... [SEP]``, truncated to
``max_length`` (the ids :func:`distmeta.text.encode` gives, without its padding), in
batches through ``datasets.map`` over the corpus's Arrow table, in several processes for
large corpora. The result is written as ``ids.npy`` (the smallest unsigned type the
vocabulary allows) and ``offsets.npy`` under a key made from the corpus content, the
tokenizer and ``max_length``, so a second run (or another run on the same corpus)
memory-maps it instead of tokenising again. Neither the texts nor the ids are ever held as
Python objects or padded arrays for the whole corpus.

Files live in ``$DISTMETA_CACHE_DIR/tokens`` (default ``~/.cache/distmeta/tokens``), a private
root (:mod:`distmeta.caches`); each entry's ``meta.json`` records what it was built from (corpus
fingerprint, rows, tokenizer hash, ``max_length``, dtype, library versions) and its files'
checksums, checked on open: an entry that does not match is rebuilt, never used.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from distmeta import caches
from distmeta.text.corpus import TokenCorpus, id_dtype, offset_dtype

FORMAT = "tokens-v2"
IDS, OFFSETS, META, TOKENIZER = "ids.npy", "offsets.npy", caches.MANIFEST, "tokenizer.json"
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
    """The tokenizer cached under ``key`` (``tokenizers/<key>/tokenizer.json``), else ``train()``'s, saved there.

    The entry records a hash of the tokenizer and the ``tokenizers`` version; one that does not
    match (edited, truncated, another version) is retrained, never used.

    Args:
        key: identity of the training inputs (texts' fingerprints, rows, tokenizer settings).
        train: trains the tokenizer when the cache has none.
        cache_dir: where tokenizers live (default beside the token caches).
    Returns:
        The tokenizer.
    """
    from distmeta.text.tokenizer import load_tokenizer

    root = caches.prepare_root(Path(cache_dir) if cache_dir is not None else tokens_cache_dir().parent / "tokenizers",
                               "tokenizer cache")
    entry, built_from = root / key, caches.library_versions("tokenizers")
    if entry.exists():
        problem = caches.manifest_problem(entry, key, built_from)
        if problem is None:
            caches.mark_used(entry)
            return load_tokenizer(entry / TOKENIZER)
        caches.discard(entry, problem, "tokenizer cache")
    tok = train()
    tmp = caches.tmp_dir(root, key)
    try:
        tok.save(str(tmp / TOKENIZER))
        caches.write_manifest(tmp, key, built_from, [TOKENIZER])
        caches.seal(tmp)
        os.replace(tmp, entry)
    except OSError:  # an unwritable cache, or another process published it first: only costs the training
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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


def open_tokens(path: Path, max_length: int, pad_id: int = 0) -> TokenCorpus:
    """Map a finished token cache read-only (see :func:`tokenize_corpus` for the checks done first).

    ``pad_id`` is the tokenizer's padding id (the cache key covers the tokenizer, so it is that entry's).
    """
    return TokenCorpus(np.load(path / IDS, mmap_mode="r"), np.load(path / OFFSETS, mmap_mode="r"), max_length,
                       pad_id=pad_id)


def _verified(path: Path, key: str, built_from: dict[str, Any], max_length: int, pad_id: int) -> TokenCorpus | None:
    """The cache entry ``path`` opened, when its manifest, checksums and shapes match; else it is discarded."""
    problem = caches.manifest_problem(path, key, built_from)
    corpus = None
    if problem is None:
        corpus = open_tokens(path, max_length, pad_id)
        rows = int(built_from["rows"])
        if corpus.offsets.shape != (rows + 1,) or corpus.ids.shape != (int(corpus.offsets[-1]),) \
                or corpus.ids.dtype.str != built_from["dtype"]:
            problem, corpus = f"its arrays do not have the shapes of {rows} rows", None
    if problem is not None:
        caches.discard(path, problem, "token cache")
        return None
    caches.mark_used(path)
    return corpus


def tokenize_corpus(tokenizer: Any, texts: Sequence[str], max_length: int, cache_dir: Path | None = None) -> TokenCorpus:
    """The corpus of ``texts`` as compact ragged token ids, from the on-disk cache when this corpus was tokenised before.

    Args:
        tokenizer: an HF ``tokenizers.Tokenizer`` (its post-processor adds ``[CLS]``/``[SEP]``); rows are
            padded with its :func:`~distmeta.text.tokenizer.pad_id_of` when materialised.
        texts: the corpus's texts: a :class:`~distmeta.data.labelled.TextColumn`, or any list of strings.
        max_length: tokens kept per row (the rest truncated); rows are padded to it when materialised.
        cache_dir: where token caches live (default :func:`tokens_cache_dir`); it must be private.
    Returns:
        The memory-mapped :class:`~distmeta.text.corpus.TokenCorpus`.
    Raises:
        DistmetaError: the cache directory belongs to another user or others can write to it.
    """
    from distmeta.text.tokenizer import pad_id_of

    column = as_text_column(texts)
    ds = column.dataset
    pad = pad_id_of(tokenizer)
    tokenizer_json = tokenizer.to_str()
    dtype = id_dtype(tokenizer.get_vocab_size())
    key = hashlib.sha256(json.dumps([FORMAT, column.fingerprint(), max_length, dtype.str]).encode()
                         + tokenizer_json.encode()).hexdigest()[:24]
    built_from = {"format": FORMAT, "corpus_sha256": column.fingerprint(), "rows": len(ds), "max_length": max_length,
                  "dtype": dtype.str, "tokenizer_sha256": hashlib.sha256(tokenizer_json.encode()).hexdigest(),
                  **caches.library_versions("tokenizers", "datasets", "numpy")}
    root = caches.prepare_root(Path(cache_dir) if cache_dir is not None else tokens_cache_dir(), "token cache")
    path = root / key
    if path.exists():
        found = _verified(path, key, built_from, max_length, pad)
        if found is not None:
            return found
    tmp = caches.tmp_dir(root, key)
    try:
        procs = _build(ds, column.column, tokenizer_json, key, max_length, dtype, tmp)
        caches.write_manifest(tmp, key, built_from, [IDS, OFFSETS], procs=procs)
        caches.seal(tmp)
        try:
            os.replace(tmp, path)  # published whole or not at all
        except OSError:  # another process published it first: keep theirs (checked below)
            if not (path / META).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    found = _verified(path, key, built_from, max_length, pad)
    if found is None:
        raise OSError(f"token cache {path}: the entry just published does not verify")
    return found


def _build(ds: Any, column: str, tokenizer_json: str, key: str, max_length: int, dtype: np.dtype, out: Path) -> int:
    """Tokenise ``ds[column]`` with ``datasets.map`` into ``out`` (ids, offsets); returns the processes used."""
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
    return procs


__all__ = ["as_text_column", "cached_tokenizer", "open_tokens", "tokenize_corpus", "tokens_cache_dir"]
