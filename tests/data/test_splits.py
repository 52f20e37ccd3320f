"""Class splits: small-class policy, fractions, explicit lists, ways check, save/load."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from distmeta.config import SplitConfig
from distmeta.data import (
    ClassSplit,
    LabelledText,
    check_ways,
    load_split,
    make_split,
    save_split,
    usable_classes,
)
from distmeta.errors import DataError


def corpus(counts: list[int]) -> LabelledText:
    """Class ``c{i}`` with ``counts[i]`` rows."""
    labels = np.repeat(np.arange(len(counts)), counts)
    texts = [f"text {i}" for i in range(len(labels))]
    return LabelledText(texts, labels, [f"c{i:02d}" for i in range(len(counts))], "test-corpus")


def test_small_classes_error_lists_them() -> None:
    data = corpus([20, 3, 20, 0, 7])
    with pytest.raises(DataError) as err:
        usable_classes(data, 10, "error")
    msg = str(err.value)
    assert "3 of 5 classes" in msg and "fewer than 10" in msg
    assert "'c01' (3)" in msg and "'c03' (0)" in msg and "'c04' (7)" in msg
    assert "c00" not in msg and "c02" not in msg
    assert "data.small_classes=drop" in msg


def test_small_classes_error_truncates_long_lists() -> None:
    data = corpus([1] * 25 + [10])
    with pytest.raises(DataError, match=r"'c19' \(1\), \.\.\. and 5 more") as err:
        usable_classes(data, 5, "error")
    assert "'c20'" not in str(err.value)


def test_small_classes_drop_warns_and_removes() -> None:
    data = corpus([20, 3, 20, 0, 7])
    with pytest.warns(UserWarning, match="dropped 3 of 5 classes with fewer than 10"):
        keep = usable_classes(data, 10, "drop")
    assert keep == [0, 2]


def test_no_small_classes_no_warning(recwarn: pytest.WarningsRecorder) -> None:
    assert usable_classes(corpus([5, 6, 7]), 5, "error") == [0, 1, 2]
    assert usable_classes(corpus([5, 6, 7]), 5, "drop") == [0, 1, 2]
    assert not recwarn.list


def test_drop_everything_refused() -> None:
    with pytest.raises(DataError, match="no class has at least 50"):
        usable_classes(corpus([5, 6]), 50, "drop")


def test_fraction_split_disjoint_covering_sized() -> None:
    data = corpus([3] * 10)
    split = make_split(data, SplitConfig(), seed=0)
    parts = [split.train, split.val, split.test]
    assert [len(p) for p in parts] == [6, 2, 2]
    assert sorted(sum(parts, [])) == list(range(10))
    assert all(p == sorted(p) for p in parts)


def test_fraction_split_only_given_classes() -> None:
    data = corpus([3] * 12)
    classes = [0, 2, 3, 5, 7, 8, 9, 11]
    split = make_split(data, SplitConfig(train=0.5, val=0.25, test=0.25), seed=3, classes=classes)
    assert sorted(split.train + split.val + split.test) == classes
    assert (len(split.train), len(split.val), len(split.test)) == (4, 2, 2)


def test_fraction_split_deterministic_and_seeded() -> None:
    data = corpus([3] * 40)
    a = make_split(data, SplitConfig(), seed=7)
    b = make_split(data, SplitConfig(), seed=7)
    c = make_split(data, SplitConfig(), seed=8)
    assert a == b
    assert a.test != c.test and a.train != c.train


@pytest.mark.parametrize("n", range(2, 30))
@pytest.mark.parametrize("fractions", [(0.6, 0.2, 0.2), (0.8, 0.0, 0.2), (0.1, 0.1, 0.8), (0.98, 0.01, 0.01)])
def test_fraction_split_every_class_once_test_nonempty(n: int, fractions: tuple[float, float, float]) -> None:
    train, val, test = fractions
    split = make_split(corpus([1] * n), SplitConfig(train=train, val=val, test=test), seed=n)
    assert sorted(split.train + split.val + split.test) == list(range(n))
    assert len(split.test) >= 1 and len(split.train) >= 1


def test_one_class_cannot_be_split() -> None:
    with pytest.raises(DataError, match="need at least 2"):
        make_split(corpus([5]), SplitConfig(), seed=0)


def test_explicit_split_by_name() -> None:
    data = corpus([3] * 6)
    cfg = SplitConfig(train_classes=["c05", "c00", "c02"], val_classes=["c01"], test_classes=["c04", "c03"])
    split = make_split(data, cfg, seed=0)
    assert split == ClassSplit(train=[0, 2, 5], val=[1], test=[3, 4])
    assert split.names(data) == {"train": ["c00", "c02", "c05"], "val": ["c01"], "test": ["c03", "c04"]}


def test_explicit_split_without_val() -> None:
    split = make_split(corpus([3] * 4), SplitConfig(train_classes=["c00", "c01"], test_classes=["c03"]), seed=0)
    assert split.val == [] and split.train == [0, 1] and split.test == [3]


def test_explicit_unknown_class_name() -> None:
    cfg = SplitConfig(train_classes=["c00", "c1"], test_classes=["c02", "zebra"])
    with pytest.raises(DataError) as err:
        make_split(corpus([3] * 4), cfg, seed=0)
    msg = str(err.value)
    assert "'c1'" in msg and "data.split.train_classes" in msg and "did you mean 'c01'" in msg


def test_explicit_unknown_class_name_in_test() -> None:
    cfg = SplitConfig(train_classes=["c00"], test_classes=["c02", "zebra"])
    with pytest.raises(DataError, match=r"data\.split\.test_classes.*'zebra'"):
        make_split(corpus([3] * 4), cfg, seed=0)


def test_explicit_overlapping_lists() -> None:
    cfg = SplitConfig(train_classes=["c00", "c01", "c02"], val_classes=["c02"], test_classes=["c01", "c03"])
    with pytest.raises(DataError, match="overlap") as err:
        make_split(corpus([3] * 4), cfg, seed=0)
    msg = str(err.value)
    assert "'c01' in train and test" in msg and "'c02' in train and val" in msg and "c03" not in msg


def test_explicit_names_among_dropped_classes() -> None:
    data = corpus([10, 1, 10, 10])
    with pytest.warns(UserWarning):
        usable = usable_classes(data, 5, "drop")
    cfg = SplitConfig(train_classes=["c00", "c01"], test_classes=["c02"])
    with pytest.raises(DataError, match=r"left out.*'c01'"):
        make_split(data, cfg, seed=0, classes=usable)


def test_classsplit_refuses_overlap() -> None:
    with pytest.raises(DataError, match="class id 2"):
        ClassSplit(train=[1, 2], val=[], test=[2, 3])


def test_check_ways_names_the_short_split() -> None:
    split = ClassSplit(train=list(range(10)), val=[10, 11, 12, 13, 14], test=[15, 16, 17])
    with pytest.raises(DataError, match=r"split 'test' has 3 classes, fewer than data\.ways=5"):
        check_ways(split, {"train": 5, "val": 5, "test": 5})
    check_ways(split, {"train": 5, "val": 5, "test": 3})


def test_check_ways_skips_absent_val() -> None:
    split = ClassSplit(train=list(range(5)), val=[], test=[5, 6, 7, 8, 9])
    check_ways(split, {"train": 5, "test": 5})
    with pytest.raises(DataError, match="split 'val' has 0 classes"):
        check_ways(split, {"train": 5, "val": 5, "test": 5})


def test_save_load_round_trip(tmp_path: Path) -> None:
    data = corpus([3] * 10)
    split = make_split(data, SplitConfig(), seed=1)
    path = tmp_path / "run" / "split.json"
    save_split(split, data, path)
    assert [p.name for p in path.parent.iterdir()] == ["split.json"], "no temporary file left behind"
    saved = json.loads(path.read_text())
    assert set(saved) == {"train", "val", "test"}
    assert saved["test"] == [data.class_names[c] for c in split.test]
    assert load_split(path, data) == split


def test_load_split_by_name_survives_renumbering(tmp_path: Path) -> None:
    """Ids follow names: a corpus with an extra class renumbers ids, the split keeps its classes."""
    data = corpus([3] * 5)
    split = ClassSplit(train=[0, 1, 2], val=[], test=[3, 4])
    save_split(split, data, tmp_path / "s.json")
    bigger = LabelledText(["x"] * 6, np.arange(6), ["a-new"] + data.class_names, "bigger")
    assert load_split(tmp_path / "s.json", bigger) == ClassSplit(train=[1, 2, 3], val=[], test=[4, 5])


def test_load_split_missing_class(tmp_path: Path) -> None:
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ["c00", "gone"], "val": [], "test": ["c01"]}))
    with pytest.raises(DataError, match=r"missing from test-corpus: \['gone'\]") as err:
        load_split(path, corpus([3] * 3))
    assert str(path) in str(err.value)


def test_load_split_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_split(tmp_path / "none.json", corpus([3] * 3))
