"""fortunes: BSD fortune cookies, labelled by the fortune file they come from."""
from __future__ import annotations

import os
import re
from pathlib import Path

from benchmarks.corpora.inputs import MissingInput, Raw, apt_install, dpkg_version

FORTUNE_DIR = "/usr/share/games/fortunes"
FORTUNE_PKG = "fortunes"
FORTUNE_SKIP = {"ascii-art", "translate-me", "pratchett"}  # pictures, one-entry or non-English files
FORTUNE_ALIASES = {
    "computers": ["computer", "computing"],
    "men-women": ["man", "men", "woman", "women"],
    "songs-poems": ["song", "songs", "poem", "poems"],
    "linuxcookie": ["linux"],
    "startrek": ["star trek", "kirk", "spock", "enterprise", "mccoy"],
    "pets": ["pet", "dog", "cat"],
    "kids": ["kid", "child", "children"],
    "politics": ["political", "politician", "politicians"],
    "sports": ["sport"],
    "drugs": ["drug"],
    "goedel": ["gödel", "godel"],
    "paradoxum": ["paradox"],
}
_ATTRIBUTION = re.compile(r"^\s*(--|—|-\s+[A-Z])")


def _fortune_entries(text: str) -> list[str]:
    entries = []
    for chunk in re.split(r"(?m)^%\s*$", text):
        lines = [ln for ln in chunk.split("\n") if ln.strip() and not _ATTRIBUTION.match(ln)]
        if lines:
            entries.append(" ".join(ln.strip() for ln in lines))
    return entries


def build_fortunes() -> Raw:
    """The (fortune, file name) rows of every English fortune file, drawings and attributions left out."""
    if not os.path.isdir(FORTUNE_DIR) or not os.path.exists(os.path.join(FORTUNE_DIR, "fortunes")):
        raise MissingInput(f"BSD fortune files ({FORTUNE_DIR})", apt_install(FORTUNE_PKG))
    rows = []
    names = sorted(
        n for n in os.listdir(FORTUNE_DIR)
        if os.path.isfile(os.path.join(FORTUNE_DIR, n)) and "." not in n and n not in FORTUNE_SKIP
    )
    for name in names:
        raw = Path(FORTUNE_DIR, name).read_bytes().decode("utf-8", errors="replace")
        for entry in _fortune_entries(raw):
            letters = sum(ch.isalpha() for ch in entry)
            if "\ufffd" in entry or letters < 0.6 * len(entry):  # undecodable, or drawings / tables
                continue
            rows.append((entry, name))
    source = f"BSD fortune files ({FORTUNE_DIR}, Debian package {FORTUNE_PKG} {dpkg_version(FORTUNE_PKG)}); label = file name"
    return Raw(rows, source, FORTUNE_ALIASES)
