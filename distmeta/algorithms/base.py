"""What every meta-learner provides: a per-task meta-gradient and a per-task evaluation.

Both are pure functions of ``(meta_params, task)``, so a meta-batch is computed
either with ``torch.func.vmap`` over stacked tasks or with a plain loop, and the two
agree (tests check it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import grad, vmap

from distmeta.algorithms import rows
from distmeta.algorithms.functional import ModelFn, Params, loss_for
from distmeta.algorithms.rows import token_table
from distmeta.tasks.materialise import Task, num_tasks, split_task


@dataclass
class InnerSettings:
    """How the inner loop runs (from ``algorithm.*``)."""

    lr: float
    steps: int
    optimizer: str = "sgd"
    momentum: float = 0.9
    #: Second order: recompute each inner step in the backward pass instead of keeping its graph.
    checkpoint: bool = False


class Algorithm:
    """Base meta-learner. Subclasses implement :meth:`objective` (or :meth:`task_grad`) and :meth:`task_eval`."""

    name = "base"
    #: Whether the classifier is rebuilt per task (prototypes), so episodes of any number of
    #: ways work with one copy per ``ways`` (``copy.copy`` and a new ``ways``); head-based
    #: algorithms have a fixed ``ways``-way head.
    any_ways = False
    #: Names of the algorithm-owned meta-parameters (see :meth:`extra_meta_params`).
    own_meta_names: frozenset[str] = frozenset()

    def __init__(self, model: ModelFn, kind: str, adapt: list[str], inner: InnerSettings, ways: int) -> None:
        self.model = model
        self.kind = kind
        self.loss = loss_for(kind)
        self.adapt = list(adapt)
        self.inner = inner
        self.ways = ways
        self.head_only = all(model.is_head(n) for n in self.adapt)
        #: The token-embedding table whose rows the inner loop adapts only where a task reads
        #: them (distmeta.algorithms.rows), or None.
        self.row_table = token_table(model.module)
        #: The id token inputs are padded with (a pretrained encoder's own; 0 otherwise): the loop
        #: path cuts each task to its own width by it.
        self.pad_id = int(getattr(model.module, "pad_id", 0))

    # ---------------------------------------------------------------- meta-parameters
    def extra_meta_params(self, model_params: Params) -> Params:
        """Meta-parameters beyond the network's own (Meta-SGD's ``lr.*``, the cosine ``temperature``).

        Records their names, so that :meth:`model_params` leaves them out; the record is an
        instance attribute, so ``copy.copy`` of the algorithm (one per number of ways) keeps it.
        Subclasses add parameters by overriding :meth:`own_meta_params`.
        """
        extra = self.own_meta_params(model_params)
        self.own_meta_names = frozenset(extra)
        return extra

    def own_meta_params(self, model_params: Params) -> Params:
        """The algorithm's own meta-parameters and their initial values (none by default)."""
        return {}

    def model_params(self, meta: Params) -> Params:
        """The network's parameters among ``meta``: everything but the algorithm-owned ones."""
        return {n: p for n, p in meta.items() if n not in self.own_meta_names}

    @property
    def uses_fixed_features(self) -> bool:
        """True when adaptation never changes the encoder, so evaluation may reuse cached features."""
        return self.head_only

    def features(self, params: Params, task: Task, part: str) -> Tensor:
        """Pooled features of ``part`` ("support" / "query"): precomputed ``{part}_f`` if the task has them."""
        cached = task.get(f"{part}_f")
        return cached if cached is not None else self.model(params, task[f"{part}_x"], head=False)

    def adapted_numel(self) -> int:
        """Parameters the inner loop adapts per task (each task holds its own copy under vmap)."""
        sizes = {n: p.numel() for n, p in self.model.module.named_parameters()}
        return sum(sizes.get(n, 0) for n in self.adapt) if self.inner.steps > 0 else 0

    def prefers_vmap(self, max_adapted: int) -> bool:
        """Whether a group should run under vmap rather than as a per-task autograd loop.

        On CPU vmap wins while a task adapts few parameters (sinusoid MLP, small bags, ANIL's
        head) and loses once each task's adapted copy and its dense inner gradient dominate (a
        bag's embedding table, transformers); ``python -m benchmarks.speed.vmap_vs_loop``
        measures where, and docs/results.md has the figures.
        """
        return self.adapted_numel() <= max_adapted

    # ---------------------------------------------------------------- per task
    def task_grad(self, meta: Params, task: Task) -> tuple[Params, dict[str, Tensor]]:
        """Meta-gradient of one task w.r.t. every entry of ``meta``, and its metrics."""
        return grad(self.objective, has_aux=True)(meta, task)

    def objective(self, meta: Params, task: Task) -> tuple[Tensor, dict[str, Tensor]]:
        """The task's differentiable query loss and metrics; algorithms without one override task_grad."""
        raise NotImplementedError

    def task_eval(self, meta: Params, task: Task, inner_steps: int) -> dict[str, Tensor]:
        """Adapt on the support set, then loss/accuracy on the query set (no meta-gradient)."""
        raise NotImplementedError

    @property
    def has_objective(self) -> bool:
        """Whether the meta-gradient is the gradient of :meth:`objective` (not a custom task_grad, e.g. Reptile)."""
        cls = type(self)
        return cls.objective is not Algorithm.objective and cls.task_grad is Algorithm.task_grad

    # ---------------------------------------------------------------- many tasks
    def batch_grad(self, meta: Params, batch: Task, use_vmap: bool = True) -> tuple[Params, dict[str, Tensor]]:
        """Sum of the tasks' meta-gradients (in task order) and per-task metrics stacked [T].

        Where the inner loop adapts a token-embedding table, on the rows the tasks read
        (:mod:`distmeta.algorithms.rows`: the same meta-gradient, less work); otherwise
        :meth:`dense_batch_grad`.
        """
        if rows.applies(self, meta, batch) and f"lr.{self.row_table}" not in meta:
            return rows.rows_batch_grad(self, meta, batch, use_vmap)
        return self.dense_batch_grad(meta, batch, use_vmap)

    def dense_batch_grad(self, meta: Params, batch: Task, use_vmap: bool = True) -> tuple[Params, dict[str, Tensor]]:
        """:meth:`batch_grad` on the parameters as given (every row of every table)."""
        if use_vmap and self.has_objective:
            # Differentiate the group's summed loss: autograd accumulates one gradient per
            # meta-parameter instead of materialising a per-task copy (a [T, vocab, dim]
            # embedding gradient, say) and summing it afterwards.
            def total(m: Params) -> tuple[Tensor, dict[str, Tensor]]:
                losses, metrics = vmap(self.objective, in_dims=(None, 0))(m, batch)
                return losses.sum(), metrics

            return grad(total, has_aux=True)(meta)
        if use_vmap:
            grads, metrics = vmap(self.task_grad, in_dims=(None, 0))(meta, batch)
            return {n: g.sum(0) for n, g in grads.items()}, metrics
        if self.has_objective:
            return self._autograd_loop(meta, batch)
        total: Params = {}
        rows: list[dict[str, Tensor]] = []
        for t in range(num_tasks(batch)):
            g, m = self.task_grad(meta, split_task(batch, t, self.pad_id))
            total = g if not total else {n: total[n] + g[n] for n in total}
            rows.append(m)
        return total, {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    def _autograd_loop(self, meta: Params, batch: Task) -> tuple[Params, dict[str, Tensor]]:
        """The loop path: one ``backward()`` per task into shared leaves, as a hand-written loop does.

        Plain autograd (inner steps included, see :func:`inner_gradients`) is faster than
        ``torch.func.grad`` for one task at a time; ``.grad`` accumulates the tasks in order.
        """
        leaves = {n: p.detach().requires_grad_() for n, p in meta.items()}
        rows: list[dict[str, Tensor]] = []
        with torch.enable_grad():
            for t in range(num_tasks(batch)):
                loss, metrics = self.objective(leaves, split_task(batch, t, self.pad_id))
                loss.backward()
                rows.append(metrics)
        total = {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in leaves.items()}
        return total, {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    def batch_eval(self, meta: Params, batch: Task, inner_steps: int, use_vmap: bool = True) -> dict[str, Tensor]:
        """Per-task evaluation metrics stacked [T]."""
        fn = lambda m, t: self.task_eval(m, t, inner_steps)  # noqa: E731
        if use_vmap:
            return vmap(fn, in_dims=(None, 0))(meta, batch)
        rows = [fn(meta, split_task(batch, t, self.pad_id)) for t in range(num_tasks(batch))]
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
