"""Tiny instances of every model, in float64, for exact functional checks."""
from __future__ import annotations

import pytest
import torch

from distmeta.models import BagEncoder, SinusoidMLP, TransformerEncoder

VOCAB, LENGTH, OUT = 23, 7, 3


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny ops on a busy 2-core box: OpenMP thread hand-offs cost ~100x the arithmetic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if name == "bag":
        model: torch.nn.Module = BagEncoder(VOCAB, 8, OUT, hidden_layers=2)
    elif name == "transformer":
        model = TransformerEncoder(VOCAB, 8, layers=2, heads=2, ff_dim=12, max_length=LENGTH + 4, out_dim=OUT)
    else:
        model = SinusoidMLP([6, 5])
    return model.double()


def tiny_input(name: str, batch: int = 4, seed: int = 1) -> torch.Tensor:
    """Token ids with right padding of varying length (never an empty row), or floats for the MLP."""
    g = torch.Generator().manual_seed(seed)
    if name == "mlp":
        return torch.rand(batch, 1, generator=g, dtype=torch.float64) * 10 - 5
    x = torch.randint(1, VOCAB, (batch, LENGTH), generator=g)
    lengths = torch.arange(batch) % (LENGTH - 1) + 2
    return torch.where(torch.arange(LENGTH) < lengths[:, None], x, 0)


def params_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}
