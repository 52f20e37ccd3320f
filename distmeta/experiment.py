"""Everything a run needs before the first step: data, class split, tokenizer, samplers.

Bad data and impossible settings fail here, before any worker or Ray actor starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distmeta.config import Config
from distmeta.errors import ConfigError, DataError
from distmeta.tasks.sampler import EpisodeSampler, Sampler, SinusoidSampler

SPLIT_FILE = "split.json"
TOKENIZER_FILE = "tokenizer.json"


@dataclass
class Experiment:
    """A prepared task distribution: what the driver samples from and what workers materialise."""

    cfg: Config
    data: Any = None  # LabelledText for text sources
    split: Any = None  # ClassSplit
    token_ids: np.ndarray | None = None
    vocab_size: int = 0
    tokenizer: Any = None
    components: list["Experiment"] | None = None  # data.mixture text sources: each with its own data and split
    prefix: dict[str, Any] | None = None  # the frozen-prefix cache workers open (path, layers, rows)

    def sampler(self, split: str = "train", ways: int | None = None, shots: int | None = None,
                queries: int | None = None, seed: int | None = None) -> Sampler:
        """Sampler over one split's classes (or sinusoid tasks), episode shape from config unless given.

        The ``"train"`` split draws each step's ways / shots from ``data.ways_range`` /
        ``data.shots_range`` when set (and not given here); validation and test keep fixed shapes.
        """
        d = self.cfg.data
        if d.mixture:
            return self._mixture_sampler(split, ways, shots, queries, seed)
        train = split == "train"
        ways_range = d.ways_range if train and ways is None else None
        shots_range = d.shots_range if train and shots is None else None
        shots = shots or d.shots
        queries = queries or d.queries
        seed = self.cfg.seed if seed is None else seed
        if d.is_regression:
            return SinusoidSampler(d.sinusoid, shots, queries, seed, split)
        classes = getattr(self.split, split)
        return EpisodeSampler(self.data.rows_by_class(), classes, ways or d.ways, shots, queries, seed, split,
                              ways_range=ways_range, shots_range=shots_range)

    def worker_args(self) -> dict[str, Any]:
        """What a Worker is built from (sent once per actor, never per step)."""
        if self.components is not None:
            return {"token_ids": None, "vocab_size": self.vocab_size,
                    "components": [c.token_ids for c in self.components]}
        return {"token_ids": self.token_ids, "vocab_size": self.vocab_size, "prefix_cache": self.prefix}

    def _mixture_sampler(self, split: str, ways: int | None, shots: int | None, queries: int | None,
                         seed: int | None) -> Sampler:
        """Per-component samplers (component shapes unless ways/shots/queries are given) drawn by weight."""
        from distmeta.tasks.sampler import MixtureSampler, component_seed

        d = self.cfg.data
        seed = self.cfg.seed if seed is None else seed
        samplers: list[Sampler] = []
        for c, dc in enumerate(d.components()):
            s_c, q_c, w_c = shots or dc.shots, queries or dc.queries, ways or dc.ways
            if d.is_regression:
                samplers.append(SinusoidSampler(dc.sinusoid, s_c, q_c, component_seed(seed, c), split))
            else:
                assert self.components is not None
                part = self.components[c]
                samplers.append(EpisodeSampler(part.data.rows_by_class(), getattr(part.split, split), w_c, s_c, q_c,
                                               component_seed(seed, c), split))
        return MixtureSampler(samplers, [m.weight for m in d.mixture or []], seed, split)


class MixtureSplit:
    """The class splits of a text mixture's sources; ``val`` is non-empty when every source has validation classes."""

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts

    def __getattr__(self, split: str) -> list[list[int]]:
        if split not in ("train", "val", "test"):
            raise AttributeError(split)
        lists = [getattr(p, split) for p in self.__dict__["parts"]]
        return lists if all(lists) else []


