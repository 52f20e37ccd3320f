"""Extra labelled text corpora for the quality suite, built offline from Debian packages' files.

``python -m benchmarks.corpora`` builds them (:mod:`benchmarks.corpora.build`; provenance,
licences and filters in ``benchmarks/corpora/corpora.md``). This module says where they are and
how to point a run at one; it imports nothing of distmeta, so the quality table stays light.
"""
from __future__ import annotations

import os
from pathlib import Path

#: The corpora built here (each ``NAME.parquet``); ``icd10cm`` is distmeta's own source.
PARQUET = {"debian-sections", "wordnet-topics", "fortunes"}


def corpora_dir() -> Path:
    """Where ``python -m benchmarks.corpora`` writes by default (same rule as ``distmeta.data.icd10cm.cache_root``)."""
    if os.environ.get("DISTMETA_CACHE_DIR"):
        return Path(os.environ["DISTMETA_CACHE_DIR"]).expanduser() / "corpora"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "distmeta" / "corpora"


def corpus_overrides(corpus: str, cdir: Path) -> list[str]:
    """Config overrides that point a run at ``corpus`` (none for icd10cm: the config's own source)."""
    if corpus == "icd10cm":
        return []
    return [f"data.source=parquet:{cdir / f'{corpus}.parquet'}", "data.text_column=text",
            "data.label_column=label", "data.small_classes=drop", "data.max_length=64"]
