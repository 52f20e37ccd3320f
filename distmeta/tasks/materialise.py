"""Specs -> tensors, from the worker's own copy of the data.

A materialised meta-batch is a dict of stacked tensors with a leading task
dimension, the pytree that ``torch.func.vmap`` maps over:
``support_x, support_y, query_x, query_y``.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from distmeta.tasks.specs import EpisodeSpec, SinusoidSpec, TaskSpec

Task = dict[str, torch.Tensor]


class TextTaskBuilder:
    """Episodes from a tokenised corpus (``token_ids[row]`` is one padded example).

    With a ``prefix`` cache (:class:`~distmeta.models.prefix.PrefixCache`) an example is the
    cached output of the encoder's frozen layers instead of its token ids, as ``dtype`` floats.
    """

    def __init__(self, token_ids: torch.Tensor, device: torch.device | str = "cpu", prefix: Any = None,
                 dtype: torch.dtype = torch.float32) -> None:
        self.token_ids = token_ids.to(device)
        self.device = torch.device(device)
        self.prefix = prefix
        self.dtype = dtype

    def inputs(self, rows: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Model inputs of ``rows``: token ids ``[n, L]``, or cached prefix states ``[n, L', D]``."""
        if self.prefix is not None:
            flat = rows.cpu().numpy() if isinstance(rows, torch.Tensor) else rows
            return self.prefix.batch(flat, self.device, self.dtype)
        index = rows if isinstance(rows, torch.Tensor) else torch.tensor(rows, dtype=torch.long)
        return self.token_ids[index.to(self.device)]

    def _rows(self, groups: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
        rows, labels = [], []
        for label, group in enumerate(groups):
            rows.extend(group)
            labels.extend([label] * len(group))
        return rows, labels

    def rows(self, specs: Sequence[TaskSpec]) -> tuple[list[list[int]], list[list[int]], list[list[int]], list[list[int]]]:
        """Support rows, support labels, query rows, query labels of each episode (class-major)."""
        sx, sy, qx, qy = [], [], [], []
        for spec in specs:
            assert isinstance(spec, EpisodeSpec), f"text builder got {type(spec).__name__}"
            r, l = self._rows(spec.support)
            sx.append(r)
            sy.append(l)
            r, l = self._rows(spec.query)
            qx.append(r)
            qy.append(l)
        return sx, sy, qx, qy

    def build(self, specs: Sequence[TaskSpec]) -> Task:
        sx, sy, qx, qy = self.rows(specs)

        def ids(rows: list[list[int]]) -> torch.Tensor:  # [T, n, ...]: one gather for the whole group
            flat = self.inputs([r for task in rows for r in task])
            return flat.view(len(rows), len(rows[0]), *flat.shape[1:])

        lab = lambda ls: torch.tensor(ls, dtype=torch.long, device=self.device)  # noqa: E731
        return {"support_x": ids(sx), "support_y": lab(sy), "query_x": ids(qx), "query_y": lab(qy)}


class SinusoidTaskBuilder:
    """Regression tasks: x and y = A sin(x - phase) as [T, n, 1] tensors."""

    def __init__(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        self.dtype, self.device = dtype, torch.device(device)

    def build(self, specs: Sequence[TaskSpec]) -> Task:
        def tensor(rows: list[list[float]]) -> torch.Tensor:
            return torch.tensor(rows, dtype=torch.float64).unsqueeze(-1)

        sx = tensor([list(s.support_x) for s in specs])  # type: ignore[union-attr]
        qx = tensor([list(s.query_x) for s in specs])  # type: ignore[union-attr]
        amp = torch.tensor([s.amplitude for s in specs], dtype=torch.float64).view(-1, 1, 1)  # type: ignore[union-attr]
        ph = torch.tensor([s.phase for s in specs], dtype=torch.float64).view(-1, 1, 1)  # type: ignore[union-attr]
        out = {"support_x": sx, "support_y": amp * torch.sin(sx - ph), "query_x": qx, "query_y": amp * torch.sin(qx - ph)}
        return {k: v.to(self.device, self.dtype) for k, v in out.items()}


class MixedTask:
    """A group's tasks batched per mixture component: ``parts`` = [(positions in the group, Task, ways)].

    vmap needs same-shaped tasks; a component's tasks share a shape (its ways/shots/queries).
    """

    def __init__(self, size: int, parts: list[tuple[list[int], Task, int]]) -> None:
        self.size, self.parts = size, parts


class MixtureTaskBuilder:
    """Materialises each component's tasks from that component's own builder (its own data)."""

    def __init__(self, builders: Sequence["TextTaskBuilder | SinusoidTaskBuilder"]) -> None:
        self.builders = list(builders)

    def build(self, specs: Sequence[TaskSpec]) -> MixedTask:
        parts = []
        for c, builder in enumerate(self.builders):
            pos = [i for i, s in enumerate(specs) if s.source == c]
            if pos:
                mine = [specs[i] for i in pos]
                parts.append((pos, builder.build(mine), getattr(mine[0], "ways", 1)))
        return MixedTask(len(specs), parts)


class ByComponent:
    """An algorithm applied to a :class:`MixedTask` one component at a time, in component order.

    The group's meta-gradient is the sum of the components' (the gradient of the group's
    summed loss); per-task metrics come back in the group's task order. ProtoNet runs each
    component at its own number of ways; head-based algorithms have one (checked in the config).
    """

    uses_fixed_features = False  # episodes of several corpora: no per-corpus feature cache

    def __init__(self, algorithm: Any) -> None:
        self.algorithm = algorithm
        self.ways = algorithm.ways
        self._by_ways: dict[int, Any] = {}

    def __getattr__(self, name: str) -> Any:  # model, model_params, ... of the wrapped algorithm
        try:
            algorithm = self.__dict__["algorithm"]
        except KeyError:  # during copy.copy, before __dict__ is filled
            raise AttributeError(name) from None
        return getattr(algorithm, name)

    def _for(self, ways: int) -> Any:
        if ways == self.algorithm.ways or self.algorithm.kind == "regression":
            return self.algorithm
        if ways not in self._by_ways:
            import copy

            alg = copy.copy(self.algorithm)
            alg.ways = ways
            self._by_ways[ways] = alg
        return self._by_ways[ways]

    @staticmethod
    def _scatter(out: dict[str, torch.Tensor], size: int, pos: list[int], metrics: dict[str, torch.Tensor]) -> None:
        for k, v in metrics.items():
            if k not in out:
                out[k] = torch.zeros(size, dtype=v.dtype, device=v.device)
            out[k][torch.tensor(pos, device=v.device)] = v

    def batch_grad(self, meta: Any, batch: MixedTask, use_vmap: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        total: dict[str, torch.Tensor] = {}
        metrics: dict[str, torch.Tensor] = {}
        for pos, task, ways in batch.parts:
            grads, m = self._for(ways).batch_grad(meta, task, use_vmap)
            for n, g in grads.items():
                total[n] = total[n] + g if n in total else g
            self._scatter(metrics, batch.size, pos, m)
        return total, metrics

    def batch_eval(self, meta: Any, batch: MixedTask, inner_steps: int, use_vmap: bool = True) -> dict[str, torch.Tensor]:
        metrics: dict[str, torch.Tensor] = {}
        for pos, task, ways in batch.parts:
            self._scatter(metrics, batch.size, pos, self._for(ways).batch_eval(meta, task, inner_steps, use_vmap))
        return metrics


TaskBuilder = TextTaskBuilder | SinusoidTaskBuilder | MixtureTaskBuilder


def split_task(batch: Task, index: int) -> Task:
    """One task of a stacked batch (for the loop path)."""
    return {k: v[index] for k, v in batch.items()}


def num_tasks(batch: Task) -> int:
    return next(iter(batch.values())).shape[0]


def chunks(n: int, size: int) -> list[range]:
    """Consecutive index ranges of at most ``size``: the fixed task groups."""
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


__all__ = ["Task", "TextTaskBuilder", "SinusoidTaskBuilder", "TaskBuilder", "MixedTask", "MixtureTaskBuilder", "ByComponent", "split_task", "num_tasks", "chunks"]
