"""The outer optimisers against their update rules written out by hand (float64)."""
from __future__ import annotations

import math

import pytest
import torch

from distmeta.config import OuterConfig
from distmeta.optim import OuterOptimizer


def _grads(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return {"w": torch.randn(3, 4, generator=g, dtype=torch.float64), "b": torch.randn(4, generator=g, dtype=torch.float64)}


def _start() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {"w": torch.randn(3, 4, generator=g, dtype=torch.float64), "b": torch.randn(4, generator=g, dtype=torch.float64)}


def _reference(name: str, steps: int, lr: float, momentum: float = 0.9, wd: float = 0.0,
               betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> dict[str, torch.Tensor]:
    params = _start()
    buf = {n: torch.zeros_like(p) for n, p in params.items()}
    m = {n: torch.zeros_like(p) for n, p in params.items()}
    v = {n: torch.zeros_like(p) for n, p in params.items()}
    for t in range(1, steps + 1):
        grads = _grads(t - 1)
        for n, p in params.items():
            g = grads[n] + wd * p
            if name == "sgd":
                params[n] = p - lr * g
            elif name in ("momentum", "nesterov"):
                buf[n] = g if t == 1 else momentum * buf[n] + g
                params[n] = p - lr * (g + momentum * buf[n] if name == "nesterov" else buf[n])
            else:  # adam
                m[n] = betas[0] * m[n] + (1 - betas[0]) * g
                v[n] = betas[1] * v[n] + (1 - betas[1]) * g * g
                m_hat, v_hat = m[n] / (1 - betas[0] ** t), v[n] / (1 - betas[1] ** t)
                params[n] = p - lr * m_hat / (v_hat.sqrt() + eps)
    return params


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam"])
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_outer_update_matches_hand_written_rule(name, wd):
    opt = OuterOptimizer(OuterConfig(name=name, lr=0.05, weight_decay=wd), _start())
    for t in range(4):
        opt.step(_grads(t))
    want = _reference(name, 4, lr=0.05, wd=wd)
    for n in want:
        torch.testing.assert_close(opt.params[n], want[n], rtol=1e-12, atol=1e-12, msg=f"{name} {n}")


def test_noisy_sgd_is_sgd_plus_annealed_seeded_noise():
    zero = OuterOptimizer(OuterConfig(name="noisy_sgd", lr=0.05, noise_eta=0.0), _start())
    zero.step(_grads(0))
    torch.testing.assert_close(zero.params["w"], _reference("sgd", 1, lr=0.05)["w"], rtol=1e-12, atol=1e-12)

    big = {"w": torch.zeros(200, 100, dtype=torch.float64)}
    cfg = OuterConfig(name="noisy_sgd", lr=0.5, noise_eta=0.3, noise_gamma=0.55)
    runs = []
    for seed in (1, 1, 2):
        opt = OuterOptimizer(cfg, big, seed=seed)
        opt.step({"w": torch.zeros(200, 100, dtype=torch.float64)})
        opt.step({"w": torch.zeros(200, 100, dtype=torch.float64)})
        runs.append(opt.params["w"].clone())
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])  # seeded, per run
    # Two steps of pure noise: variance lr^2 (eta/1^g + eta/2^g).
    want_std = 0.5 * math.sqrt(0.3 + 0.3 / 2**0.55)
    assert abs(float(runs[0].std()) / want_std - 1) < 0.03
    assert abs(float(runs[0].mean())) < 4 * want_std / math.sqrt(runs[0].numel())


def test_grad_clip_scales_to_the_norm_and_reports_it():
    opt = OuterOptimizer(OuterConfig(name="sgd", lr=1.0, grad_clip=1.0), {"w": torch.zeros(4, dtype=torch.float64)})
    stats = opt.step({"w": torch.tensor([3.0, 4.0, 0.0, 0.0], dtype=torch.float64)})
    assert stats["grad_norm"] == pytest.approx(5.0)
    torch.testing.assert_close(opt.params["w"], -torch.tensor([0.6, 0.8, 0.0, 0.0], dtype=torch.float64))


def test_reducing_into_the_grad_buffers_gives_the_same_update_as_fresh_tensors():
    """The driver sums group gradients straight into ``grad_buffers()``; the update must not change."""
    import numpy as np

    from distmeta.groups import reduce_groups
    from distmeta.worker import GroupResult

    cfg = OuterConfig(name="adam", lr=0.01)
    via_copy, via_buffers = OuterOptimizer(cfg, _start()), OuterOptimizer(cfg, _start())
    for step in range(3):
        parts = [_grads(10 * step + k) for k in range(3)]
        results = [GroupResult(grad={n: g.numpy() for n, g in p.items()}, metrics={}, tasks=[]) for p in parts]
        by_hand = {n: (parts[0][n] + parts[1][n]) + parts[2][n] for n in parts[0]}
        buffers = via_buffers.grad_buffers()
        summed = reduce_groups(results, via_buffers.names, torch.float64, out=buffers)
        assert all(summed[n] is buffers[n] for n in summed)  # no copy on the way into the optimiser
        assert all(torch.equal(summed[n], by_hand[n]) for n in by_hand)
        fresh = reduce_groups(results, via_copy.names, torch.float64)
        assert all(np.shares_memory(fresh[n].numpy(), parts[0][n].numpy()) is False for n in fresh)  # a copy, not a view
        assert via_buffers.step(summed) == via_copy.step(fresh)
    assert all(torch.equal(via_buffers.params[n], via_copy.params[n]) for n in via_copy.names)


def test_all_finite_sees_nan_and_inf_in_numpy_and_torch():
    import numpy as np

    from distmeta.worker import all_finite

    clean = [np.ones(5, np.float32), torch.zeros(3, 2, dtype=torch.float64), torch.ones(2, requires_grad=True),
             torch.ones(3, dtype=torch.bfloat16)]
    assert all_finite(clean)
    for bad in (np.array([1.0, np.nan]), np.array([np.inf], np.float32), torch.tensor([0.0, -float("inf")]),
                torch.tensor([float("nan")], requires_grad=True), torch.tensor([float("inf")], dtype=torch.bfloat16)):
        assert not all_finite([*clean, bad])
