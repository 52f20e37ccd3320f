"""load_source: file formats, label handling, and one refusal per kind of bad input."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distmeta.config import DataConfig
from distmeta.data import load_source
from distmeta.errors import DataError

ROWS = [
    ("the cat sat", "cat"),
    ("a dog barked", "dog"),
    ("birds, singing", "bird"),
    ("another cat", "cat"),
    ("quoted \"dog\" text", "dog"),
]


def write(tmp_path: Path, kind: str, rows=ROWS, text: str = "text", label: str = "label") -> Path:
    """The same rows in one of the supported formats."""
    path = tmp_path / f"data.{kind}"
    records = [{text: t, label: y} for t, y in rows]
    if kind == "csv":
        import csv

        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=[text, label])
            w.writeheader()
            w.writerows(records)
    elif kind == "json":
        path.write_text(json.dumps(records))
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif kind == "parquet":
        pq.write_table(pa.Table.from_pylist(records), path)
    return path


def load(source: str, **kw) -> object:
    return load_source(DataConfig(source=source, **kw))


@pytest.mark.parametrize("kind", ["csv", "json", "jsonl", "parquet"])
def test_formats_load_the_same_rows(tmp_path: Path, kind: str) -> None:
    path = write(tmp_path, kind)
    data = load(f"{kind}:{path}")
    assert data.texts == [t for t, _ in ROWS]
    assert data.class_names == ["bird", "cat", "dog"]
    assert data.labels.dtype == np.int64
    assert data.labels.tolist() == [1, 2, 0, 1, 2]
    assert data.source == f"{kind}:{path}"


def test_custom_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "csv", text="sentence", label="intent")
    data = load(f"csv:{path}", text_column="sentence", label_column="intent")
    assert data.texts[0] == "the cat sat" and data.class_names == ["bird", "cat", "dog"]


def test_integer_labels_named_by_str_in_sorted_name_order(tmp_path: Path) -> None:
    path = tmp_path / "ints.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}", "label": y}) + "\n" for i, y in enumerate([10, 2, 2, 10, 7])))
    data = load(f"jsonl:{path}")
    assert data.class_names == ["10", "2", "7"]
    assert data.labels.tolist() == [0, 1, 1, 0, 2]


def test_missing_text_column(tmp_path: Path) -> None:
    path = write(tmp_path, "csv", text="sentence")
    with pytest.raises(DataError) as err:
        load(f"csv:{path}")
    msg = str(err.value)
    assert "'text'" in msg and str(path) in msg and "'sentence'" in msg and "'label'" in msg


def test_missing_label_column(tmp_path: Path) -> None:
    path = write(tmp_path, "jsonl", label="category")
    with pytest.raises(DataError) as err:
        load(f"jsonl:{path}", label_column="intent")
    msg = str(err.value)
    assert "'intent'" in msg and str(path) in msg and "'category'" in msg


def test_nonexistent_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.csv"
    with pytest.raises(DataError, match="does not exist") as err:
        load(f"csv:{path}")
    assert str(path) in str(err.value)


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="directory") as err:
        load(f"parquet:{tmp_path}")
    assert str(tmp_path) in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, "csv")
    path.chmod(0)
    with pytest.raises(DataError, match="not readable") as err:
        load(f"csv:{path}")
    assert str(path) in str(err.value)


def test_unreadable_file_reported_even_as_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root bypasses permissions, so simulate a denied read at the access check."""
    import distmeta.data.sources as sources

    path = write(tmp_path, "csv")
    monkeypatch.setattr(sources.os, "access", lambda p, mode: False)
    with pytest.raises(DataError, match="not readable") as err:
        load(f"csv:{path}")
    assert str(path) in str(err.value)


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.csv"
    path.write_text(content)
    with pytest.raises(DataError, match="is empty") as err:
        load(f"csv:{path}")
    assert str(path) in str(err.value)


def test_header_only_csv_has_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "header.csv"
    path.write_text("text,label\n")
    with pytest.raises(DataError, match="no rows") as err:
        load(f"csv:{path}")
    assert str(path) in str(err.value)


def test_empty_json_list_has_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "empty.json"
    path.write_text("[]")
    with pytest.raises(DataError, match="no rows") as err:
        load(f"json:{path}")
    assert str(path) in str(err.value)


def test_garbage_parquet(tmp_path: Path) -> None:
    path = tmp_path / "garbage.parquet"
    path.write_bytes(b"this is not a parquet file\n" * 10)
    with pytest.raises(DataError, match="could not be read as parquet") as err:
        load(f"parquet:{path}")
    assert str(path) in str(err.value)


def test_garbage_json(tmp_path: Path) -> None:
    path = tmp_path / "garbage.jsonl"
    path.write_text("{not json\n")
    with pytest.raises(DataError, match="could not be read as json") as err:
        load(f"jsonl:{path}")
    assert str(path) in str(err.value)


def test_empty_texts(tmp_path: Path) -> None:
    path = tmp_path / "blank.csv"
    path.write_text("text,label\nfine,a\n,a\n   ,b\nalso fine,b\n\t,a\n")
    with pytest.raises(DataError) as err:
        load(f"csv:{path}")
    msg = str(err.value)
    assert "3 of 5 rows" in msg and "empty or null text" in msg and "rows 1, 2, 4" in msg and str(path) in msg


def test_null_texts_in_json(tmp_path: Path) -> None:
    path = tmp_path / "nulls.jsonl"
    path.write_text('{"text": "ok", "label": "a"}\n{"text": null, "label": "b"}\n')
    with pytest.raises(DataError, match=r"1 of 2 rows have an empty or null text.*rows 1\b"):
        load(f"jsonl:{path}")


def test_null_labels(tmp_path: Path) -> None:
    path = tmp_path / "nolabel.csv"
    path.write_text("text,label\none,a\ntwo,\nthree,b\n")
    with pytest.raises(DataError) as err:
        load(f"csv:{path}")
    msg = str(err.value)
    assert "1 of 3 rows" in msg and "null" in msg and "'label'" in msg and "rows 1" in msg


def test_non_string_texts(tmp_path: Path) -> None:
    path = tmp_path / "numbers.jsonl"
    path.write_text('{"text": 3, "label": "a"}\n{"text": 4, "label": "b"}\n')
    with pytest.raises(DataError, match="text column 'text' holds int values"):
        load(f"jsonl:{path}")


def test_sinusoid_is_not_a_text_source() -> None:
    with pytest.raises(DataError, match="'sinusoid' is not a text source"):
        load("sinusoid")


def test_unknown_source_kind() -> None:
    cfg = DataConfig.model_construct(source="tsv:/tmp/x.tsv")  # bypasses the config's own prefix check
    with pytest.raises(DataError, match=r"'tsv:/tmp/x\.tsv' is not a text source"):
        load_source(cfg)


def test_hf_offline_fails_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets.config
    import huggingface_hub.constants

    # both libraries read these variables at import; make the already-imported ones agree
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)
    start = time.monotonic()
    with pytest.raises(DataError) as err:
        load("hf:distmeta-nonexistent/none")
    assert time.monotonic() - start < 10
    assert "'distmeta-nonexistent/none'" in str(err.value)
