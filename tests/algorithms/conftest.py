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
                   out: int = 3, adapt: list[str] | None = None, momentum: float = 0.9, **options):
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
    alg = ALGORITHMS[name](ModelFn(net, frozen), kind, adapt, InnerSettings(lr, steps, optimizer, momentum), out, **options)
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
