"""Samplers: the task specs of step ``s`` are a pure function of (seed, stream, s, index).

No sampler holds mutable state, so any number of workers, a resumed run and a
single-process run all draw the same tasks. Variable-shape episodes
(``data.ways_range`` / ``data.shots_range``) draw each step's shape from (seed, stream, step) too.
"""
from __future__ import annotations

import dataclasses
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


SHAPE_STREAM = 8  # the per-step (ways, shots) draw of variable-shape episodes: its own generator


def shape_rng(seed: int, stream: int, step: int) -> np.random.Generator:
    """The generator of step ``step``'s episode shape: shared by its tasks, apart from every task's own draws."""
    return np.random.default_rng([seed, stream, step, 0, SHAPE_STREAM])


class EpisodeSampler:
    """N-way K-shot episodes over a fixed set of classes.

    With ``ways_range`` and/or ``shots_range`` (inclusive ``(lo, hi)``; ``data.ways_range`` /
    ``data.shots_range``, meta-train only) the episodes vary in shape, Meta-Dataset style:
    each step's (ways, shots) is drawn uniformly from the ranges by :meth:`shape`, a pure
    function of (seed, stream, step). The shape is drawn per step (meta-batch), not per
    task, so every task of a step - hence of a task group - has the same ways and shots
    and the group still stacks into one tensor batch for ``vmap``. An unset range keeps
    ``ways`` / ``shots`` fixed; with neither set the draws are exactly the fixed sampler's.
    Class checks use the largest ways and shots.
    """

    def __init__(
        self,
        rows_by_class: Mapping[int, np.ndarray],
        classes: Sequence[int],
        ways: int,
        shots: int,
        queries: int,
        seed: int,
        stream: str = "train",
        ways_range: tuple[int, int] | None = None,
        shots_range: tuple[int, int] | None = None,
    ) -> None:
        self.classes = np.asarray(sorted(classes), dtype=np.int64)
        self.rows = {int(c): np.asarray(rows_by_class[c]) for c in self.classes}
        self.ways, self.shots, self.queries = ways, shots, queries
        self.seed, self.stream = seed, STREAMS[stream]
        for name, r, least in (("ways_range", ways_range, 2), ("shots_range", shots_range, 1)):
            if r is not None and not least <= r[0] <= r[1]:
                raise ValueError(f"{name} must be (lo, hi) with {least} <= lo <= hi, got {tuple(r)}")
        self.ways_range = None if ways_range is None else (int(ways_range[0]), int(ways_range[1]))
        self.shots_range = None if shots_range is None else (int(shots_range[0]), int(shots_range[1]))
        max_ways = self.ways_range[1] if self.ways_range else ways
        max_shots = self.shots_range[1] if self.shots_range else shots
        if len(self.classes) < max_ways:
            what = f"the largest ways={max_ways} (ways_range {self.ways_range})" if self.ways_range else f"ways={ways}"
            raise DataError(f"split {stream!r} has {len(self.classes)} classes, fewer than {what}")
        need = max_shots + queries
        small = [int(c) for c in self.classes if len(self.rows[int(c)]) < need]
        if small:
            shots_name = "largest shots" if self.shots_range else "shots"
            raise DataError(
                f"split {stream!r}: classes {small[:20]} have fewer than {shots_name}+queries={need} examples"
            )

    def shape(self, step: int) -> tuple[int, int]:
        """(ways, shots) of every episode of step ``step``: drawn from the ranges, or the fixed ones."""
        if self.ways_range is None and self.shots_range is None:
            return self.ways, self.shots
        rng = shape_rng(self.seed, self.stream, step)
        ways = int(rng.integers(self.ways_range[0], self.ways_range[1] + 1)) if self.ways_range else self.ways
        shots = int(rng.integers(self.shots_range[0], self.shots_range[1] + 1)) if self.shots_range else self.shots
        return ways, shots

    def sample(self, step: int, index: int, shape: tuple[int, int] | None = None) -> EpisodeSpec:
        ways, shots = shape or self.shape(step)
        rng = task_rng(self.seed, self.stream, step, index)
        chosen = rng.choice(self.classes, size=ways, replace=False)
        support, query = [], []
        for c in chosen:
            rows = rng.choice(self.rows[int(c)], size=shots + self.queries, replace=False)
            support.append(tuple(rows[:shots].tolist()))  # tolist: Python ints, much faster than int() each
            query.append(tuple(rows[shots:].tolist()))
        return EpisodeSpec(step, index, tuple(chosen.tolist()), tuple(support), tuple(query))

    def batch(self, step: int, size: int) -> list[TaskSpec]:
        shape = self.shape(step)  # one shape for the whole meta-batch
        return [self.sample(step, i, shape) for i in range(size)]


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


MIXTURE_STREAM = 7  # the component draw uses its own generator: components' tasks keep their own streams


def component_seed(seed: int, component: int) -> int:
    """The seed of a mixture component's sampler: two components never share task draws."""
    return int(np.random.SeedSequence([seed, component]).generate_state(1)[0])


class MixtureSampler:
    """Tasks from several task distributions (``data.mixture``).

    Task ``index`` of step ``step`` comes from component ``c`` drawn by weight from its own
    generator (seed, stream, step, index), then is sampled by that component's sampler:
    still a pure function of (seed, step, index), and tagged ``spec.source = c`` so a
    worker batches it with the same-shaped tasks of its component.
    """

    def __init__(self, samplers: Sequence["Sampler"], weights: Sequence[float], seed: int, stream: str = "train") -> None:
        if len(samplers) != len(weights) or not samplers:
            raise ValueError("a mixture needs one weight per component sampler")
        w = np.asarray(weights, dtype=np.float64)
        self.samplers, self.p = list(samplers), w / w.sum()
        self.seed, self.stream = seed, STREAMS[stream]

    def component(self, step: int, index: int) -> int:
        rng = np.random.default_rng([self.seed, self.stream, step, index, MIXTURE_STREAM])
        return int(rng.choice(len(self.p), p=self.p))

    def sample(self, step: int, index: int) -> TaskSpec:
        c = self.component(step, index)
        return dataclasses.replace(self.samplers[c].sample(step, index), source=c)

    def batch(self, step: int, size: int) -> list[TaskSpec]:
        return [self.sample(step, i) for i in range(size)]


Sampler = EpisodeSampler | SinusoidSampler | MixtureSampler