def min_examples_per_class(cfg: Config, data: Any = None) -> int:
    """Enough rows per class for training episodes (their largest shots), validation and every evaluation setting
    (of ``data``: one mixture source)."""
    data = data or cfg.data
    need = max(data.shots, data.train_shots()) + data.queries
    for _, shots in cfg.eval.settings:
        need = max(need, shots + cfg.eval.queries)
    return need


def prepare_experiment(cfg: Config, run_dir: Path | None = None, reuse_saved: bool = False) -> Experiment:
    """Load and check the data, split classes, build the tokenizer; save split and tokenizer to ``run_dir``.

    With ``reuse_saved`` (resume, eval) the run's saved split and tokenizer are used as they are.
    """
    if cfg.data.is_regression:
        return Experiment(cfg)
    if cfg.data.mixture:
        return _prepare_text_mixture(cfg, run_dir, reuse_saved)
    from distmeta.data import check_ways, load_source, load_split, make_split, save_split, usable_classes
    from distmeta.text import encode, load_pretrained_tokenizer, load_tokenizer, save_tokenizer, train_tokenizer

    data = load_source(cfg.data)
    split_path = run_dir / SPLIT_FILE if run_dir is not None else None
    if reuse_saved and split_path is not None and split_path.exists():
        split = load_split(split_path, data)
    else:
        usable = usable_classes(data, min_examples_per_class(cfg), cfg.data.small_classes)
        split = make_split(data, cfg.data.split, cfg.seed, usable)
    ways = {"train": cfg.data.train_ways(), "test": max(w for w, _ in cfg.eval.settings)}  # largest of each
    if split.val:
        ways["val"] = cfg.data.ways
    if cfg.data.ways_range and len(split.train) < cfg.data.ways_range[1]:
        raise DataError(f"split 'train' has {len(split.train)} classes, fewer than the largest training ways "
                        f"{cfg.data.ways_range[1]} (data.ways_range={list(cfg.data.ways_range)}); lower it or give "
                        "that split more classes (data.split)")
    check_ways(split, ways)

    tok_path = run_dir / TOKENIZER_FILE if run_dir is not None else None
    if cfg.tokenizer.kind == "pretrained":
        from distmeta.models import pretrained_dir

        tokenizer = load_pretrained_tokenizer(pretrained_dir(cfg))
    elif reuse_saved and tok_path is not None and tok_path.exists():
        tokenizer = load_tokenizer(tok_path)
    else:
        train_rows = np.concatenate([data.rows_by_class()[c] for c in split.train])
        texts = [data.texts[i] for i in np.sort(train_rows)]
        t = cfg.tokenizer
        tokenizer = train_tokenizer(texts, t.kind, t.vocab_size, t.min_frequency, t.lowercase)
    token_ids = encode(tokenizer, data.texts, cfg.data.max_length).numpy()
    if (token_ids != 0).sum(1).min() == 0:
        raise DataError(f"data source {cfg.data.source!r}: some texts encode to no tokens")
    if run_dir is not None:
        save_split(split, data, run_dir / SPLIT_FILE)
        save_tokenizer(tokenizer, run_dir / TOKENIZER_FILE)
    exp = Experiment(cfg, data, split, token_ids, tokenizer.get_vocab_size(), tokenizer)
    exp.prefix = prepare_prefix_cache(exp)
    return exp


