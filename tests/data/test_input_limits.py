"""Input that cannot hang or silently change a run (issue 23, findings 6, 7 and 12)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from distmeta.config import DataConfig, load_config
from distmeta.data import load_source
from distmeta.errors import DataError
from tests.helpers import WORDS, text_tiny, write_tiny_csv


def _csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


def test_csv_labels_are_read_as_strings_not_numbers(tmp_path):
    """``007`` and ``7`` (and ``1.0`` and ``1``) are different classes; inference made each pair one number."""
    rows = [("a first text", "007"), ("a second text", "7"), ("a third text", "1.0"), ("a fourth text", "1"),
            ("a fifth text", "007")]
    data = load_source(DataConfig(source=f"csv:{_csv(tmp_path / 'd.csv', rows)}"))
    assert data.class_names == ["007", "1", "1.0", "7"]
    assert data.labels.tolist() == [0, 3, 2, 1, 0]


def test_a_numeric_looking_text_column_is_text(tmp_path):
    data = load_source(DataConfig(source=f"csv:{_csv(tmp_path / 'd.csv', [('0042', 'a'), ('17', 'b')])}"))
    assert list(data.texts) == ["0042", "17"]


@pytest.mark.parametrize("blank", ["\u200b", "\x00", "\ufeff", "\u200b \ufeff\u2060", " \t\n"])
def test_a_text_of_only_invisible_characters_is_refused_with_its_row(tmp_path, blank):
    rows = [("fine text", "a"), ("more text", "b"), (blank, "a")]
    with pytest.raises(DataError, match=r"empty.*rows 2, counted from 0"):
        load_source(DataConfig(source=f"csv:{_csv(tmp_path / 'd.csv', rows)}"))


def test_a_text_over_the_character_cap_is_refused_naming_the_row_and_the_cap(tmp_path):
    rows = [("short text", "a"), ("x " * 40, "b"), ("short again", "a")]
    path = _csv(tmp_path / "d.csv", rows)
    with pytest.raises(DataError, match=r"data\.max_text_chars=50 .*rows 1, counted from 0"):
        load_source(DataConfig(source=f"csv:{path}", max_text_chars=50))
    assert len(load_source(DataConfig(source=f"csv:{path}", max_text_chars=80))) == 3  # at the cap: kept


def test_a_word_over_the_word_cap_is_refused_naming_the_row_and_the_cap(tmp_path):
    """The default cap catches the review's unbroken word before tokenizer training ever sees it."""
    rows = [("short text", "a"), ("fine words here", "b"), ("a " + "y" * 5000 + " b", "a"), ("z" * 1000, "b")]
    path = _csv(tmp_path / "d.csv", rows)
    with pytest.raises(DataError, match=r"data\.max_word_chars=1000 .*rows 2, counted from 0"):
        load_source(DataConfig(source=f"csv:{path}"))
    assert len(load_source(DataConfig(source=f"csv:{path}", max_word_chars=None))) == 4


def test_both_caps_are_named_in_one_error(tmp_path):
    path = _csv(tmp_path / "d.csv", [("short text", "a"), ("w" * 300, "b"), ("fine", "a")])
    with pytest.raises(DataError, match=r"max_text_chars=100 .*rows 1,.*; and .*max_word_chars=200 .*rows 1,"):
        load_source(DataConfig(source=f"csv:{path}", max_text_chars=100, max_word_chars=200))


def test_caps_are_config_keys_with_defaults():
    cfg = load_config(None, ["data.max_text_chars=10", "data.max_word_chars=5"])
    assert (cfg.data.max_text_chars, cfg.data.max_word_chars) == (10, 5)
    assert DataConfig().max_text_chars >= 10_000 and DataConfig().max_word_chars >= 100


def test_a_text_with_no_real_token_is_refused_with_its_row(tmp_path, monkeypatch):
    """Only combining accents: not blank, but the WordPiece normaliser strips them, leaving [CLS] [SEP]."""
    from distmeta.experiment import prepare_experiment

    monkeypatch.setenv("DISTMETA_CACHE_DIR", str(tmp_path / "cache"))
    path = write_tiny_csv(tmp_path / "d.csv")
    with path.open("a", newline="") as f:
        csv.writer(f).writerow(["\u0301\u0301", next(iter(WORDS))])
    row = sum(1 for _ in path.open()) - 2  # the appended row, counted from 0 without the header
    with pytest.raises(DataError, match=rf"no token but the tokenizer's special tokens \(rows {row}, counted from 0"):
        prepare_experiment(load_config(None, text_tiny(path)))


def test_tiny_corpus_still_prepares(tmp_path, monkeypatch):
    """The guard refuses nothing a normal corpus has."""
    from distmeta.experiment import prepare_experiment

    monkeypatch.setenv("DISTMETA_CACHE_DIR", str(tmp_path / "cache"))
    exp = prepare_experiment(load_config(None, text_tiny(write_tiny_csv(tmp_path / "d.csv"))))
    assert np.all(exp.corpus.lengths() > 2)
