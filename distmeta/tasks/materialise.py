"""Specs -> tensors, from the worker's own copy of the data.

A materialised meta-batch is a dict of stacked tensors with a leading task
dimension, the pytree that ``torch.func.vmap`` maps over:
``support_x, support_y, query_x, query_y``.
"""
from __future__ import annotations

from typing import Sequence

import torch

from distmeta.tasks.specs import EpisodeSpec, SinusoidSpec, TaskSpec

Task = dict[str, torch.Tensor]


class TextTaskBuilder:
    """Episodes from a tokenised corpus (``token_ids[row]`` is one padded example)."""

    def __init__(self, token_ids: torch.Tensor, device: torch.device | str = "cpu") -> None:
        self.token_ids = token_ids.to(device)
        self.device = torch.device(device)

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
        ids = lambda rows: self.token_ids[torch.tensor(rows, device=self.device)]  # noqa: E731
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


TaskBuilder = TextTaskBuilder | SinusoidTaskBuilder


def split_task(batch: Task, index: int) -> Task:
    """One task of a stacked batch (for the loop path)."""
    return {k: v[index] for k, v in batch.items()}


def num_tasks(batch: Task) -> int:
    return next(iter(batch.values())).shape[0]


def chunks(n: int, size: int) -> list[range]:
    """Consecutive index ranges of at most ``size``: the fixed task groups."""
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


__all__ = ["Task", "TextTaskBuilder", "SinusoidTaskBuilder", "TaskBuilder", "split_task", "num_tasks", "chunks"]
