"""build_model from a Config, and select_params for all / head / last:N."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from distmeta.config import load_config
from distmeta.errors import ConfigError
from distmeta.models import (
    BagEncoder,
    SinusoidMLP,
    TransformerEncoder,
    build_model,
    select_params,
)
from tests.models.conftest import tiny


def test_select_all_head_last():
    model = tiny("transformer")  # groups: embeddings, layers.0, layers.1, head
    names = [n for n, _ in model.named_parameters()]
    assert select_params(model, "all") == names
    assert select_params(model, "head") == ["head.weight", "head.bias"]
    assert select_params(model, "last:0") == ["head.weight", "head.bias"]
    last1 = select_params(model, "last:1")
    assert last1 == [n for n in names if n.startswith("layers.1.") or n.startswith("head.")]
    last2 = select_params(model, "last:2")
    assert last2 == [n for n in names if n.startswith(("layers.", "head."))]
    assert select_params(model, "last:3") == names  # every group


def test_select_too_many_groups_names_selector_and_count():
    with pytest.raises(ConfigError, match=r"'last:4'.*only 3"):
        select_params(tiny("transformer"), "last:4")
    with pytest.raises(ConfigError, match=r"'last:3'.*only 2"):
        select_params(tiny("mlp"), "last:3")
    with pytest.raises(ConfigError, match="'all', 'head' or 'last:N'"):
        select_params(tiny("bag"), "first:1")


def test_select_on_a_module_without_layer_groups():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(2, 3)
            self.head = nn.Linear(3, 1)

    assert select_params(Net(), "last:1") == ["body.weight", "body.bias", "head.weight", "head.bias"]
    assert select_params(Net(), "head") == ["head.weight", "head.bias"]


@pytest.mark.parametrize(
    ("overrides", "cls", "out_shape"),
    [
        (["model.name=bag", "model.dim=16"], BagEncoder, (2, 5)),
        (["model.name=transformer", "model.dim=16", "model.heads=2", "model.ff_dim=24", "data.max_length=12"], TransformerEncoder, (2, 5)),
        (["model.name=mlp", "data.source=sinusoid", "algorithm.name=maml"], SinusoidMLP, (2, 1)),
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_build_model(overrides, cls, out_shape, dtype):
    cfg = load_config(None, overrides + [f"dtype={dtype}"])
    out_dim = out_shape[1]
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=50, out_dim=out_dim)
    torch.manual_seed(0)
    again = build_model(cfg, vocab_size=50, out_dim=out_dim)
    assert isinstance(model, cls)
    assert all(p.dtype == getattr(torch, dtype) for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    x = torch.rand(2, 1, dtype=getattr(torch, dtype)) if cls is SinusoidMLP else torch.randint(1, 50, (2, 12))
    assert model(x).shape == out_shape


def test_build_model_errors():
    cfg = load_config(None, ["model.name=transformer", "model.dim=10", "model.heads=4"])
    with pytest.raises(ConfigError, match="divisible"):
        build_model(cfg, 50, 5)
    with pytest.raises(ConfigError, match="vocabulary size"):
        build_model(load_config(None, ["model.name=bag"]), 0, 5)


def test_parameter_counts():
    assert sum(p.numel() for p in BagEncoder(8000, 128, 5).parameters()) == 8000 * 128 + 128 * 129 + 129 * 5
    assert sum(p.numel() for p in SinusoidMLP([40, 40]).parameters()) == 2 * 40 + 41 * 40 + 41
