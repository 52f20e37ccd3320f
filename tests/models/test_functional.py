"""The models under torch.func: nested grad (second-order MAML), vmap over parameter sets, padding."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from tests.models.conftest import OUT, params_of, tiny, tiny_input

NAMES = ["bag", "transformer", "mlp"]
INNER_LR = 0.5


def _loss(model, params, x, y, name):
    out = functional_call(model, params, (x,))
    return F.mse_loss(out, y) if name == "mlp" else F.cross_entropy(out, y)


def _targets(name, x):
    if name == "mlp":
        return torch.sin(x)
    return torch.arange(x.shape[0]) % OUT


def _maml_objective(model, name, xs, ys, xq, yq):
    """Query loss after one inner SGD step, written with torch.func.grad inside."""

    def objective(params):
        g = grad(lambda p: _loss(model, p, xs, ys, name))(params)
        adapted = {n: params[n] - INNER_LR * g[n] for n in params}
        return _loss(model, adapted, xq, yq, name)

    return objective


@pytest.mark.parametrize("name", NAMES)
def test_second_order_grad_matches_autograd(name):
    model = tiny(name)
    xs, xq = tiny_input(name, 6, seed=1), tiny_input(name, 5, seed=2)
    ys, yq = _targets(name, xs), _targets(name, xq)
    params = params_of(model)
    objective = _maml_objective(model, name, xs, ys, xq, yq)
    ours = grad(objective)(params)

    # Reference: plain autograd on the module's own parameters with create_graph=True.
    plist = list(model.parameters())
    support = F.mse_loss(model(xs), ys) if name == "mlp" else F.cross_entropy(model(xs), ys)
    inner = torch.autograd.grad(support, plist, create_graph=True)
    adapted = {n: p - INNER_LR * g for (n, p), g in zip(model.named_parameters(), inner)}
    query = _loss(model, adapted, xq, yq, name)
    ref = torch.autograd.grad(query, plist)

    for (n, _), r in zip(model.named_parameters(), ref):
        torch.testing.assert_close(ours[n], r, rtol=1e-10, atol=1e-12, msg=n)
    assert any(ours[n].abs().sum() > 0 for n in ours if not n.startswith("head"))

    # Independent of autograd's formulas: central differences of the objective along random directions.
    g = torch.Generator().manual_seed(3)
    for _ in range(2):
        direction = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in params.items()}
        eps = 1e-6  # central differences: O(eps^2) truncation, ~1e-10 round-off here
        plus = objective({n: p + eps * direction[n] for n, p in params.items()})
        minus = objective({n: p - eps * direction[n] for n, p in params.items()})
        numeric = (plus - minus) / (2 * eps)
        analytic = sum((ours[n] * direction[n]).sum() for n in params)
        torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_second_order_term_is_present_in_attention():
    """Second-order MAML differs from first-order: the Hessian term through attention is not lost."""
    name = "transformer"
    model = tiny(name)
    xs, xq = tiny_input(name, 6, seed=1), tiny_input(name, 5, seed=2)
    ys, yq = _targets(name, xs), _targets(name, xq)
    params = params_of(model)
    second = grad(_maml_objective(model, name, xs, ys, xq, yq))(params)
    g = grad(lambda p: _loss(model, p, xs, ys, name))(params)
    adapted = {n: (params[n] - INNER_LR * g[n]).detach() for n in params}
    first = grad(lambda p: _loss(model, p, xq, yq, name))(adapted)
    attn = [n for n in params if ".query." in n or ".key." in n]
    assert all(second[n].abs().sum() > 0 for n in attn)
    assert any(not torch.allclose(second[n], first[n]) for n in attn)


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_parameter_sets(name):
    sets = [params_of(tiny(name, seed=s)) for s in range(3)]
    model = tiny(name)
    stacked = {n: torch.stack([s[n] for s in sets]) for n in sets[0]}
    x = tiny_input(name, 4)
    xs = torch.stack([tiny_input(name, 4, seed=s) for s in range(3)])
    for head in (True, False):
        call = lambda p, inp: functional_call(model, p, (inp,), {"head": head})  # noqa: E731
        shared = vmap(call, in_dims=(0, None))(stacked, x)
        own = vmap(call)(stacked, xs)
        for i, s in enumerate(sets):
            torch.testing.assert_close(shared[i], call(s, x), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(own[i], call(s, xs[i]), rtol=1e-12, atol=1e-12)
        assert not torch.allclose(shared[0], shared[1])


@pytest.mark.parametrize("name", NAMES)
def test_vmap_of_second_order_grad(name):
    """The MAML meta-gradient vmapped over tasks equals the per-task loop."""
    model = tiny(name)
    params = params_of(model)
    tasks = [(tiny_input(name, 6, seed=10 + t), tiny_input(name, 5, seed=20 + t)) for t in range(3)]

    def meta_grad(xs, xq):
        return grad(_maml_objective(model, name, xs, _targets(name, xs), xq, _targets(name, xq)))(params)

    batched = vmap(meta_grad)(torch.stack([t[0] for t in tasks]), torch.stack([t[1] for t in tasks]))
    for i, (xs, xq) in enumerate(tasks):
        one = meta_grad(xs, xq)
        for n in params:
            torch.testing.assert_close(batched[n][i], one[n], rtol=1e-10, atol=1e-12, msg=n)


@pytest.mark.parametrize("name", ["bag", "transformer"])
def test_extra_padding_changes_nothing(name):
    model = tiny(name)
    x = tiny_input(name, 4)
    padded = torch.cat([x, torch.zeros(4, 3, dtype=x.dtype)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(padded, head=False), model(x, head=False), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(model(padded), model(x), rtol=1e-12, atol=1e-12)
        # and each row alone, without the other rows' padding, gives the same embedding
        lengths = (x != 0).sum(1)
        for i in range(4):
            alone = model(x[i : i + 1, : lengths[i]], head=False)
            torch.testing.assert_close(alone[0], model(x, head=False)[i], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["bag", "transformer"])
def test_padding_gets_no_gradient_through_content(name):
    """Pad positions never leak into the output: changing a pad position's embedding changes nothing."""
    model = tiny(name)
    x = tiny_input(name, 4)
    word = "embedding.weight" if name == "bag" else "embeddings.word.weight"
    params = params_of(model)
    moved = dict(params)
    moved[word] = params[word].clone()
    moved[word][0] += 1.0
    torch.testing.assert_close(functional_call(model, moved, (x,)), functional_call(model, params, (x,)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_groups_and_deterministic_init(name):
    model, again, other = tiny(name, 0), tiny(name, 0), tiny(name, 1)
    x = tiny_input(name)
    assert model(x).shape == (4, 1 if name == "mlp" else OUT)
    assert model(x, head=False).shape == (4, model.embed_dim)
    names = [n for n, _ in model.named_parameters()]
    groups = model.layer_groups()
    assert sorted(n for g in groups for n in g) == sorted(names)
    assert groups[-1] == ["head.weight", "head.bias"]
    for n, p in model.named_parameters():
        assert torch.equal(p, dict(again.named_parameters())[n])
    assert not all(torch.equal(p, dict(other.named_parameters())[n]) for n, p in model.named_parameters())


def test_transformer_rejects_too_long_input():
    model = tiny("transformer")
    with pytest.raises(ValueError, match="position embeddings"):
        model(torch.ones(1, 50, dtype=torch.long))
