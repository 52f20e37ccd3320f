"""The peer libraries' meta-gradients on distmeta's tasks, each written the way its documentation does.

Every function takes a model whose meta-parameters are autograd leaves, one meta-batch
(``support_x [T, ...]``, ``support_y``, ``query_x``, ``query_y``), and leaves the summed
meta-gradient of the tasks in the leaves' ``.grad`` (one ``backward()`` per task, as in the
libraries' examples). Used by :mod:`benchmarks.speed.peers`.
"""
from __future__ import annotations

import copy
import importlib.util
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from distmeta.tasks.materialise import trim_padding

Batch = dict[str, Tensor]


@dataclass
class Setting:
    """The inner loop all implementations share (plain SGD on every meta-parameter)."""

    lr: float
    steps: int
    first_order: bool
    loss: Callable[[Tensor, Tensor], Tensor]


def leaf_model(module: nn.Module, meta: dict[str, Tensor]) -> nn.Module:
    """A copy of ``module`` whose parameters named in ``meta`` hold its values and require grad, the others not."""
    model = copy.deepcopy(module)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in meta:
                p.copy_(meta[name])
            p.requires_grad_(name in meta)
    return model


def task(batch: Batch, t: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Task ``t`` with its texts at the task's own width, as distmeta's loop path computes them
    (dynamic padding: the peers are not made to compute on padding distmeta skips)."""
    return (trim_padding(batch["support_x"][t]), batch["support_y"][t], trim_padding(batch["query_x"][t]),
            batch["query_y"][t])


def tutorial_maml(model: nn.Module, batch: Batch, s: Setting) -> None:
    """MAML as the PyTorch tutorials write it: ``autograd.grad(create_graph=True)`` and ``functional_call``."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    for t in range(len(batch["support_x"])):
        sx, sy, qx, qy = task(batch, t)
        fast = params
        for _ in range(s.steps):
            loss = s.loss(functional_call(model, fast, (sx,)), sy)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not s.first_order)
            fast = {n: p - s.lr * g for (n, p), g in zip(fast.items(), grads)}
        s.loss(functional_call(model, fast, (qx,)), qy).backward()


def higher_maml(model: nn.Module, batch: Batch, s: Setting) -> None:
    """``higher.innerloop_ctx`` with a differentiable SGD; first order through a detaching ``grad_callback``."""
    import higher

    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=s.lr)
    detach = (lambda gs: [g.detach() for g in gs]) if s.first_order else None
    for t in range(len(batch["support_x"])):
        sx, sy, qx, qy = task(batch, t)
        with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
            for _ in range(s.steps):
                diffopt.step(s.loss(fmodel(sx), sy), grad_callback=detach)
            s.loss(fmodel(qx), qy).backward()


def torchopt_maml(model: nn.Module, batch: Batch, s: Setting) -> None:
    """TorchOpt's functional API: ``torchopt.sgd`` updates applied with ``inplace=False``."""
    import torchopt

    names = [n for n, p in model.named_parameters() if p.requires_grad]
    leaves = tuple(p for p in model.parameters() if p.requires_grad)
    optimizer = torchopt.sgd(lr=s.lr)
    for t in range(len(batch["support_x"])):
        sx, sy, qx, qy = task(batch, t)
        params = leaves
        state = optimizer.init(params)
        for _ in range(s.steps):
            loss = s.loss(functional_call(model, dict(zip(names, params)), (sx,)), sy)
            grads = torch.autograd.grad(loss, params, create_graph=not s.first_order)
            updates, state = optimizer.update(grads, state, inplace=False)
            params = torchopt.apply_updates(params, updates, inplace=False)
        s.loss(functional_call(model, dict(zip(names, params)), (qx,)), qy).backward()


def learn2learn_maml(model: nn.Module, batch: Batch, s: Setting) -> None:
    """``learn2learn.algorithms.MAML``: ``clone()`` per task, ``adapt(loss)`` per step."""
    import learn2learn as l2l

    maml = l2l.algorithms.MAML(model, lr=s.lr, first_order=s.first_order)
    for t in range(len(batch["support_x"])):
        sx, sy, qx, qy = task(batch, t)
        learner = maml.clone()
        for _ in range(s.steps):
            learner.adapt(s.loss(learner(sx), sy))
        s.loss(learner(qx), qy).backward()


def tutorial_protonet(model: nn.Module, batch: Batch, ways: int, temperature: Tensor | None) -> None:
    """Prototypical Networks per task with plain autograd: class means of the support embeddings.

    With ``temperature`` (cosine, as distmeta's default): scaled cosine similarity to the mean of
    the normalised support embeddings; without it, negative squared Euclidean distance.
    """
    for t in range(len(batch["support_x"])):
        sx, sy, qx, qy = task(batch, t)
        support, query = model(sx, head=False), model(qx, head=False)
        if temperature is None:
            protos = torch.stack([support[sy == c].mean(0) for c in range(ways)])
            logits = -torch.cdist(query, protos) ** 2
        else:
            protos = torch.stack([F.normalize(support[sy == c], dim=-1).mean(0) for c in range(ways)])
            logits = temperature * F.normalize(query, dim=-1) @ F.normalize(protos, dim=-1).T
        F.cross_entropy(logits, qy).backward()


def hf_pooled(model: nn.Module, ids: Tensor) -> Tensor:
    """sentence-transformers' mean pooling of a transformers encoder on ids padded to their longest row."""
    width = max(1, int((ids != 0).sum(-1).max()))
    ids = ids[:, :width]
    mask = (ids != 0).long()
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def hf_protonet(model: nn.Module, tasks: list[tuple[Tensor, Tensor, Tensor, Tensor]], ways: int, temperature: Tensor) -> None:
    """Cosine ProtoNet as a transformers user writes it, one task at a time.

    The whole pretrained encoder (``AutoModel``, its default attention) runs on each task's
    token ids, padded to the task's longest text as ``DataCollatorWithPadding`` does; the
    frozen layers' parameters have ``requires_grad=False``, so autograd keeps nothing for
    them; mean pooling over the attention mask; prototypes are the means of the normalised
    support embeddings, logits ``temperature`` times the cosine.
    """
    for sx, sy, qx, qy in tasks:
        support, query = hf_pooled(model, sx), hf_pooled(model, qx)
        protos = torch.stack([F.normalize(support[sy == c], dim=-1).mean(0) for c in range(ways)])
        logits = temperature * F.normalize(query, dim=-1) @ F.normalize(protos, dim=-1).T
        F.cross_entropy(logits, qy).backward()


def learn2learn_status() -> str | None:
    """None if learn2learn imports; otherwise why not (its sdist does not build on every Python)."""
    try:
        import learn2learn  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any failure is reported, not hidden
        import sys

        return (f"learn2learn: not importable on Python {sys.version_info.major}.{sys.version_info.minor} "
                f"({type(e).__name__}: {e}); its 0.2.0 sdist fails to build here (Cython C that includes "
                f"longintrepr.h, removed in Python 3.11), so it is not timed")
    return None


def missing_peer(name: str) -> str | None:
    """None if the peer library ``name`` (``higher``, ``torchopt``) imports or needs none; otherwise why it is not run."""
    module = {"higher": "higher", "torchopt": "torchopt"}.get(name)
    if module is None or importlib.util.find_spec(module) is not None:
        return None
    return f"{module} is not installed (the bench extra: pip install -e '.[bench]'), so it is not timed"


MAML_PEERS: dict[str, Callable[[nn.Module, Batch, Setting], None]] = {
    "tutorial": tutorial_maml, "higher": higher_maml, "torchopt": torchopt_maml, "learn2learn": learn2learn_maml,
}
