"""A tokenised corpus as compact ragged rows: what every worker materialises episodes from.

Row ``r`` is ``ids[offsets[r]:offsets[r + 1]]``: its real tokens only (``[CLS] ... [SEP]``,
truncated to ``max_length``), no padding, in the smallest unsigned integer type the
vocabulary allows. A worker pads only the rows of the episodes it builds
(:meth:`TokenCorpus.padded`), so the corpus costs its compact size once per node: the
arrays are memory-mapped from the on-disk tokenisation cache, or zero-copy views into
Ray's object store, and are never converted as a whole.

Rows are padded with ``pad_id``, the tokenizer's own padding id (0 for trained and BERT-like
vocabularies, 1 for RoBERTa / MPNet), which the models mask out.

Several sources (``data.mixture``) share one corpus, each a contiguous block of rows
starting at ``starts[source]``; task specs name rows within their source.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

PAD_ID = 0


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every id below ``vocab_size``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def offset_dtype(total_tokens: int) -> np.dtype:
    """``uint32`` offsets while the corpus has fewer than 2**32 tokens, else ``int64``."""
    return np.dtype(np.uint32) if total_tokens < 2**32 else np.dtype(np.int64)


@dataclass
class TokenCorpus:
    """Ragged token ids of every row of every source.

    Attributes:
        ids: all rows' token ids, concatenated (compact unsigned type).
        offsets: ``[rows + 1]`` start of each row in ``ids``; the last entry is ``len(ids)``.
        max_length: the width rows are padded to when materialised.
        starts: the first row of each source (``[0]`` for one source).
        pad_id: the id rows are right-padded with (the tokenizer's :func:`~distmeta.text.tokenizer.pad_id_of`).
    """

    ids: np.ndarray
    offsets: np.ndarray
    max_length: int
    starts: list[int] = field(default_factory=lambda: [0])
    pad_id: int = PAD_ID

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getstate__(self) -> dict:
        """Pickled as plain arrays, never as ``np.memmap``.

        A memmap pickles its bytes in-band and unpickles as a private writable copy; a plain
        array view of the same memory pickles out of band, so Ray keeps one copy per node in
        its object store and every actor on the node reads it zero-copy.
        """
        state = dict(self.__dict__)
        state["ids"], state["offsets"] = np.asarray(self.ids), np.asarray(self.offsets)
        return state

    @property
    def nbytes(self) -> int:
        """Bytes of the ids and offsets: what a node holds for the corpus."""
        return int(self.ids.nbytes + self.offsets.nbytes)

    def lengths(self) -> np.ndarray:
        """Tokens per row (int64)."""
        return np.diff(self.offsets.astype(np.int64))

    def global_rows(self, source: int, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Corpus rows of ``rows`` of source ``source`` (int64)."""
        return np.asarray(rows, dtype=np.int64) + self.starts[source]

    def padded(self, rows: Sequence[int] | np.ndarray, width: int | None = None) -> np.ndarray:
        """``[len(rows), width]`` int64 ids of ``rows``, right-padded with ``pad_id`` (default width ``max_length``)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        width = self.max_length if width is None else width
        start = self.offsets[rows].astype(np.int64)
        length = np.minimum(self.offsets[rows + 1].astype(np.int64) - start, width)
        pos = np.arange(width)
        valid = pos[None, :] < length[:, None]
        out = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        out[valid] = self.ids[(start[:, None] + pos[None, :])[valid]]
        return out

    @classmethod
    def from_padded(cls, token_ids: np.ndarray, vocab_size: int | None = None, pad_id: int = PAD_ID) -> "TokenCorpus":
        """The ragged form of ``[rows, L]`` ids right-padded with ``pad_id`` (each row kept up to its last non-pad token)."""
        arr = np.asarray(token_ids)
        nonzero = arr != pad_id
        lengths = np.where(nonzero.any(1), arr.shape[1] - np.argmax(nonzero[:, ::-1], axis=1), 0)
        keep = np.arange(arr.shape[1])[None, :] < lengths[:, None]
        vocab = vocab_size if vocab_size is not None else (int(arr.max()) + 1 if arr.size else 1)
        ids = arr[keep].astype(id_dtype(vocab))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(offset_dtype(len(ids)))
        return cls(ids, offsets, int(arr.shape[1]), pad_id=int(pad_id))

    @classmethod
    def concat(cls, parts: Sequence["TokenCorpus"]) -> "TokenCorpus":
        """The sources' corpora as one, source ``c``'s rows starting at ``starts[c]`` (one part: itself)."""
        if len(parts) == 1:
            return parts[0]
        if len({p.max_length for p in parts}) != 1:
            raise ValueError("sources of one corpus need one max_length")
        if len({p.pad_id for p in parts}) != 1:
            raise ValueError("sources of one corpus need one pad_id (one tokenizer)")
        dtype = max((p.ids.dtype for p in parts), key=lambda d: d.itemsize)
        ids = np.concatenate([p.ids.astype(dtype, copy=False) for p in parts])
        shifts = np.cumsum([0] + [len(p.ids) for p in parts[:-1]])
        offsets = np.concatenate([parts[0].offsets[:1].astype(np.int64)]
                                 + [p.offsets[1:].astype(np.int64) + s for p, s in zip(parts, shifts)])
        starts = np.cumsum([0] + [len(p) for p in parts[:-1]]).tolist()
        return cls(ids, offsets.astype(offset_dtype(len(ids))), parts[0].max_length, [int(s) for s in starts],
                   parts[0].pad_id)


__all__ = ["TokenCorpus", "id_dtype", "offset_dtype"]
