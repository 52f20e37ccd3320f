"""Build extra labelled text corpora for distmeta's few-shot benchmark, offline.

Each corpus is built from files that Debian packages put on this machine (no hub,
no URLs) and written as ``DIR/NAME.parquet`` with string columns ``text`` and
``label``, ready for ``data.source: parquet:DIR/NAME.parquet`` with
``data.small_classes: drop``. See ``benchmarks/corpora/corpora.md`` for provenance,
licences, how labels are derived and the filters.

    python -m benchmarks.corpora [--out DIR] [--only NAME] [--install] [--baseline]

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
(label, text), so the same inputs always give the same file (:mod:`benchmarks.corpora.filters`).

A missing input is reported with the exact command that installs it; ``--install``
runs ``apt-get update`` / ``apt-get install`` itself.

``--baseline`` also measures a frozen all-MiniLM-L6-v2 nearest-centroid (cosine)
baseline on each corpus: a seed-0 60/20/20 class split from distmeta's ``make_split``,
600 5-way 1-shot and 600 5-way 5-shot episodes with 15 queries per class over the test
classes (needs the ``bench`` extra: ``pip install -e '.[bench]'``).
"""
from __future__ import annotations
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Callable

from benchmarks.corpora import corpora_dir
from benchmarks.corpora.baseline import baseline, check_with_distmeta
from benchmarks.corpora.debian import build_debian
from benchmarks.corpora.filters import clean, write_parquet
from benchmarks.corpora.fortunes import build_fortunes
from benchmarks.corpora.inputs import MissingInput, Raw
from benchmarks.corpora.wordnet import build_wordnet

CORPORA: dict[str, Callable[[], Raw]] = {
    "debian-sections": build_debian,
    "wordnet-topics": build_wordnet,
    "fortunes": build_fortunes,
}


def build(name: str, out: Path, install: bool) -> Path | None:
    """Build corpus ``name`` into ``out/NAME.parquet`` and print what it holds; None if an input is missing."""
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


def main(argv: list[str] | None = None) -> int:
    """Build the corpora the command line names; 1 if any input was missing."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="output folder (default $DISTMETA_CACHE_DIR/corpora or ~/.cache/distmeta/corpora)")
    ap.add_argument("--only", choices=sorted(CORPORA), action="append", help="build only this corpus (repeatable)")
    ap.add_argument("--install", action="store_true", help="run apt-get update / apt-get install for missing inputs")
    ap.add_argument("--baseline", action="store_true", help="also measure the frozen MiniLM nearest-centroid baseline")
    args = ap.parse_args(argv)
    out = (args.out or corpora_dir()).expanduser()
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
