"""distmeta's LayerNorm: F.layer_norm outside transforms, an elementary composite inside, both right at second order."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from distmeta.models.norm import LayerNorm, layer_norm_composite, make_transform_safe


def test_the_composite_equals_layer_norm_to_second_order():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, 5, 7, generator=g, dtype=torch.float64)
    outs = []
    for fn in (lambda: F.layer_norm(x, (7,), w, b, 1e-5), lambda: layer_norm_composite(x, (7,), w, b, 1e-5)):
        y = fn()
        first = torch.autograd.grad((y * v).sum(), (x, w, b), create_graph=True)
        second = torch.autograd.grad(sum((f * f).sum() for f in first), (x, w))  # the bias enters linearly
        outs.append((y, *first, *second))
    for a, c in zip(*outs):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)


def test_outside_transforms_it_is_layer_norm_bit_for_bit():
    norm = LayerNorm(6).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(4, 6, dtype=torch.float64)
    assert torch.equal(norm(x), F.layer_norm(x, (6,), norm.weight, norm.bias, norm.eps))


class EmbedNormHead(torch.nn.Module):
    """The smallest model with the failing pattern: an adapted LayerNorm between embeddings and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.e = torch.nn.Embedding(30, 8)
        self.n = torch.nn.LayerNorm(8)
        self.h = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h(self.n(self.e(x)).mean(1))


def test_maml_meta_gradient_under_vmap_equals_the_loop_once_made_transform_safe():
    torch.manual_seed(0)
    model = EmbedNormHead().double()
    with torch.no_grad():
        model.n.weight.uniform_(0.5, 1.5)
    assert make_transform_safe(model) == 1 and type(model.n) is LayerNorm
    params = {n: p.detach() for n, p in model.named_parameters()}
    adapt = ["n.weight", "n.bias", "h.weight", "h.bias"]
    x = torch.randint(1, 30, (3, 6, 5))
    y = torch.randint(0, 3, (3, 6))

    def objective(p, xs, ys):
        loss = lambda q: F.cross_entropy(functional_call(model, {**p, **q}, (xs,)), ys)  # noqa: E731
        g = grad(loss)({n: p[n] for n in adapt})
        return loss({n: p[n] - 0.4 * g[n] for n in adapt})

    batched = grad(lambda p: vmap(objective, in_dims=(None, 0, 0))(p, x, y).sum())(params)
    leaves = {n: v.clone().requires_grad_() for n, v in params.items()}
    for t in range(3):  # the reference: plain autograd, one task at a time, F.layer_norm throughout
        inner = F.cross_entropy(functional_call(model, leaves, (x[t],)), y[t])
        g = torch.autograd.grad(inner, [leaves[n] for n in adapt], create_graph=True)
        fast = {**leaves, **{n: leaves[n] - 0.4 * gi for n, gi in zip(adapt, g)}}
        F.cross_entropy(functional_call(model, fast, (x[t],)), y[t]).backward()
    for n in params:
        torch.testing.assert_close(batched[n], leaves[n].grad, rtol=1e-9, atol=1e-12, msg=n)
