"""Encoders whose padding id is not 0 (RoBERTa, MPNet), checked against transformers' own forward.

Tiny random models, saved offline with small tokenizers in the RoBERTa/MPNet layout (``<s>`` = 0,
``<pad>`` = 1, ``</s>`` = 2): masks and positions come from the model's pad id, MPNet's relative
position bias reaches every layer (a suffix after a cached frozen prefix included), and the
frozen-prefix cache with ``model.trainable: last:N`` equals the uncached path.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from torch.func import functional_call, grad, vmap

from distmeta.config import load_config
from distmeta.experiment import prepare_experiment
from distmeta.models import select_params
from distmeta.models.hf import build_hf_encoder
from distmeta.models.prefix import cache_key, frozen_prefix_layers, open_or_build
from distmeta.text import encode, load_pretrained_tokenizer, pad_id_of
from distmeta.worker import Worker
from tests.helpers import WORDS, text_tiny, write_tiny_csv

transformers = pytest.importorskip("transformers")

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
TEXTS = ["ball goal team", "a longer text about the planet orbit of a comet and its moon",
         "bread", "court judge verdict appeal statute lawyer"]


def _tokenizer(kind: str, texts: list[str]) -> Tokenizer:
    """``mpnet``: WordPiece with a padding setting at id 1 (as all-mpnet-base-v2's file); ``roberta``: byte BPE, none."""
    if kind == "mpnet":
        tok = Tokenizer(models.WordPiece(unk_token="<unk>"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=300, min_frequency=1, special_tokens=SPECIALS,
                                            show_progress=False)
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=400, min_frequency=1, special_tokens=SPECIALS, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    if kind == "mpnet":
        tok.enable_padding(pad_id=1, pad_token="<pad>", length=128)
    assert [tok.token_to_id(t) for t in SPECIALS] == [0, 1, 2, 3]
    return tok


def _write(tmp_path, kind: str) -> str:
    texts = TEXTS + [w for words in WORDS.values() for w in words.split()]
    tok = _tokenizer(kind, texts)
    common = dict(vocab_size=tok.get_vocab_size(), hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                  intermediate_size=24, max_position_embeddings=66, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    config = transformers.MPNetConfig(**common) if kind == "mpnet" else \
        transformers.RobertaConfig(type_vocab_size=1, **common)
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(config)
    if kind == "mpnet":  # a pretrained bias is far from its init's 0.02 scale: make dropping it visible
        with torch.no_grad():
            model.encoder.relative_attention_bias.weight.uniform_(-2.0, 2.0)
    out = tmp_path / kind
    model.save_pretrained(out)
    tok.save(str(out / "tokenizer.json"))
    return str(out)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pad1")
    return {kind: _write(tmp, kind) for kind in ("mpnet", "roberta")}


def _reference(path: str, length: int = 20) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """transformers' own tokenizer and forward: ``(input_ids, attention_mask, last_hidden_state)``."""
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_file=f"{path}/tokenizer.json", pad_token="<pad>")
    batch = hf_tok(TEXTS, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    model = transformers.AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        h = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return batch["input_ids"], batch["attention_mask"], h


@pytest.mark.parametrize("kind", ["mpnet", "roberta"])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pad_one_encoders_match_transformers(tiny_dirs, kind, pooling):
    path = tiny_dirs[kind]
    ids, attention, h = _reference(path)
    tok = load_pretrained_tokenizer(path)
    assert pad_id_of(tok) == 1
    mine = encode(tok, TEXTS, 20)
    assert torch.equal(mine, ids), "the same ids, padded with <pad> = 1"
    assert (mine[:, 0] == 0).all(), "every row starts with <s> = 0, a real token"
    enc = build_hf_encoder(path, out_dim=3, pooling=pooling)
    assert enc.whole is None and enc.pad_id == 1
    m = attention.unsqueeze(-1).to(h.dtype)
    want = h[:, 0] if pooling == "cls" else (h * m).sum(1) / m.sum(1)
    with torch.no_grad():
        torch.testing.assert_close(enc(mine, head=False), want, rtol=1e-5, atol=1e-5)


def test_mpnet_position_bias_matters(tiny_dirs):
    """The bias is part of the forward: without it the embedding moves (so the equality above can fail)."""
    enc = build_hf_encoder(tiny_dirs["mpnet"], out_dim=3)
    ids = encode(load_pretrained_tokenizer(tiny_dirs["mpnet"]), TEXTS, 20)
    with torch.no_grad():
        full = enc(ids, head=False)
        enc.relative_bias.weight.zero_()
        assert (enc(ids, head=False) - full).abs().max() > 1e-3


def test_mpnet_prefix_cache_with_last_n_equals_the_full_forward(tiny_dirs, tmp_path):
    path = tiny_dirs["mpnet"]
    enc = build_hf_encoder(path, out_dim=3)
    _, attention, h = _reference(path, 30)
    m = attention.unsqueeze(-1).to(h.dtype)
    reference = (h * m).sum(1) / m.sum(1)
    ids = encode(load_pretrained_tokenizer(path), TEXTS, 30).numpy()
    moving = set(select_params(enc, "last:1"))
    assert "relative_bias.weight" in enc.layer_groups()[0] and "relative_bias.weight" not in moving
    assert frozen_prefix_layers(enc, moving) == 2
    assert frozen_prefix_layers(enc, moving | {"relative_bias.weight"}) == 0, "a moving bias leaves nothing to cache"
    rows = np.arange(len(ids))
    cache = open_or_build(enc, 2, ids, rows, tmp_path, progress=False)
    order = [3, 0, 2, 1]
    x = cache.batch(order)
    assert x.shape[1] == int(attention[order].sum(1).max()), "real tokens only: padding (id 1) is not cached"
    with torch.no_grad():
        full = enc(torch.from_numpy(ids[order]), head=False)
        enc.prefix_layers = 2
        for buckets in (1, 3):  # each length bucket at its own width: the bias follows the width
            enc.length_buckets = buckets
            torch.testing.assert_close(enc(x, head=False), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full, reference[order], rtol=1e-5, atol=1e-5)
    key = cache_key(enc, 2, ids, rows)
    with torch.no_grad():
        enc.relative_bias.weight.add_(0.5)
    assert cache_key(enc, 2, ids, rows) != key, "the bias table is part of the prefix's identity"


def test_mpnet_second_order_gradients_under_vmap_match_the_loop(tiny_dirs):
    """MAML through MPNet's layers with the bias table adapted too: vmap over tasks equals a per-task loop."""
    path = tiny_dirs["mpnet"]
    enc = build_hf_encoder(path, out_dim=2).double()
    params = {n: p.detach() for n, p in enc.named_parameters()}
    ids = encode(load_pretrained_tokenizer(path), TEXTS, 12).view(2, 2, 12)
    y = torch.tensor([[0, 1], [1, 0]])
    adapted = ("relative_bias", "layers.2", "head")
    ce = torch.nn.functional.cross_entropy

    def query_loss(p, x, t):
        inner = grad(lambda q: ce(functional_call(enc, q, (x,)), t))(p)
        fast = {n: v - 0.5 * inner[n] if n.startswith(adapted) else v for n, v in p.items()}
        return ce(functional_call(enc, fast, (x,)), t)

    batched = vmap(grad(query_loss), in_dims=(None, 0, 0))(params, ids, y)
    names = [n for n in params if n.startswith(adapted)]
    for t in range(2):
        leaves = {n: v.clone().requires_grad_() for n, v in params.items()}
        g = torch.autograd.grad(ce(functional_call(enc, leaves, (ids[t],)), y[t]), [leaves[n] for n in names],
                                create_graph=True)
        fast = {**leaves, **{n: leaves[n] - 0.5 * gi for n, gi in zip(names, g)}}
        want = torch.autograd.grad(ce(functional_call(enc, fast, (ids[t],)), y[t]), [leaves[n] for n in names])
        for n, w in zip(names, want):
            torch.testing.assert_close(batched[n][t], w, rtol=1e-8, atol=1e-10, msg=n)
    assert batched["relative_bias.weight"].abs().max() > 0


def _mpnet_run(tiny_dirs, tmp_path, cached: bool, *extra: str):
    """The user's path (config -> experiment -> worker): `model.name=hf` on MPNet, last:1, ProtoNet."""
    csv = tmp_path / "d.csv"
    if not csv.exists():
        write_tiny_csv(csv)
    cfg = load_config(None, [*text_tiny(csv), "model.name=hf", f"model.path={tiny_dirs['mpnet']}",
                             "tokenizer.kind=pretrained", "model.trainable=last:1", "algorithm.name=protonet",
                             f"model.cache_dir={tmp_path / 'prefix'}", "data.max_length=16",
                             f"model.prefix_cache={str(cached).lower()}", *extra])
    exp = prepare_experiment(cfg)
    return exp, Worker(cfg, **exp.worker_args())


def test_worker_on_mpnet_with_and_without_the_prefix_cache(tiny_dirs, tmp_path):
    results = {}
    for name, cached, extra in (("cached", True, ()), ("uncached", False, ()), ("loop", False, ("algorithm.vmap=false",))):
        exp, worker = _mpnet_run(tiny_dirs, tmp_path, cached, *extra)
        assert exp.corpus.pad_id == 1 and (exp.prefix is not None) == cached
        assert worker.module.whole is None and worker.module.prefix_layers == (2 if cached else 0)
        assert worker.algorithm.pad_id == 1, "the loop path trims each task's padding by the model's pad id"
        assert worker.use_vmap == (name != "loop")
        meta = {n: t.numpy() for n, t in worker.initial_meta.items()}
        step = worker.meta_grad(meta, exp.sampler("train").batch(0, 4))
        scores = worker.evaluate(meta, exp.sampler("test").batch(0, 4), inner_steps=0)
        results[name] = (step.grad, scores["loss"])
    grad_c, loss_c = results["cached"]
    assert any(np.abs(g).max() > 0 for g in grad_c.values())
    for name in ("uncached", "loop"):
        grad_u, loss_u = results[name]
        np.testing.assert_allclose(loss_c, loss_u, rtol=1e-5, atol=1e-5, err_msg=name)
        assert set(grad_c) == set(grad_u)
        for n in grad_c:
            np.testing.assert_allclose(grad_c[n], grad_u[n], rtol=1e-4, atol=1e-5, err_msg=f"{name}: {n}")


def test_frozen_baseline_is_the_runs_encoder(tiny_dirs, tmp_path):
    """The before-training baseline scores the run's own pretrained MPNet: equal to transformers' features."""
    from distmeta.baselines import baseline_metrics

    exp, worker = _mpnet_run(tiny_dirs, tmp_path, cached=True)
    meta = {n: t.numpy() for n, t in worker.initial_meta.items()}
    specs = exp.sampler("test").batch(0, 4)
    got = worker.evaluate(meta, specs, inner_steps=0, baseline=True)
    model = transformers.AutoModel.from_pretrained(tiny_dirs["mpnet"]).eval()

    def features(rows: list[list[int]]) -> torch.Tensor:
        ids = torch.from_numpy(exp.corpus.padded(np.asarray(rows).reshape(-1)))
        mask = (ids != 1).long()  # the tokenizer's <pad>
        with torch.no_grad():
            h = model(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        return ((h * m).sum(1) / m.sum(1)).view(len(rows), len(rows[0]), -1)

    sx, sy, qx, qy = worker.builder.rows(specs)
    used = worker._feature_batch(worker.algorithm, worker._to_device(meta), specs, "baseline")  # what it scored
    torch.testing.assert_close(used["support_f"], features(sx), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(used["query_f"], features(qx), rtol=1e-5, atol=1e-5)
    want = baseline_metrics(features(sx), torch.tensor(sy), features(qx), torch.tensor(qy), exp.cfg.data.ways)
    for key in ("accuracy", "accuracy_euclidean"):
        np.testing.assert_allclose(got[key], want[key].numpy(), atol=1e-6, err_msg=key)
    np.testing.assert_allclose(got["accuracy_finetune"], want["accuracy_finetune"].numpy(), atol=0.1)


def test_a_runs_saved_tokenizer_keeps_the_pad_id(tiny_dirs, tmp_path):
    """Resume and eval read the run's saved tokenizer.json: it still pads with 1, so the corpus does too."""
    csv = write_tiny_csv(tmp_path / "d.csv")
    cfg = load_config(None, [*text_tiny(csv), "model.name=hf", f"model.path={tiny_dirs['roberta']}",
                             "tokenizer.kind=pretrained", "model.prefix_cache=false"])
    first = prepare_experiment(cfg, tmp_path / "run")
    again = prepare_experiment(cfg, tmp_path / "run", reuse_saved=True)
    assert first.corpus.pad_id == again.corpus.pad_id == 1
    assert pad_id_of(again.tokenizer) == 1
    np.testing.assert_array_equal(again.corpus.padded(np.arange(5)), first.corpus.padded(np.arange(5)))
