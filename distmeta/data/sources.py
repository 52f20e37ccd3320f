"""``data.source`` -> :class:`LabelledText`, every corpus through HF ``datasets``.

Sources:

* ``icd10cm``: ICD-10-CM descriptions by section (:func:`distmeta.data.icd10cm.load_icd10cm`);
  its columns are always ``text`` and ``label``, whatever ``data.text_column`` says.
* ``hf:NAME``: ``datasets.load_dataset(NAME, data.hf_config, split=data.hf_split)``, a
  dataset on the Hugging Face Hub or in the local HF cache. With ``HF_HUB_OFFLINE=1``
  only cached datasets load; anything else is a :class:`DataError` naming ``NAME``.
  Integer labels with a ``ClassLabel`` feature are named by that feature's names.
* ``csv:PATH``, ``json:PATH``, ``jsonl:PATH``, ``parquet:PATH``: a local file through
  ``datasets.load_dataset("csv" | "json" | "parquet", data_files=PATH, split="train")``
  (``json`` reads both JSON lines and a JSON list of records).

Texts come from ``data.text_column`` and labels from ``data.label_column``. Labels may
be strings or integers; class names are ``str(label)`` and class ids follow the sorted
names, so the same file always gives the same ids. CSV columns are read as strings, never
type-inferred (``007`` and ``7`` stay two classes); JSON and Parquet keep the types the file
states. Anything that could not make valid few-shot tasks (missing file or column, no rows,
blank texts, texts over ``data.max_text_chars`` or with a word over ``data.max_word_chars``,
null labels) is refused with a :class:`DataError` naming the file, column and rows.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from distmeta.config import DataConfig
from distmeta.data.columns import check_texts, encode_labels
from distmeta.data.labelled import LabelledText, TextColumn
from distmeta.errors import DataError

FILE_BUILDERS = {"csv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}
"""Source prefix -> the ``datasets`` packaged builder that reads it."""


def load_source(cfg: DataConfig) -> LabelledText:
    """Load and check the corpus named by ``cfg.source`` (see the module docstring)."""
    import datasets

    datasets.disable_progress_bars()
    source = cfg.source
    kind, _, rest = source.partition(":")
    caps = (cfg.max_text_chars, cfg.max_word_chars)
    if source == "icd10cm":
        from distmeta.data.icd10cm import load_icd10cm

        return to_labelled(load_icd10cm(), "text", "label", source, where="the ICD-10-CM corpus", caps=caps)
    if kind == "hf" and rest:
        ds = _load_hf(rest, cfg.hf_config, cfg.hf_split)
        return to_labelled(ds, cfg.text_column, cfg.label_column, source, where=f"HF dataset {rest!r}", caps=caps)
    if kind in FILE_BUILDERS and rest:
        path = _check_file(rest)
        ds = _load_file(FILE_BUILDERS[kind], path)
        return to_labelled(ds, cfg.text_column, cfg.label_column, source, where=f"file {str(path)!r}", caps=caps)
    raise DataError(
        f"data.source={source!r} is not a text source; use icd10cm, hf:NAME, csv:PATH, json:PATH, "
        "jsonl:PATH or parquet:PATH (sinusoid is a regression family with no texts)"
    )


def _check_file(raw: str) -> Path:
    """The path of a file source, refused early when it is missing, unreadable or empty."""
    path = Path(raw).expanduser()
    if not path.exists():
        raise DataError(f"data file {str(path)!r} does not exist")
    if path.is_dir():
        raise DataError(f"data file {str(path)!r} is a directory, not a file")
    if not os.access(path, os.R_OK):
        raise DataError(f"data file {str(path)!r} is not readable (check its permissions)")
    size = path.stat().st_size
    if size == 0 or (size < 4096 and not path.read_bytes().strip()):
        raise DataError(f"data file {str(path)!r} is empty")
    return path


def _csv_features(path: Path) -> Any:
    """Every column of a CSV file's header as a string feature, so no value is type-inferred.

    Inference would read labels ``007`` and ``7`` (or ``1.0`` and ``1``) as one number, merging
    two classes silently. None when the header cannot be read or repeats a name (then
    ``datasets`` reads the file as it would without this, and reports what is wrong).
    """
    import csv

    import datasets

    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            header = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    if not header or len(set(header)) != len(header):
        return None
    return datasets.Features({name: datasets.Value("string") for name in header})


def _load_file(builder: str, path: Path) -> Any:
    """``datasets.load_dataset(builder, data_files=path, split="train")``, failures as DataError.

    CSV columns are read as strings (:func:`_csv_features`); JSON and Parquet keep the types the file states.
    """
    import datasets

    kwargs = {}
    if builder == "csv":
        features = _csv_features(path)
        if features is not None:
            kwargs["features"] = features
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as err:  # datasets raises many types for malformed files; all mean "unreadable"
        if _means_no_rows(err):
            raise DataError(f"data file {str(path)!r} has no rows") from None
        raise DataError(f"data file {str(path)!r} could not be read as {builder}: {_describe(err)}") from None


def _load_hf(name: str, config: str | None, split: str) -> Any:
    """A Hub (or HF-cached) dataset split; unreachable, unknown or malformed ones as DataError."""
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # offline, unknown name, bad config or split: all reported the same way
        raise DataError(
            f"could not load HF dataset {name!r} (data.hf_config={config!r}, data.hf_split={split!r}): {_describe(err)}"
        ) from None
    if not isinstance(ds, datasets.Dataset):
        raise DataError(f"HF dataset {name!r} split {split!r} is a {type(ds).__name__}, not a table of rows")
    return ds


def _means_no_rows(err: BaseException) -> bool:
    """datasets reports a header-only file or an empty JSON list as a split with no data."""
    return "corresponds to no data" in str(err)


def _describe(err: BaseException) -> str:
    """One line for an exception, using its cause where datasets wraps the real error."""
    inner = err.__cause__ or err.__context__
    parts = [f"{type(err).__name__}: {err}"]
    if inner is not None and str(inner) and str(inner) not in str(err):
        parts.append(f"{type(inner).__name__}: {inner}")
    text = " <- ".join(parts).replace("\n", " ")
    return text if len(text) <= 400 else text[:397] + "..."


def to_labelled(ds: Any, text_column: str, label_column: str, source: str, where: str,
                caps: tuple[int | None, int | None] = (None, None)) -> LabelledText:
    """Check a loaded Dataset and turn it into a :class:`LabelledText`.

    ``where`` names the origin in messages ("file '/x.csv'"); ``caps`` are the most characters
    per text and per word (``data.max_text_chars``, ``data.max_word_chars``; None: no cap). Row numbers in messages
    count data rows from 0 (a CSV header line is not a row). The texts stay in the
    Dataset's Arrow table (a :class:`~distmeta.data.labelled.TextColumn`); checks and label
    encoding run in Arrow, a batch at a time.
    """
    if len(ds) == 0:
        raise DataError(f"{where} has no rows")
    available = list(ds.column_names)
    for role, col in (("text", text_column), ("label", label_column)):
        if col not in available:
            raise DataError(
                f"{where} has no {role} column {col!r} (set data.{role}_column); available columns: {available}"
            )
    check_texts(ds, text_column, where, *caps)
    labels, class_names = encode_labels(ds, label_column, where)
    return LabelledText(texts=TextColumn(ds, text_column), labels=labels, class_names=class_names, source=source)
