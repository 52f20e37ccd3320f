"""Adapting only the token-embedding rows a task reads gives the dense meta-gradient exactly."""
from __future__ import annotations

import pytest
import torch

from distmeta.algorithms import ALGORITHMS, InnerSettings, ModelFn
from distmeta.algorithms.rows import gather_rows, token_table
from distmeta.models.bag import BagEncoder
from distmeta.models.transformer import TransformerEncoder

VOCAB, WAYS = 50, 3


def text_tasks(n_tasks=3, shots=2, queries=3, length=6, seed=0):
    g = torch.Generator().manual_seed(seed)

    def ids(n):
        x = torch.randint(1, VOCAB, (n_tasks, n, length), generator=g)
        x[..., length - 2:] = 0  # padding
        return x

    labels = lambda k: torch.arange(WAYS).repeat_interleave(k).repeat(n_tasks, 1)  # noqa: E731
    return {"support_x": ids(WAYS * shots), "support_y": labels(shots), "query_x": ids(WAYS * queries), "query_y": labels(queries)}


def build(model_name, name, **options):
    torch.manual_seed(0)
    if model_name == "bag":
        net = BagEncoder(VOCAB, 8, WAYS).double()
    else:
        net = TransformerEncoder(VOCAB, 8, 1, 2, 16, 8, WAYS).double()
    meta = {n: p.detach().clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.requires_grad_(False)
    if ALGORITHMS[name].any_ways:
        meta = {n: p for n, p in meta.items() if not n.startswith("head.")}
    frozen = {n: p.detach() for n, p in net.named_parameters() if n not in meta}
    alg = ALGORITHMS[name](ModelFn(net, frozen), "classification", list(meta), InnerSettings(0.5, 2), WAYS, **options)
    meta.update(alg.extra_meta_params(meta))
    return alg, meta


def test_gather_rows_keeps_padding_at_row_zero():
    batch = text_tasks()
    ids, local = gather_rows(batch)
    assert int(ids[0]) == 0 and torch.equal(ids, ids.sort().values)
    for k in ("support_x", "query_x"):
        assert torch.equal(ids[local[k]], batch[k])
        assert torch.equal(local[k] == 0, batch[k] == 0)


@pytest.mark.parametrize("use_vmap", [True, False], ids=["vmap", "loop"])
@pytest.mark.parametrize("name", ["maml", "fomaml", "protomaml", "protonet"])
@pytest.mark.parametrize("model_name", ["bag", "transformer"])
def test_rows_meta_gradient_equals_the_dense_one(model_name, name, use_vmap):
    alg, meta = build(model_name, name)
    assert alg.row_table == token_table(alg.model.module) and alg.row_table in meta
    batch = text_tasks()
    got, m_got = alg.batch_grad(meta, batch, use_vmap=use_vmap)
    want, m_want = alg.dense_batch_grad(meta, batch, use_vmap=use_vmap)
    assert set(got) == set(want)
    for n in want:
        torch.testing.assert_close(got[n], want[n], atol=1e-12, rtol=1e-10, msg=n)
    torch.testing.assert_close(m_got["loss"], m_want["loss"], atol=1e-12, rtol=1e-10)
    unused = torch.ones(VOCAB, dtype=torch.bool)
    unused[torch.cat([batch["support_x"].flatten(), batch["query_x"].flatten()])] = False
    assert float(got[alg.row_table][unused].abs().sum()) == 0.0
