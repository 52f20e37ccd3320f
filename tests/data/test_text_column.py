"""TextColumn: a loaded corpus's texts read from Arrow on demand, behaving as a list of strings."""
from __future__ import annotations

import pytest

from distmeta.config import DataConfig
from distmeta.data import load_source
from distmeta.data.labelled import TextColumn
from tests.helpers import write_tiny_csv


def test_text_column_reads_like_the_list_it_replaces(tmp_path):
    import csv

    path = write_tiny_csv(tmp_path / "d.csv", per_class=3)
    with open(path) as f:
        want = [row["text"] for row in csv.DictReader(f)]
    texts = load_source(DataConfig(source=f"csv:{path}")).texts
    assert isinstance(texts, TextColumn) and len(texts) == len(want) == 24
    assert texts == want and list(texts) == want and texts[0] == want[0] and texts[-1] == want[-1]
    assert texts[2:5] == want[2:5] and texts.index(want[7]) == want.index(want[7])
    assert [t for b in texts.batches(5) for t in b] == want and [len(b) for b in texts.batches(10)] == [10, 10, 4]
    assert texts.select([5, 1, 1]) == [want[5], want[1], want[1]]
    with pytest.raises(IndexError):
        texts[24]
