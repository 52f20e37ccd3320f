"""tokenized_cache.tokenize_corpus: the ids encode() gives (without padding), from datasets.map in one or several processes,
cached on disk by corpus content and tokenizer."""
from __future__ import annotations

import numpy as np
import pytest

from distmeta.config import DataConfig
from distmeta.data import load_source
from distmeta.text import encode, train_tokenizer
from distmeta.text import tokenized_cache as tokenize
from distmeta.text.tokenized_cache import tokenize_corpus
from tests.helpers import write_tiny_csv


@pytest.fixture()
def corpus_and_tokenizer(tmp_path):
    data = load_source(DataConfig(source=f"csv:{write_tiny_csv(tmp_path / 'd.csv', per_class=30)}"))
    return data, train_tokenizer(list(data.texts), "wordpiece", 200, 1, True)


def test_ids_equal_the_padded_encoding_in_one_or_several_processes(corpus_and_tokenizer, tmp_path, monkeypatch):
    data, tok = corpus_and_tokenizer
    ref = encode(tok, list(data.texts), 8).numpy()  # 8 < the longest row: truncation included
    one = tokenize_corpus(tok, data.texts, 8, cache_dir=tmp_path / "one")
    monkeypatch.setenv("DISTMETA_TOKENIZE_PROCS", "2")
    two = tokenize_corpus(tok, data.texts, 8, cache_dir=tmp_path / "two")
    rows = np.arange(len(data))
    for corpus in (one, two):
        assert corpus.ids.dtype == np.uint8 and len(corpus) == len(data)  # a 200-token vocabulary fits a byte
        np.testing.assert_array_equal(corpus.padded(rows), ref)
    assert isinstance(one.ids, np.memmap) and one.nbytes < ref.nbytes / 4
    np.testing.assert_array_equal(tokenize_corpus(tok, ["a list", "of texts"], 8, cache_dir=tmp_path / "l").padded([0, 1]),
                                  encode(tok, ["a list", "of texts"], 8).numpy())


def test_a_second_run_reads_the_cache_and_another_corpus_or_tokenizer_does_not(corpus_and_tokenizer, tmp_path, monkeypatch):
    data, tok = corpus_and_tokenizer
    first = tokenize_corpus(tok, data.texts, 16, cache_dir=tmp_path)
    built = []
    real = tokenize._build
    monkeypatch.setattr(tokenize, "_build", lambda *a: built.append(1) or real(*a))
    again = tokenize_corpus(tok, data.texts, 16, cache_dir=tmp_path)
    assert built == [] and np.array_equal(again.ids, first.ids)
    tokenize_corpus(tok, data.texts.select(range(len(data) - 1)), 16, cache_dir=tmp_path)  # other content
    tokenize_corpus(tok, data.texts, 12, cache_dir=tmp_path)  # other max_length
    other = train_tokenizer(list(data.texts), "bpe", 300, 1, True)
    tokenize_corpus(other, data.texts, 16, cache_dir=tmp_path)
    assert built == [1, 1, 1] and len([p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")]) == 4


def test_content_hash_ignores_batching_but_not_text(corpus_and_tokenizer, monkeypatch):
    data, _ = corpus_and_tokenizer
    from distmeta.data.labelled import TextColumn, _content_hash

    ds, col = data.texts.dataset, data.texts.column
    h = data.texts.fingerprint()
    assert _content_hash(ds, col, batch=3) == h == tokenize.as_text_column(list(data.texts)).fingerprint()
    changed = ds.map(lambda r, i: {col: r[col] + ("!" if i == 5 else "")}, with_indices=True)
    assert TextColumn(changed, col).fingerprint() != h


def test_the_trained_tokenizer_is_cached_by_texts_rows_and_settings(tmp_path, monkeypatch):
    import distmeta.text as text
    from distmeta.config import load_config
    from distmeta.experiment import prepare_experiment
    from tests.helpers import text_tiny

    monkeypatch.setenv("DISTMETA_CACHE_DIR", str(tmp_path / "cache"))
    trained = []
    real = text.train_tokenizer
    monkeypatch.setattr(text, "train_tokenizer", lambda *a, **k: trained.append(1) or real(*a, **k))
    base = text_tiny(write_tiny_csv(tmp_path / "d.csv"))
    first = prepare_experiment(load_config(None, base))
    again = prepare_experiment(load_config(None, base))
    assert trained == [1] and again.tokenizer.to_str() == first.tokenizer.to_str()
    np.testing.assert_array_equal(again.corpus.ids, first.corpus.ids)
    prepare_experiment(load_config(None, [*base, "seed=1"]))  # another split: other meta-train rows
    prepare_experiment(load_config(None, [*base, "tokenizer.vocab_size=150"]))
    assert trained == [1, 1, 1]
