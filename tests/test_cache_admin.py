"""``distmeta cache list | prune`` (issue 23): what the caches take, and freeing it."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from distmeta.cache_admin import parse_age
from distmeta.cli import main
from distmeta.errors import DistmetaError
from distmeta.text import train_tokenizer
from distmeta.text.tokenized_cache import cached_tokenizer, tokenize_corpus

TEXTS = ["one short text", "another short text", "a third one"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture()
def filled(tmp_path, monkeypatch):
    """A cache root with two token entries (one unused for 40 days), a tokenizer, and a dead builder's leftover."""
    monkeypatch.setenv("DISTMETA_CACHE_DIR", str(tmp_path))
    tok = train_tokenizer(TEXTS, "wordpiece", 120, 1, True)
    recent = tokenize_corpus(tok, TEXTS, 8).ids.filename
    old = tokenize_corpus(tok, TEXTS[:2], 8).ids.filename
    cached_tokenizer("t" * 24, lambda: tok)
    old_entry = os.path.dirname(old)
    past = time.time() - 40 * 86400
    os.utime(old_entry, (past, past))
    leftover = tmp_path / "prefix" / f".abc.tmp{_dead_pid()}"
    leftover.mkdir(parents=True)
    (leftover / "states.npy").write_bytes(b"\0" * 4096)
    return tmp_path, os.path.dirname(recent), old_entry, leftover


def test_list_shows_every_entry_with_its_size_and_the_totals(filled, capsys):
    root, recent, old, leftover = filled
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    for path in (recent, old, leftover):
        assert str(path) in out
    assert "tokens: 2 entries" in out and "tokenizers: 1 entries" in out and "killed builder" in out
    assert "40.0d" in out  # the old entry's days since last use


def test_prune_older_than_keeps_recent_entries(filled, capsys):
    root, recent, old, leftover = filled
    assert main(["cache", "prune", "--older-than", "30d"]) == 0
    assert "removed 2 entries" in capsys.readouterr().out  # the old entry and the leftover
    assert os.path.isdir(recent) and not os.path.exists(old) and not leftover.exists()
    assert len(os.listdir(root / "tokenizers")) == 1


def test_prune_without_an_age_frees_everything_and_a_reopened_cache_rebuilds(filled, capsys):
    root, recent, old, leftover = filled
    assert main(["cache", "prune"]) == 0
    assert not any(p for k in ("tokens", "tokenizers", "prefix") for p in (root / k).iterdir())
    tok = train_tokenizer(TEXTS, "wordpiece", 120, 1, True)
    assert len(tokenize_corpus(tok, TEXTS, 8)) == 3


def test_an_older_versions_build_folder_is_pruned_after_a_day(filled, capsys):
    root = filled[0]
    stale, fresh = root / "tokens" / ".abc.k2j4h1", root / "tokens" / ".def.x8f3k9"  # mkdtemp names: no pid
    for d in (stale, fresh):
        d.mkdir()
    past = time.time() - 2 * 86400
    os.utime(stale, (past, past))
    assert main(["cache", "prune", "--older-than", "30d"]) == 0
    assert not stale.exists() and fresh.exists()


def test_ages():
    assert parse_age("30d") == parse_age("30") == 30 * 86400
    assert parse_age("12h") == 12 * 3600 and parse_age("90m") == 5400 and parse_age("1.5w") == 1.5 * 7 * 86400
    with pytest.raises(DistmetaError, match="not an age"):
        parse_age("soon")
