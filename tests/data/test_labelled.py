"""LabelledText: the per-class row index that samplers draw from."""
from __future__ import annotations

import numpy as np
import pytest

from distmeta.data import LabelledText
from distmeta.errors import DataError


def test_rows_by_class_sorted_complete_and_cached() -> None:
    data = LabelledText(["a", "b", "c", "d", "e"], np.array([2, 0, 2, 0, 2]), ["x", "y", "z"], "test")
    rows = data.rows_by_class()
    assert set(rows) == {0, 1, 2}
    assert rows[0].tolist() == [1, 3]
    assert rows[1].tolist() == []
    assert rows[2].tolist() == [0, 2, 4]
    assert all(r.dtype == np.int64 for r in rows.values())
    assert data.rows_by_class() is rows
    assert len(data) == 5


def test_label_out_of_range_refused() -> None:
    with pytest.raises(DataError, match=r"0\.\.1"):
        LabelledText(["a", "b"], np.array([0, 2]), ["x", "y"], "test")


def test_length_mismatch_refused() -> None:
    with pytest.raises(DataError, match="2 texts"):
        LabelledText(["a", "b"], np.array([0]), ["x"], "test")


def test_duplicate_class_names_refused() -> None:
    with pytest.raises(DataError, match="'x'"):
        LabelledText(["a", "b"], np.array([0, 1]), ["x", "x"], "test")
