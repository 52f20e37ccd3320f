"""Checks and encodings of a Dataset's text and label columns, computed in Arrow a batch at a time.

A corpus of millions of rows never becomes millions of Python objects here: texts are
checked by Arrow compute kernels and stay in the Dataset, labels become an ``int64`` array
of class ids through their distinct values. Every refusal names the column and the rows
(counted from 0), as :func:`distmeta.data.sources.to_labelled` documents.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distmeta.errors import DataError

BATCH = 500_000  # rows per Arrow batch: bounds the temporary arrays of a check
_SHOW_ROWS = 5


def rows_text(rows: list[int]) -> str:
    """``1, 2, 4, ...``: the first few row numbers of a refusal."""
    shown = ", ".join(str(r) for r in rows[:_SHOW_ROWS])
    return shown + (", ..." if len(rows) > _SHOW_ROWS else "")


def _batches(ds: Any, column: str) -> Iterator[tuple[int, pa.Array]]:
    """(first row, column values) of each batch of ``ds``."""
    start = 0
    for table in ds.with_format("arrow").iter(batch_size=BATCH):
        values = table.column(column).combine_chunks()
        yield start, values
        start += len(values)


def _hits(mask: pa.Array, start: int) -> list[int]:
    """Row numbers where ``mask`` is true (null counts as false)."""
    return (np.flatnonzero(mask.fill_null(False).to_numpy(zero_copy_only=False)) + start).tolist()


#: A blank text: nothing but whitespace, separators, control and format characters (``\x00``,
#: zero-width spaces and joiners, the byte-order mark ``\ufeff``). A match, not a replacement:
#: RE2 stops at a text's first visible character, and no string is copied.
BLANK = r"^[\s\p{Z}\p{Cc}\p{Cf}]*$"


def _long_word_rows(values: pa.Array, cap: int, start: int) -> list[int]:
    """Rows of ``values`` holding a whitespace-separated word of more than ``cap`` characters."""
    candidates = _hits(pc.greater(pc.utf8_length(values), cap), 0)  # only a longer text can hold a longer word
    if not candidates:
        return []
    words = pc.utf8_split_whitespace(values.take(pa.array(candidates)))
    long = pc.greater(pc.utf8_length(pc.list_flatten(words)), cap).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(words).to_numpy(zero_copy_only=False)
    return sorted({candidates[i] + start for i in parents[long]})


def _over(rows: list[int], total: int, what: str, field: str, cap: int | None) -> list[str]:
    """The sentence naming ``rows`` over cap ``field`` (none when there are no such rows)."""
    if not rows:
        return []
    return [f"{len(rows)} of {total} rows have {what} than {field}={cap} characters (rows {rows_text(rows)}, "
            f"counted from 0); shorten or split those texts, or raise {field}"]


def check_texts(ds: Any, column: str, where: str, max_chars: int | None = None,
                max_word_chars: int | None = None) -> None:
    """Refuse a text column of non-strings, blank or null texts, or texts over the length caps.

    Args:
        ds: the Dataset.
        column: its text column.
        where: the origin, for messages ("file '/x.csv'").
        max_chars: most characters a text may have (``data.max_text_chars``); None: no cap.
        max_word_chars: most characters of one whitespace-separated word (``data.max_word_chars``): tokenizer
            training time grows faster than linearly with a word's length; None: no cap.
    Raises:
        DataError: naming the column, the rows (counted from 0) and the cap.
    """
    kind = ds.features[column]
    dtype = getattr(kind, "dtype", None)
    if dtype not in ("string", "large_string", "null"):
        for start, values in _batches(ds, column):
            valid = _hits(values.is_valid(), start)
            if valid:
                first = values[valid[0] - start].as_py()
                raise DataError(
                    f"{where}: text column {column!r} holds {type(first).__name__} values, not strings "
                    f"({len(ds)} rows, e.g. row {valid[0]}: {first!r}); is data.text_column the right column?")
    empty: list[int] = []
    long: list[int] = []
    long_words: list[int] = []
    for start, values in _batches(ds, column):
        if pa.types.is_null(values.type):
            empty += list(range(start, start + len(values)))
            continue
        blank = pc.match_substring_regex(values, BLANK)
        empty += _hits(pc.or_kleene(values.is_null(), blank), start)
        if max_chars is not None:
            long += _hits(pc.greater(pc.utf8_length(values), max_chars), start)
        if max_word_chars is not None:
            long_words += _long_word_rows(values, max_word_chars, start)
    if empty:
        raise DataError(
            f"{where}: {len(empty)} of {len(ds)} rows have an empty or null text in column {column!r}, or one of "
            f"only whitespace, control or invisible characters (rows {rows_text(empty)}, counted from 0)")
    over = _over(long, len(ds), "more characters", "data.max_text_chars", max_chars) + \
        _over(long_words, len(ds), "a word (no whitespace) longer", "data.max_word_chars", max_word_chars)
    if over:
        raise DataError(f"{where}: text column {column!r}: " + "; and ".join(over))


def encode_labels(ds: Any, column: str, where: str) -> tuple[np.ndarray, list[str]]:
    """Class ids (``int64``, one per row) and class names (sorted ``str(label)``, or ClassLabel names).

    Raises:
        DataError: null or NaN labels, labels that are neither strings nor numbers, ClassLabel ids out of range.
    """
    import datasets

    missing: list[int] = []
    distinct: list[pa.Array] = []
    for start, values in _batches(ds, column):
        t = values.type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)
                or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)):
            first = values[_hits(values.is_valid(), 0)[0]].as_py() if values.null_count < len(values) else None
            raise DataError(f"{where}: label column {column!r} must hold strings or integers, got "
                            f"{type(first).__name__} at row {start}: {first!r}")
        bad = values.is_null()
        if pa.types.is_floating(t):
            bad = pc.or_kleene(bad, pc.is_nan(values))
        missing += _hits(bad, start)
        distinct.append(pc.unique(values.drop_null()))
    if missing:
        raise DataError(
            f"{where}: {len(missing)} of {len(ds)} rows have a null (or NaN) label in column {column!r} "
            f"(rows {rows_text(missing)}, counted from 0)")
    uniques = pc.unique(pa.chunked_array(distinct).combine_chunks()) if distinct else pa.array([])
    feature = ds.features.get(column)
    raw = uniques.to_pylist()
    if isinstance(feature, datasets.ClassLabel):
        out = [y for y in raw if not 0 <= int(y) < feature.num_classes]
        if out:
            rows = [r for start, v in _batches(ds, column) for r in _hits(pc.is_in(v, pa.array(out)), start)]
            raise DataError(f"{where}: label column {column!r} has ids outside its {feature.num_classes} classes "
                            f"(rows {rows_text(rows)}, e.g. {out[0]!r})")
        names = [feature.int2str(int(y)) for y in raw]
    else:
        names = [str(y) for y in raw]
    class_names = sorted(set(names))
    index = {n: i for i, n in enumerate(class_names)}
    lookup = np.array([index[n] for n in names], dtype=np.int64)
    labels = np.empty(len(ds), dtype=np.int64)
    for start, values in _batches(ds, column):
        labels[start : start + len(values)] = lookup[pc.index_in(values, value_set=uniques).to_numpy()]
    return labels, class_names


__all__ = ["check_texts", "encode_labels", "rows_text"]
