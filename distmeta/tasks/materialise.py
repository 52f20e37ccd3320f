"""Specs -> tensors, from the corpus the worker was given once.

A materialised meta-batch is a dict of stacked tensors with a leading task
dimension, the pytree that ``torch.func.vmap`` maps over:
``support_x, support_y, query_x, query_y``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from distmeta.tasks.specs import EpisodeSpec, TaskSpec

Task = dict[str, torch.Tensor]


class TextTaskBuilder:
    """Episodes from a tokenised corpus (:class:`~distmeta.text.corpus.TokenCorpus`).

    Only the rows of the episodes asked for are padded and converted to ``torch.long``.
    With a ``prefix`` cache (:class:`~distmeta.models.prefix.PrefixCache`) an example is the
    cached output of the encoder's frozen layers instead of its token ids, as ``dtype`` floats.
    """

    def __init__(self, corpus: Any, device: torch.device | str = "cpu", prefix: Any = None,
                 dtype: torch.dtype = torch.float32) -> None:
        self.corpus = corpus
        self.device = torch.device(device)
        self.prefix = prefix
        self.dtype = dtype

    def inputs(self, rows: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Model inputs of corpus ``rows``: token ids ``[n, L]``, or cached prefix states ``[n, L', D]``."""
        flat = rows.cpu().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows, dtype=np.int64)
        if self.prefix is not None:
            return self.prefix.batch(flat, self.device, self.dtype)
        return torch.from_numpy(self.corpus.padded(flat, self._longest(flat))).to(self.device)

    def _longest(self, rows: np.ndarray) -> int:
        """The longest of ``rows`` in tokens (at most ``max_length``, at least 1): the width they are padded to.

        Padding to it rather than to ``max_length`` changes no real token's result (every model
        masks padded keys and pools over real tokens only) and computes on fewer positions.
        """
        if len(rows) == 0:
            return 1
        offsets = self.corpus.offsets
        lengths = offsets[rows + 1].astype(np.int64) - offsets[rows].astype(np.int64)
        return int(max(1, min(int(lengths.max()), self.corpus.max_length)))

    def _rows(self, groups: Sequence[Sequence[int]], start: int) -> tuple[list[int], list[int]]:
        rows, labels = [], []
        for label, group in enumerate(groups):
            rows.extend(r + start for r in group)
            labels.extend([label] * len(group))
        return rows, labels

    def rows(self, specs: Sequence[TaskSpec]) -> tuple[list[list[int]], list[list[int]], list[list[int]], list[list[int]]]:
        """Support corpus rows, support labels, query corpus rows, query labels of each episode (class-major)."""
        sx, sy, qx, qy = [], [], [], []
        for spec in specs:
            assert isinstance(spec, EpisodeSpec), f"text builder got {type(spec).__name__}"
            start = self.corpus.starts[spec.source]
            r, l = self._rows(spec.support, start)
            sx.append(r)
            sy.append(l)
            r, l = self._rows(spec.query, start)
            qx.append(r)
            qy.append(l)
        return sx, sy, qx, qy

    def build(self, specs: Sequence[TaskSpec]) -> Task:
        """Same-shaped episodes stacked: ``support_x [T, n, ...]`` etc., one gather for the whole group."""
        sx, sy, qx, qy = self.rows(specs)

        def ids(rows: list[list[int]]) -> torch.Tensor:
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


def by_source(specs: Sequence[TaskSpec]) -> list[tuple[list[int], list[TaskSpec]]]:
    """A group's tasks split by source, in source order: ``[(positions in the group, specs)]``.

    vmap needs same-shaped tasks; a source's tasks share a shape (its ways/shots/queries),
    so each part is one stacked batch. One source gives one part: the whole group.
    """
    positions: dict[int, list[int]] = {}
    for i, s in enumerate(specs):
        positions.setdefault(s.source, []).append(i)
    return [(pos, [specs[i] for i in pos]) for _, pos in sorted(positions.items())]


TaskBuilder = TextTaskBuilder | SinusoidTaskBuilder


def split_task(batch: Task, index: int, pad_id: int = 0) -> Task:
    """One task of a stacked batch (for the loop path), its texts cut to the task's own longest.

    A group is padded to its longest text; one task of it usually needs fewer positions.
    Trailing padding changes no real token's result, so each task is computed at its own width.
    ``pad_id`` is the id token rows are padded with (the corpus's; 0 unless a pretrained
    tokenizer pads with another id, where a 0 default only trims less: id 0 is then ``<s>``).
    """
    task = {k: v[index] for k, v in batch.items()}
    for key in ("support_x", "query_x"):
        if key in task:
            task[key] = trim_padding(task[key], pad_id)
    return task


def trim_padding(x: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """Text inputs without the trailing positions that are padding in every row.

    Token ids ``[n, L]`` (right-padded with ``pad_id``) or cached prefix states ``[n, L, D]`` (zero at
    padding); anything else (sinusoid ``[n, 1]`` floats) is returned as it is.
    """
    if x.dim() == 2 and not x.is_floating_point():
        real = x != pad_id
    elif x.dim() == 3 and x.is_floating_point():
        real = (x != 0).any(-1)
    else:
        return x
    used = real.any(0)
    width = int(used.nonzero().max()) + 1 if bool(used.any()) else 1
    return x if width == x.shape[1] else x[:, :width]


def num_tasks(batch: Task) -> int:
    return next(iter(batch.values())).shape[0]


__all__ = ["Task", "TextTaskBuilder", "SinusoidTaskBuilder", "TaskBuilder", "by_source", "split_task", "trim_padding", "num_tasks"]
