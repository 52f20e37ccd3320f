"""The filters every corpus goes through, and writing the result (``corpora.md`` says why each filter is there)."""
from __future__ import annotations

import os
import re
import zlib
from collections import defaultdict
from pathlib import Path

from benchmarks.corpora.inputs import Raw

MIN_WORDS = 3
MAX_WORDS = 40
MAX_CHARS = 300
MAX_PIECES = 48  # words and punctuation marks; keeps all but a handful of texts within 64 MiniLM tokens
MIN_PER_CLASS = 20
CAP_PER_CLASS = 300
SEED = 0


def _giveaway(label: str, aliases: list[str]) -> re.Pattern[str]:
    """Matches a text naming its own label: the label (as words), its plural or singular, or an alias."""
    base = re.sub(r"[-_]", " ", label).strip().lower()
    terms = {base, label.lower()}
    terms |= {base + "s"} | ({base[:-1]} if base.endswith("s") and len(base) > 3 else set())
    terms |= {a.lower() for a in aliases}
    alts = sorted((re.escape(t) for t in terms if t), key=len, reverse=True)
    return re.compile(r"(?<![\w.+-])(?:" + "|".join(alts) + r")(?![\w+])", re.IGNORECASE)


_PIECE = re.compile(r"\w+|[^\w\s]")


def clean(raw: Raw) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Apply the common filters; returns sorted (text, label) rows and what each filter removed."""
    removed = defaultdict(int)
    patterns: dict[str, re.Pattern[str]] = {}
    by_key: dict[str, tuple[str, set[str]]] = {}
    for text, label in raw.rows:
        text = " ".join(text.split())
        n_words = len(text.split())
        too_long = n_words > MAX_WORDS or len(text) > MAX_CHARS or len(_PIECE.findall(text)) > MAX_PIECES
        if n_words < MIN_WORDS or too_long:
            removed["length"] += 1
            continue
        pat = patterns.get(label)
        if pat is None:
            pat = patterns[label] = _giveaway(label, raw.aliases.get(label, []))
        if pat.search(text):
            removed["names its label"] += 1
            continue
        key = text.casefold()
        if key in by_key:
            removed["duplicate"] += 1
            by_key[key][1].add(label)
        else:
            by_key[key] = (text, {label})
    per_class: dict[str, list[str]] = defaultdict(list)
    for key in sorted(by_key):
        text, labels = by_key[key]
        if len(labels) > 1:
            removed["under two labels"] += 1
            continue
        per_class[next(iter(labels))].append(text)
    import numpy as np

    rows = []
    for label in sorted(per_class):
        texts = sorted(per_class[label])
        if len(texts) < MIN_PER_CLASS:
            removed["small class"] += len(texts)
            continue
        if len(texts) > CAP_PER_CLASS:
            rng = np.random.default_rng([SEED, zlib.crc32(label.encode("utf-8"))])
            keep = sorted(rng.choice(len(texts), size=CAP_PER_CLASS, replace=False).tolist())
            removed["class cap"] += len(texts) - CAP_PER_CLASS
            texts = [texts[i] for i in keep]
        rows.extend((t, label) for t in texts)
    return rows, dict(removed)


def write_parquet(rows: list[tuple[str, str]], path: Path) -> None:
    """Write ``rows`` to ``path`` as Parquet (string columns ``text`` and ``label``), atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"text": pa.array([t for t, _ in rows], pa.string()), "label": pa.array([y for _, y in rows], pa.string())})
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
