"""A tiny smooth network and random tasks for checking the algorithms against references."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from distmeta.algorithms import ALGORITHMS, InnerSettings, ModelFn


class TinyNet(nn.Module):
    """tanh body (non-zero second derivatives) and a ``head``, the model contract's shape."""

    def __init__(self, d_in: int = 4, hidden: int = 6, out: int = 3) -> None:
        super().__init__()
        self.body = nn.Linear(d_in, hidden)
        self.head = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor, head: bool = True) -> torch.Tensor:
        h = torch.tanh(self.body(x))
        return self.head(h) if head else h


def manual_forward(p: dict[str, torch.Tensor], x: torch.Tensor, head: bool = True) -> torch.Tensor:
    """The same network written out by hand: the independent reference."""
    h = torch.tanh(x @ p["body.weight"].T + p["body.bias"])
    return h @ p["head.weight"].T + p["head.bias"] if head else h


def make_algorithm(name: str, *, steps: int = 2, lr: float = 0.3, optimizer: str = "sgd", kind: str = "classification",
                   out: int = 3, adapt: list[str] | None = None, momentum: float = 0.9, checkpoint: bool = False,
                   **options):
    """``ALGORITHMS[name]`` on a float64 TinyNet and its initial meta-parameters; ``options`` go to the constructor."""
    torch.manual_seed(0)
    net = TinyNet(out=out).double()
    params = {n: p.detach().clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.requires_grad_(False)
    adapt = adapt or (["head.weight", "head.bias"] if name == "anil" else list(params))
    meta = dict(params)
    if ALGORITHMS[name].any_ways:  # prototype classifiers: the model's head is unused
        meta = {n: p for n, p in params.items() if not n.startswith("head.")}
    frozen = {n: p for n, p in params.items() if n not in meta}
    alg = ALGORITHMS[name](ModelFn(net, frozen), kind, adapt, InnerSettings(lr, steps, optimizer, momentum, checkpoint), out, **options)
    meta.update(alg.extra_meta_params(meta))
    return alg, meta


def random_tasks(n_tasks: int = 3, ways: int = 3, shots: int = 2, queries: int = 4, kind: str = "classification", seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(n_tasks, ways * shots, 4, generator=g, dtype=torch.float64)
    qx = torch.randn(n_tasks, ways * queries, 4, generator=g, dtype=torch.float64)
    if kind == "classification":
        sy = torch.arange(ways).repeat_interleave(shots).repeat(n_tasks, 1)
        qy = torch.arange(ways).repeat_interleave(queries).repeat(n_tasks, 1)
    else:
        sy = torch.randn(n_tasks, ways * shots, 1, generator=g, dtype=torch.float64)
        qy = torch.randn(n_tasks, ways * queries, 1, generator=g, dtype=torch.float64)
    return {"support_x": sx, "support_y": sy, "query_x": qx, "query_y": qy}


@pytest.fixture
def tasks():
    return random_tasks()


#: The three ways a meta-gradient is computed: ``task_grad`` (torch.func.grad on one task),
#: ``loop`` (the per-task autograd loop, batch_grad(use_vmap=False)) and ``batched``
#: (batch_grad(use_vmap=True): vmap, or ProtoNet's one-batch encoder). Each is checked
#: against the hand-written references.
PATHS = ["task_grad", "loop", "batched"]


def grad_via(alg, meta, task, path: str):
    """Meta-gradient and metrics of one task through ``path`` (see PATHS)."""
    if path == "task_grad":
        return alg.task_grad(meta, task)
    batch = {k: v.unsqueeze(0) for k, v in task.items()}
    grads, metrics = alg.batch_grad(meta, batch, use_vmap=path == "batched")
    return grads, {k: v[0] for k, v in metrics.items()}


def assert_vmap_equals_loop(alg, meta, tasks, n_tasks: int) -> None:
    """batch_grad and batch_eval give the same numbers under vmap and as the per-task loop."""
    g_vmap, m_vmap = alg.batch_grad(meta, tasks, use_vmap=True)
    g_loop, m_loop = alg.batch_grad(meta, tasks, use_vmap=False)
    for n in meta:
        torch.testing.assert_close(g_vmap[n], g_loop[n], atol=1e-12, rtol=1e-10, msg=n)
    for k in m_loop:
        torch.testing.assert_close(m_vmap[k], m_loop[k], atol=1e-12, rtol=1e-10)
    assert m_loop["loss"].shape == (n_tasks,)
    e_vmap = alg.batch_eval(meta, tasks, 3, use_vmap=True)
    e_loop = alg.batch_eval(meta, tasks, 3, use_vmap=False)
    torch.testing.assert_close(e_vmap["accuracy"], e_loop["accuracy"])
    torch.testing.assert_close(e_vmap["loss"], e_loop["loss"])


def assert_matches_finite_differences(got, meta, loss_at, tol=1e-6, relative=False) -> None:
    """Directional derivatives of ``got`` along 3 random directions equal float64 central differences of ``loss_at``."""
    g = torch.Generator().manual_seed(3)
    eps = 1e-6
    for _ in range(3):
        direction = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in meta.items()}
        plus = {n: p + eps * direction[n] for n, p in meta.items()}
        minus = {n: p - eps * direction[n] for n, p in meta.items()}
        fd = (loss_at(plus) - loss_at(minus)) / (2 * eps)
        analytic = sum(float((got[n] * direction[n]).sum()) for n in meta)
        assert abs(fd - analytic) < tol * (max(1.0, abs(fd)) if relative else 1.0), (fd, analytic)
