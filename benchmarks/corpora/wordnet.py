"""wordnet-topics: WordNet 3.0 definitions, labelled by the synset's topic domain (``;c`` pointer)."""
from __future__ import annotations

import os
import re

from benchmarks.corpora.inputs import MissingInput, Raw, apt_install, dpkg_version

WORDNET_DIR = "/usr/share/wordnet"
WORDNET_PKG = "wordnet-base"
_LEADING_PAREN = re.compile(r"^\s*\([^()]*\)\s*")


def _wordnet_synsets() -> dict[tuple[str, str], tuple[list[str], str, list[tuple[str, str]]]]:
    """(offset, pos) -> (lemmas, definition, [(domain offset, domain pos)])."""
    out = {}
    for pos_file in ("noun", "verb", "adj", "adv"):
        path = os.path.join(WORDNET_DIR, f"data.{pos_file}")
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  "):  # licence header
                    continue
                head, _, gloss = line.rstrip("\n").partition(" | ")
                parts = head.split()
                offset, ss_type, n_words = parts[0], parts[2], int(parts[3], 16)
                pos = "a" if ss_type == "s" else ss_type
                lemmas = [parts[4 + 2 * i] for i in range(n_words)]
                p = 4 + 2 * n_words
                n_ptrs = int(parts[p])
                domains = []
                for i in range(n_ptrs):
                    sym, target, target_pos = parts[p + 1 + 4 * i : p + 4 + 4 * i]
                    if sym == ";c":  # member of this topic domain
                        domains.append((target, "a" if target_pos == "s" else target_pos))
                definition = gloss.split('; "')[0].split(' "')[0].strip().rstrip(";").strip()
                while _LEADING_PAREN.match(definition):  # "(law) a writ ..." names the domain
                    definition = _LEADING_PAREN.sub("", definition, count=1)
                out[(offset, pos)] = (lemmas, definition, domains)
    return out


def _lemma_name(lemma: str) -> str:
    return re.sub(r"\([a-z]+\)$", "", lemma).replace("_", " ")


def build_wordnet() -> Raw:
    """The (definition, topic domain) rows of every synset with exactly one topic domain."""
    if not os.path.exists(os.path.join(WORDNET_DIR, "data.noun")):
        raise MissingInput(f"WordNet 3.0 data ({WORDNET_DIR}/data.*)", apt_install(WORDNET_PKG))
    synsets = _wordnet_synsets()
    rows = []
    for key in sorted(synsets):
        _lemmas, definition, domains = synsets[key]
        labels = {_lemma_name(synsets[d][0][0]) for d in domains if d in synsets}
        if len(labels) != 1:  # no topic domain, or several: not a single-label example
            continue
        rows.append((definition, labels.pop()))
    source = (
        f"WordNet 3.0 ({WORDNET_DIR}/data.{{noun,verb,adj,adv}}, Debian package {WORDNET_PKG} "
        f"{dpkg_version(WORDNET_PKG)}); label = topic domain (;c pointer) of the synset"
    )
    return Raw(rows, source, {"computer science": ["computer", "computing"], "military": ["army"]})
