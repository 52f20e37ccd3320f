"""A labelled text corpus in the one shape the rest of distmeta uses."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np

from distmeta.errors import DataError


class TextColumn(Sequence[str]):
    """One string column of an HF ``datasets.Dataset``, read on demand from its Arrow table.

    The corpus's texts stay in Arrow memory (memory-mapped for files and the HF cache), so a
    driver holding a :class:`LabelledText` of millions of rows keeps only labels in Python and
    numpy. Behaves as a read-only list of strings; :meth:`batches` streams it.

    Args:
        dataset: the Dataset (any indices mapping is honoured).
        column: the name of its string column.
    """

    def __init__(self, dataset: Any, column: str) -> None:
        self.dataset = dataset.select_columns([column])
        self.column = column
        self._fingerprint: str | None = None

    def fingerprint(self) -> str:
        """SHA-256 of the texts in order (their lengths and bytes, read from the Arrow buffers); computed once.

        Keys the on-disk caches built from a corpus (token ids, trained tokenizers): the same
        texts give the same key whatever file, path or batching they came from.
        """
        if self._fingerprint is None:
            self._fingerprint = _content_hash(self.dataset, self.column)
        return self._fingerprint

    def __len__(self) -> int:
        return len(self.dataset)

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> list[str]: ...

    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return self.dataset[i][self.column]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(i)
        return self.dataset[i % n][self.column]

    def __iter__(self) -> Iterator[str]:
        for batch in self.batches():
            yield from batch

    def batches(self, size: int = 10_000) -> Iterator[list[str]]:
        """The texts in order, ``size`` at a time."""
        for table in self.dataset.with_format("arrow").iter(batch_size=size):
            yield table.column(self.column).to_pylist()

    def select(self, rows: Sequence[int] | np.ndarray) -> "TextColumn":
        """The texts of ``rows``, in that order (a view: nothing is copied)."""
        return TextColumn(self.dataset.select(np.asarray(rows, dtype=np.int64)), self.column)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, TextColumn)):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


def _content_hash(ds: Any, column: str, batch: int = 100_000) -> str:
    """SHA-256 of a string column: the lengths and the bytes of its texts, hashed apart (batching does not matter)."""
    import hashlib

    import pyarrow as pa

    lengths, data = hashlib.sha256(), hashlib.sha256()
    for table in ds.with_format("arrow").iter(batch_size=batch):
        for arr in table.column(column).chunks:
            bufs = arr.buffers()
            offs = np.frombuffer(bufs[1], dtype=np.int64 if pa.types.is_large_string(arr.type) else np.int32)
            offs = offs[arr.offset : arr.offset + len(arr) + 1]
            lengths.update(np.diff(offs).astype(np.int64).tobytes())
            if bufs[2] is not None and offs[-1] > offs[0]:
                data.update(memoryview(bufs[2])[int(offs[0]) : int(offs[-1])])
    return hashlib.sha256(lengths.digest() + data.digest()).hexdigest()


@dataclass
class LabelledText:
    """Texts with integer class ids; class ``i`` is named ``class_names[i]``.

    ``source`` says where the rows came from (``"icd10cm"``, ``"csv:/path/x.csv"``) so
    errors and run records can name it.
    """

    texts: Sequence[str]  # a TextColumn for loaded corpora; any sequence of strings works
    labels: np.ndarray
    class_names: list[str]
    source: str
    _rows_by_class: dict[int, np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.labels.ndim != 1 or len(self.labels) != len(self.texts):
            raise DataError(
                f"{self.source}: {len(self.texts)} texts but labels of shape {self.labels.shape}; need one label per text"
            )
        if len(set(self.class_names)) != len(self.class_names):
            dup = sorted({n for n in self.class_names if self.class_names.count(n) > 1})
            raise DataError(f"{self.source}: class names must be unique, repeated: {dup[:10]}")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise DataError(
                f"{self.source}: labels must lie in 0..{len(self.class_names) - 1}, "
                f"got {int(self.labels.min())}..{int(self.labels.max())}"
            )

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def rows_by_class(self) -> dict[int, np.ndarray]:
        """Class id -> sorted int64 row indices, for every class; computed once, then cached.

        Episode samplers draw from this on every step, hence the cache.
        """
        if self._rows_by_class is None:
            order = np.argsort(self.labels, kind="stable")
            bounds = np.searchsorted(self.labels[order], np.arange(len(self.class_names) + 1))
            self._rows_by_class = {
                c: order[bounds[c] : bounds[c + 1]].astype(np.int64) for c in range(len(self.class_names))
            }
        return self._rows_by_class

    def class_counts(self) -> np.ndarray:
        """Rows per class id, as an int64 array of length ``len(class_names)``."""
        return np.bincount(self.labels, minlength=len(self.class_names)).astype(np.int64)