def prepare_prefix_cache(exp: Experiment) -> dict[str, Any] | None:
    """Build (or find) the frozen-prefix cache of a pretrained encoder before any worker starts.

    It covers every row of the split's classes. Returns what workers need to open it
    (``path``, ``layers``, ``rows``), or None when ``model.prefix_cache`` is off, the model is not a
    pretrained layer stack, or every layer moves (meta-trained or adapted).
    """
    from distmeta.config import PRETRAINED_MODELS

    cfg = exp.cfg
    if cfg.model.name not in PRETRAINED_MODELS or cfg.model.prefix_cache is False or exp.token_ids is None:
        return None
    import torch

    from distmeta.algorithms import build_algorithm
    from distmeta.models import build_model
    from distmeta.models.prefix import default_cache_dir, frozen_prefix_layers, open_or_build

    module = build_model(cfg, exp.vocab_size, cfg.data.ways).to(torch.float32)
    algorithm, meta = build_algorithm(cfg, module)
    adapts = algorithm.name != "protonet" and cfg.algorithm.inner_steps > 0  # ProtoNet has no inner loop
    layers = frozen_prefix_layers(module, set(meta) | (set(algorithm.adapt) if adapts else set()))
    if layers == 0:
        if cfg.model.prefix_cache is True:
            raise ConfigError("model.prefix_cache=true, but the embeddings are meta-trained or adapted "
                              f"(model.trainable={cfg.model.trainable}, algorithm.adapt={cfg.algorithm.adapt}): "
                              "nothing is frozen to cache")
        return None
    rows = np.sort(np.concatenate([exp.data.rows_by_class()[c] for part in ("train", "val", "test")
                                   for c in getattr(exp.split, part)]))
    cache = open_or_build(module, layers, exp.token_ids, rows, default_cache_dir(cfg), progress=cfg.run.progress)
    print(f"prefix cache: {layers} frozen layers of {module.num_layers}, {len(rows)} examples, "
          f"{cache.nbytes / 2**20:.0f} MiB shared per node ({cache.path})", flush=True)
    return {"path": str(cache.path), "layers": layers, "rows": rows}


def _prepare_text_mixture(cfg: Config, run_dir: Path | None, reuse_saved: bool) -> Experiment:
    """Each text source of ``data.mixture`` loaded, checked and split on its own (``split_<c>.json``); one
    tokenizer for all of them (trained on every source's meta-train rows, or the pretrained one)."""
    from distmeta.data import check_ways, load_source, load_split, make_split, save_split, usable_classes
    from distmeta.text import encode, load_pretrained_tokenizer, load_tokenizer, save_tokenizer, train_tokenizer

    parts: list[Experiment] = []
    test_ways = max(w for w, _ in cfg.eval.settings)
    for c, dc in enumerate(cfg.data.components()):
        data = load_source(dc)
        path = run_dir / f"split_{c}.json" if run_dir is not None else None
        if reuse_saved and path is not None and path.exists():
            split = load_split(path, data)
        else:
            split = make_split(data, dc.split, cfg.seed, usable_classes(data, min_examples_per_class(cfg, dc), dc.small_classes))
        ways = {"train": dc.ways, "test": test_ways, **({"val": dc.ways} if split.val else {})}
        try:
            check_ways(split, ways)
        except DataError as err:
            raise DataError(f"data.mixture.{c} ({dc.source}): {err}") from None
        parts.append(Experiment(cfg, data, split))

    tok_path = run_dir / TOKENIZER_FILE if run_dir is not None else None
    if cfg.tokenizer.kind == "pretrained":
        from distmeta.models import pretrained_dir

        tokenizer = load_pretrained_tokenizer(pretrained_dir(cfg))
    elif reuse_saved and tok_path is not None and tok_path.exists():
        tokenizer = load_tokenizer(tok_path)
    else:
        texts = []
        for part in parts:
            rows = np.concatenate([part.data.rows_by_class()[k] for k in part.split.train])
            texts += [part.data.texts[i] for i in np.sort(rows)]
        t = cfg.tokenizer
        tokenizer = train_tokenizer(texts, t.kind, t.vocab_size, t.min_frequency, t.lowercase)
    for c, part in enumerate(parts):
        part.token_ids = encode(tokenizer, part.data.texts, cfg.data.max_length).numpy()
        if (part.token_ids != 0).sum(1).min() == 0:
            raise DataError(f"data.mixture.{c} ({cfg.data.components()[c].source}): some texts encode to no tokens")
        if run_dir is not None:
            save_split(part.split, part.data, run_dir / f"split_{c}.json")
    if run_dir is not None:
        save_tokenizer(tokenizer, run_dir / TOKENIZER_FILE)
    vocab = tokenizer.get_vocab_size()
    return Experiment(cfg, None, MixtureSplit([p.split for p in parts]), None, vocab, tokenizer, components=parts)
