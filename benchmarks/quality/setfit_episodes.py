"""distmeta's meta-test episodes as texts, and distmeta's own baselines on them, for peers such as SetFit.

Episode ``i`` of a (ways, shots) setting is the one ``distmeta eval`` scores: the experiment is
prepared by :func:`distmeta.experiment.prepare_experiment` from the same config (source, class
split, seed), the sampler is ``exp.sampler("test", ways, shots, queries=eval.queries)`` as in
:class:`~distmeta.training.evaluation.Evaluator`, and the episode is ``sampler.sample(0, i)`` as in
:func:`~distmeta.training.evaluation.run_episodes`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class EpisodeTexts:
    """One episode as SetFit takes it: label ``j`` is the episode's ``j``-th class (``spec.classes[j]``)."""

    index: int
    classes: tuple[str, ...]
    support_texts: list[str]
    support_labels: list[int]
    query_texts: list[str]
    query_labels: list[int]


def episode_texts(spec: Any, data: Any) -> EpisodeTexts:
    """The texts and episode labels of ``spec`` (an :class:`~distmeta.tasks.specs.EpisodeSpec`) in ``data``.

    Args:
        spec: the episode: class ids and, per class, its support and query rows of ``data``.
        data: the source's :class:`~distmeta.data.LabelledText`.
    Returns:
        Support and query texts, class by class, labelled ``0 .. ways-1`` as distmeta labels them.
    """
    def side(rows_per_class: Sequence[Sequence[int]]) -> tuple[list[str], list[int]]:
        texts, labels = [], []
        for j, rows in enumerate(rows_per_class):
            texts += [data.texts[int(r)] for r in rows]
            labels += [j] * len(rows)
        return texts, labels

    s_texts, s_labels = side(spec.support)
    q_texts, q_labels = side(spec.query)
    names = tuple(data.class_names[c] for c in spec.classes)
    return EpisodeTexts(spec.index, names, s_texts, s_labels, q_texts, q_labels)


def prepare(config: str | None, overrides: list[str]) -> tuple[Any, Any]:
    """The config and its prepared experiment, as ``distmeta train`` builds them (the prefix cache left out:
    episodes do not depend on it)."""
    from distmeta.config import load_config
    from distmeta.experiment import prepare_experiment

    cfg = load_config(config, [*overrides, "model.prefix_cache=false"])
    if cfg.data.mixture is not None or cfg.data.is_regression:
        raise SystemExit("setfit_peer scores one text source; this config has data.mixture or data.source=sinusoid")
    return cfg, prepare_experiment(cfg)


def meta_test_specs(cfg: Any, exp: Any, ways: int, shots: int, count: int) -> list[Any]:
    """Episodes ``0 .. count-1`` of the (ways, shots) meta-test, exactly those ``distmeta eval`` scores."""
    if [ways, shots] not in [list(s) for s in cfg.eval.settings]:
        raise SystemExit(f"setting {ways}x{shots} is not in eval.settings={cfg.eval.settings}: distmeta never scores "
                         "those episodes; add it to eval.settings (an override) so the class split matches")
    sampler = exp.sampler("test", ways=ways, shots=shots, queries=cfg.eval.queries)
    return [sampler.sample(0, i) for i in range(count)]


def meta_test_episodes(cfg: Any, exp: Any, ways: int, shots: int, count: int) -> list[EpisodeTexts]:
    """The texts of :func:`meta_test_specs`' episodes."""
    return [episode_texts(spec, exp.data) for spec in meta_test_specs(cfg, exp, ways, shots, count)]


class Baselines:
    """distmeta's own baselines (frozen encoder, cosine centroid; fine-tuned head) per episode, computed lazily
    in chunks of ``eval.batch`` by an in-process worker, so SetFit is compared on exactly its episodes."""

    def __init__(self, cfg: Any, exp: Any) -> None:
        from distmeta.training.in_process import LocalBackend

        self.cfg, self.backend = cfg, LocalBackend(cfg, exp.worker_args())
        self.done: dict[int, dict[str, float]] = {}

    def of(self, specs: list[Any], i: int) -> dict[str, float]:
        """Baseline metrics of episode ``specs[i]`` (its chunk computed on first use)."""
        if i not in self.done:
            chunk = specs[i : i + self.cfg.eval.batch]
            got = self.backend.evaluate(self.backend.initial_meta, [chunk], self.cfg.inner_steps_eval,
                                        baseline=True)[0]
            self.done.update({i + j: {k: v[j] for k, v in got.items()} for j in range(len(chunk))})
        return self.done[i]
