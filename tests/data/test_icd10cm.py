"""The ICD-10-CM corpus: shape, content, determinism and the on-disk cache."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from distmeta.config import DataConfig
from distmeta.data import load_icd10cm, load_source
from distmeta.data.icd10cm import cache_path, section_label


def col(ds, name: str) -> list[str]:
    """A column as a plain list (iterating a datasets Column row by row is slow)."""
    return ds[name][:]


@pytest.fixture(scope="module")
def icd():
    """The corpus through the normal (user) cache, built once per test session at most."""
    return load_icd10cm()


def test_shape(icd) -> None:
    assert icd.column_names == ["text", "label"]
    sections = set(col(icd, "label"))
    assert 200 <= len(sections) <= 400
    assert len(icd) > 30_000
    assert all(t.strip() for t in col(icd, "text"))
    pairs = list(zip(col(icd, "text"), col(icd, "label")))
    assert len(set(pairs)) == len(pairs), "identical (text, label) rows must be kept once"
    assert all(re.match(r"^[A-Z][0-9A-Z]{2}(-[A-Z][0-9A-Z]{2})? \S", s) for s in sections), sorted(sections)[:5]


def test_known_rows(icd) -> None:
    rows = dict(zip(col(icd, "text"), col(icd, "label")))
    assert rows["Cholera due to Vibrio cholerae 01, biovar cholerae"] == "A00-A09 Intestinal infectious diseases"
    assert rows["Respiratory tuberculosis"] == "A15-A19 Tuberculosis"
    assert col(icd, "text")[0] == "Cholera"


def test_no_seventh_character_codes(icd) -> None:
    """Extended subcategories (S52.521A ...) repeat their parent with an encounter suffix."""
    assert not [t for t in col(icd, "text") if "initial encounter" in t or t.endswith("sequela")]


def test_section_label_strips_code_range() -> None:
    assert section_label("A00-A09", "Intestinal infectious diseases (A00-A09)") == "A00-A09 Intestinal infectious diseases"
    assert section_label("B10", "Other human herpesviruses (B10)") == "B10 Other human herpesviruses"


def test_fresh_build_matches_and_disk_cache(icd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build into an empty cache equals the cached corpus, and a second load reads it back identically."""
    monkeypatch.setenv("DISTMETA_CACHE_DIR", str(tmp_path))
    target = cache_path()
    assert target.parent == tmp_path and not target.exists()
    built = load_icd10cm.__wrapped__()
    assert target.is_dir()
    assert [p.name for p in tmp_path.iterdir()] == [target.name], "no temporary directories left behind"
    again = load_icd10cm.__wrapped__()
    assert col(built, "text") == col(icd, "text") == col(again, "text")
    assert col(built, "label") == col(icd, "label") == col(again, "label")


def test_corrupt_cache_is_rebuilt(icd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTMETA_CACHE_DIR", str(tmp_path))
    target = cache_path()
    target.mkdir(parents=True)
    (target / "dataset_info.json").write_text("not json")
    ds = load_icd10cm.__wrapped__()
    assert len(ds) == len(icd)


def test_in_process_cache_returns_same_object() -> None:
    assert load_icd10cm() is load_icd10cm()


def test_load_source_ignores_column_config(icd) -> None:
    data = load_source(DataConfig(source="icd10cm", text_column="nope", label_column="also_nope"))
    assert len(data) == len(icd)
    assert len(data.class_names) == len(set(col(icd, "label")))
    assert data.class_names == sorted(data.class_names)
    i = data.texts.index("Cholera due to Vibrio cholerae 01, biovar cholerae")
    assert data.class_names[data.labels[i]] == "A00-A09 Intestinal infectious diseases"
    assert data.source == "icd10cm"


def test_a_cache_root_another_user_can_write_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 23: a corpus planted under a shared cache root would change every run's tasks."""
    from distmeta.errors import DistmetaError

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("DISTMETA_CACHE_DIR", str(shared))
    with pytest.raises(DistmetaError, match="ICD-10-CM corpus cache .*writable by other users"):
        load_icd10cm.__wrapped__()
    assert list(shared.iterdir()) == []
