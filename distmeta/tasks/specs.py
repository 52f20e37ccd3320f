"""Task descriptors: the few numbers that travel instead of data.

A spec names *which* examples make up a task; every worker turns it into tensors
from its own copy of the dataset (:mod:`distmeta.tasks.materialise`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class EpisodeSpec:
    """An N-way K-shot episode: label ``j`` of the task is global class ``classes[j]``.

    ``support[j]`` / ``query[j]`` are dataset row indices of class ``classes[j]``. Its
    shape (``ways``, ``shots``) is read from these tuples: with ``data.ways_range`` /
    ``data.shots_range`` it varies from step to step, never within a step.
    """

    step: int
    index: int
    classes: tuple[int, ...]
    support: tuple[tuple[int, ...], ...]
    query: tuple[tuple[int, ...], ...]
    source: int = 0  # data.mixture component whose rows these are (0 without a mixture)

    @property
    def ways(self) -> int:
        return len(self.classes)

    @property
    def shots(self) -> int:
        return len(self.support[0])

    @property
    def queries(self) -> int:
        return len(self.query[0])


@dataclass(frozen=True)
class SinusoidSpec:
    """A regression task ``y = amplitude * sin(x - phase)`` with its sample points."""

    step: int
    index: int
    amplitude: float
    phase: float
    support_x: tuple[float, ...]
    query_x: tuple[float, ...]
    source: int = 0  # data.mixture component (sinusoid family) it was drawn from


TaskSpec = Union[EpisodeSpec, SinusoidSpec]


def task_key(spec: TaskSpec) -> tuple[int, int]:
    """Identity of a task within a run: (step, index in the meta-batch)."""
    return (spec.step, spec.index)
