"""Samplers: the task specs of step ``s`` are a pure function of (seed, stream, s, index).

No sampler holds mutable state, so any number of workers, a resumed run and a
single-process run all draw the same tasks.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from distmeta.config import SinusoidConfig
from distmeta.errors import DataError
from distmeta.tasks.specs import EpisodeSpec, SinusoidSpec, TaskSpec

#: Separate random streams so meta-train, validation and test tasks never share draws.
STREAMS = {"train": 0, "val": 1, "test": 2}


def task_rng(seed: int, stream: int, step: int, index: int) -> np.random.Generator:
    """The generator of one task: independent of every other task and of worker count."""
    return np.random.default_rng([seed, stream, step, index])


class EpisodeSampler:
    """N-way K-shot episodes over a fixed set of classes."""

    def __init__(
        self,
        rows_by_class: Mapping[int, np.ndarray],
        classes: Sequence[int],
        ways: int,
        shots: int,
        queries: int,
        seed: int,
        stream: str = "train",
    ) -> None:
        self.classes = np.asarray(sorted(classes), dtype=np.int64)
        self.rows = {int(c): np.asarray(rows_by_class[c]) for c in self.classes}
        self.ways, self.shots, self.queries = ways, shots, queries
        self.seed, self.stream = seed, STREAMS[stream]
        if len(self.classes) < ways:
            raise DataError(f"split {stream!r} has {len(self.classes)} classes, fewer than ways={ways}")
        need = shots + queries
        small = [int(c) for c in self.classes if len(self.rows[int(c)]) < need]
        if small:
            raise DataError(
                f"split {stream!r}: classes {small[:20]} have fewer than shots+queries={need} examples"
            )

    def sample(self, step: int, index: int) -> EpisodeSpec:
        rng = task_rng(self.seed, self.stream, step, index)
        chosen = rng.choice(self.classes, size=self.ways, replace=False)
        support, query = [], []
        for c in chosen:
            rows = rng.choice(self.rows[int(c)], size=self.shots + self.queries, replace=False)
            support.append(tuple(int(r) for r in rows[: self.shots]))
            query.append(tuple(int(r) for r in rows[self.shots :]))
        return EpisodeSpec(step, index, tuple(int(c) for c in chosen), tuple(support), tuple(query))

    def batch(self, step: int, size: int) -> list[TaskSpec]:
        return [self.sample(step, i) for i in range(size)]


class SinusoidSampler:
    """Sinusoid regression tasks: amplitude and phase uniform in their ranges."""

    def __init__(self, cfg: SinusoidConfig, shots: int, queries: int, seed: int, stream: str = "train") -> None:
        self.cfg, self.shots, self.queries = cfg, shots, queries
        self.seed, self.stream = seed, STREAMS[stream]

    def sample(self, step: int, index: int) -> SinusoidSpec:
        rng = task_rng(self.seed, self.stream, step, index)
        amp = float(rng.uniform(*self.cfg.amplitude))
        phase = float(rng.uniform(*self.cfg.phase))
        xs = rng.uniform(*self.cfg.x_range, size=self.shots + self.queries)
        return SinusoidSpec(
            step, index, amp, phase, tuple(float(x) for x in xs[: self.shots]), tuple(float(x) for x in xs[self.shots :])
        )

    def batch(self, step: int, size: int) -> list[TaskSpec]:
        return [self.sample(step, i) for i in range(size)]


Sampler = EpisodeSampler | SinusoidSampler
