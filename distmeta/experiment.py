"""Everything a run needs before the first step: sources, class splits, tokenizer, corpus, samplers.

An experiment is a list of one or more sources: ``data.*`` itself, or each entry of
``data.mixture`` (a single source is the case of one). Each text source is loaded,
checked and split on its own; one tokenizer serves them all and their rows form one
:class:`~distmeta.text.corpus.TokenCorpus`, so a worker has one data path whatever the
number of sources. Bad data and impossible settings fail here, before any worker or Ray
actor starts.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from distmeta.config import Config, DataConfig
from distmeta.errors import ConfigError, DataError
from distmeta.files import SPLIT_FILE, TOKENIZER_FILE
from distmeta.tasks.sampler import (
    EpisodeSampler,
    MixtureSampler,
    Sampler,
    SinusoidSampler,
    component_seed,
)


@dataclass
class Source:
    """One source of the task distribution: its data settings, weight, and (text) rows and class split."""

    cfg: DataConfig
    weight: float = 1.0
    data: Any = None  # LabelledText; None for sinusoid families
    split: Any = None  # ClassSplit


@dataclass
class Experiment:
    """A prepared task distribution: what the driver samples from and what workers materialise.

    Attributes:
        cfg: the run's config.
        sources: one per ``data.mixture`` entry, or ``[data.*]`` without a mixture.
        corpus: every text source's token ids (source ``c``'s rows from ``corpus.starts[c]``).
        vocab_size: the tokenizer's vocabulary size.
        tokenizer: the tokenizer (trained on the sources' meta-train rows, or the pretrained one).
        prefix: the frozen-prefix cache workers open (path, layers, rows), or None.
    """

    cfg: Config
    sources: list[Source] = field(default_factory=list)
    corpus: Any = None  # TokenCorpus for text sources
    vocab_size: int = 0
    tokenizer: Any = None
    prefix: dict[str, Any] | None = None

    @property
    def data(self) -> Any:
        """The corpus of a single-source experiment (None with several sources, or none)."""
        return self.sources[0].data if len(self.sources) == 1 else None

    @property
    def split(self) -> Any:
        """The class split of a single source; with several, a view whose ``val`` is empty unless every source has one."""
        return self.sources[0].split if len(self.sources) == 1 else SourcesSplit([s.split for s in self.sources])

    def sampler(self, split: str = "train", ways: int | None = None, shots: int | None = None,
                queries: int | None = None, seed: int | None = None) -> Sampler:
        """Sampler over one split's classes (or sinusoid tasks); episode shape from each source's config unless given.

        The ``"train"`` split draws each step's ways / shots from ``data.ways_range`` /
        ``data.shots_range`` when set (and not given here); validation and test keep fixed shapes.
        With ``data.mixture`` each task's source is drawn by weight (:class:`MixtureSampler`).
        """
        seed = self.cfg.seed if seed is None else seed
        mixture = self.cfg.data.mixture is not None
        samplers = [self._source_sampler(c, split, ways, shots, queries, component_seed(seed, c) if mixture else seed)
                    for c in range(len(self.sources))]
        if not mixture:
            return samplers[0]
        return MixtureSampler(samplers, [s.weight for s in self.sources], seed, split)

    def _source_sampler(self, c: int, split: str, ways: int | None, shots: int | None, queries: int | None,
                        seed: int) -> Sampler:
        """Source ``c``'s own sampler (its shape unless ways/shots/queries are given)."""
        src, d = self.sources[c], self.sources[c].cfg
        train = split == "train"
        s, q = shots or d.shots, queries or d.queries
        if d.is_regression:
            return SinusoidSampler(d.sinusoid, s, q, seed, split)
        return EpisodeSampler(src.data.rows_by_class(), getattr(src.split, split), ways or d.ways, s, q, seed, split,
                              ways_range=d.ways_range if train and ways is None else None,
                              shots_range=d.shots_range if train and shots is None else None)

    def worker_args(self) -> dict[str, Any]:
        """What a Worker is built from (sent once per actor, never per step): ``corpus``, ``vocab_size``, ``prefix_cache``."""
        return {"corpus": self.corpus, "vocab_size": self.vocab_size, "prefix_cache": self.prefix}


class SourcesSplit:
    """The class splits of several sources; a split is non-empty when every source has classes in it."""

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts

    def __getattr__(self, split: str) -> list[list[int]]:
        if split not in ("train", "val", "test"):
            raise AttributeError(split)
        lists = [getattr(p, split) for p in self.__dict__["parts"]]
        return lists if all(lists) else []


def min_examples_per_class(cfg: Config, data: DataConfig | None = None) -> int:
    """Enough rows per class of a source (``data``, default ``cfg.data``) for its training episodes (their largest
    shots), validation and every evaluation setting."""
    data = data or cfg.data
    need = max(data.shots, data.train_shots()) + data.queries
    for _, shots in cfg.eval.settings:
        need = max(need, shots + cfg.eval.queries)
    return need


def split_file(cfg: Config, c: int) -> str:
    """The run-directory file of source ``c``'s class split: ``split.json``, ``split_<c>.json`` in a mixture."""
    return SPLIT_FILE if cfg.data.mixture is None else f"split_{c}.json"


def _named(cfg: Config, c: int, err: DataError) -> DataError:
    """``err`` prefixed with the mixture source it is about (unchanged without a mixture)."""
    if cfg.data.mixture is None:
        return err
    return DataError(f"data.mixture.{c} ({cfg.data.mixture[c].source}): {err}")


def _load_source(cfg: Config, c: int, src: Source, run_dir: Path | None, reuse_saved: bool) -> None:
    """Load source ``c``'s rows and split its classes (the saved split with ``reuse_saved``); check its ways."""
    from distmeta.data import (
        check_ways,
        load_source,
        load_split,
        make_split,
        usable_classes,
    )

    d = src.cfg
    src.data = load_source(d)
    path = run_dir / split_file(cfg, c) if run_dir is not None else None
    if reuse_saved and path is not None and path.exists():
        src.split = load_split(path, src.data)
    else:
        usable = usable_classes(src.data, min_examples_per_class(cfg, d), d.small_classes)
        src.split = make_split(src.data, d.split, cfg.seed, usable)
    ways = {"train": d.train_ways(), "test": max(w for w, _ in cfg.eval.settings)}  # largest of each
    if src.split.val:
        ways["val"] = d.ways
    if d.ways_range and len(src.split.train) < d.ways_range[1]:
        raise DataError(f"split 'train' has {len(src.split.train)} classes, fewer than the largest training ways "
                        f"{d.ways_range[1]} (data.ways_range={list(d.ways_range)}); lower it or give "
                        "that split more classes (data.split)")
    try:
        check_ways(src.split, ways)
    except DataError as err:
        raise _named(cfg, c, err) from None


def _tokenizer(cfg: Config, sources: list[Source], run_dir: Path | None, reuse_saved: bool) -> Any:
    """The pretrained encoder's tokenizer, the run's saved one (``reuse_saved``), or one trained on every source's
    meta-train rows (source by source, rows in corpus order)."""
    from distmeta.text import load_pretrained_tokenizer, load_tokenizer, train_tokenizer
    from distmeta.text.tokenized_cache import cached_tokenizer

    tok_path = run_dir / TOKENIZER_FILE if run_dir is not None else None
    if cfg.tokenizer.kind == "pretrained":
        from distmeta.models import pretrained_dir

        return load_pretrained_tokenizer(pretrained_dir(cfg))
    if reuse_saved and tok_path is not None and tok_path.exists():
        return load_tokenizer(tok_path)
    t = cfg.tokenizer
    texts = TrainTexts(sources)
    key = hashlib.sha256(json.dumps([t.model_dump(), texts.key()]).encode()).hexdigest()[:24]
    return cached_tokenizer(key, lambda: train_tokenizer(texts, t.kind, t.vocab_size, t.min_frequency, t.lowercase))


class TrainTexts:
    """The meta-train texts of every source (rows in corpus order, source by source), streamed in batches."""

    def __init__(self, sources: list[Source]) -> None:
        from distmeta.text.tokenized_cache import as_text_column

        self.parts = []
        for src in sources:
            rows = np.sort(np.concatenate([src.data.rows_by_class()[k] for k in src.split.train]))
            column = as_text_column(src.data.texts)
            self.parts.append((column.fingerprint(), rows, column.select(rows)))

    def key(self) -> list[str]:
        """Identity of these texts: each source's corpus fingerprint and meta-train rows."""
        return [f"{fp}:{hashlib.sha256(rows.tobytes()).hexdigest()}" for fp, rows, _ in self.parts]

    def __len__(self) -> int:
        return sum(len(texts) for _, _, texts in self.parts)

    def batches(self, size: int) -> Iterator[list[str]]:
        """The texts in order, at most ``size`` at a time."""
        for _, _, texts in self.parts:
            yield from texts.batches(size)


def _tokenise(cfg: Config, c: int, src: Source, tokenizer: Any) -> Any:
    """Source ``c``'s rows as a compact ragged corpus (tokenised once, then from the on-disk cache).

    A row that encodes to nothing but the tokens the tokenizer adds to every text (``[CLS]``,
    ``[SEP]``: as many as an empty text gets) is refused with its row number.
    """
    from distmeta.data.columns import rows_text
    from distmeta.text.tokenized_cache import tokenize_corpus

    corpus = tokenize_corpus(tokenizer, src.data.texts, cfg.data.max_length)
    from tokenizers import Tokenizer

    bare = Tokenizer.from_str(tokenizer.to_str())
    bare.no_padding()
    added = len(bare.encode("").ids)  # the special tokens of an empty text
    empty = np.flatnonzero(corpus.lengths() <= added).tolist() if len(corpus) else []
    if empty:
        where = f"data source {src.cfg.source!r}" if cfg.data.mixture is None else \
            f"data.mixture.{c} ({src.cfg.source})"
        raise DataError(f"{where}: {len(empty)} texts encode to no token but the tokenizer's special tokens (rows "
                        f"{rows_text(empty)}, counted from 0, e.g. {src.data.texts[empty[0]]!r}); remove or fix them")
    return corpus


def prepare_experiment(cfg: Config, run_dir: Path | None = None, reuse_saved: bool = False) -> Experiment:
    """Load and check every source, split its classes, build the tokenizer and the corpus; save splits and tokenizer.

    Args:
        cfg: the run's config (``data.mixture`` entries are the sources; without one, ``data.*``).
        run_dir: where ``split.json`` (``split_<c>.json`` per mixture source) and ``tokenizer.json`` are saved.
        reuse_saved: use the run's saved splits and tokenizer as they are (resume, eval).
    Returns:
        The prepared experiment, its frozen-prefix cache built when the model has one.
    """
    from distmeta.data import save_split
    from distmeta.text import save_tokenizer
    from distmeta.text.corpus import TokenCorpus

    weights = [m.weight for m in cfg.data.mixture] if cfg.data.mixture else [1.0]
    sources = [Source(d, w) for d, w in zip(cfg.data.components(), weights)]
    if cfg.data.is_regression:
        return Experiment(cfg, sources)
    for c, src in enumerate(sources):
        _load_source(cfg, c, src, run_dir, reuse_saved)
    tokenizer = _tokenizer(cfg, sources, run_dir, reuse_saved)
    corpus = TokenCorpus.concat([_tokenise(cfg, c, src, tokenizer) for c, src in enumerate(sources)])
    if run_dir is not None:
        for c, src in enumerate(sources):
            save_split(src.split, src.data, run_dir / split_file(cfg, c))
        save_tokenizer(tokenizer, run_dir / TOKENIZER_FILE)
        tok_file = run_dir / TOKENIZER_FILE  # nobody else writes what a run reads back (security.not_yours)
        tok_file.chmod(tok_file.stat().st_mode & 0o755)
    exp = Experiment(cfg, sources, corpus, tokenizer.get_vocab_size(), tokenizer)
    exp.prefix = prepare_prefix_cache(exp)
    return exp


def prepare_prefix_cache(exp: Experiment) -> dict[str, Any] | None:
    """Build (or find) the frozen-prefix cache of a pretrained encoder before any worker starts.

    It covers every row of every source's split classes. Returns what workers need to open it
    (``path``, ``layers``, ``rows``: corpus rows), or None when ``model.prefix_cache`` is off, the
    model is not a pretrained layer stack, or every layer moves (meta-trained or adapted).
    """
    from distmeta.config import PRETRAINED_MODELS

    cfg = exp.cfg
    if cfg.model.name not in PRETRAINED_MODELS or cfg.model.prefix_cache is False or exp.corpus is None:
        return None
    import torch

    from distmeta.algorithms import build_algorithm
    from distmeta.models import build_model
    from distmeta.models.prefix import (
        default_cache_dir,
        frozen_prefix_layers,
        open_or_build,
    )

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
    rows = np.sort(np.concatenate([exp.corpus.global_rows(c, src.data.rows_by_class()[k])
                                   for c, src in enumerate(exp.sources)
                                   for part in ("train", "val", "test") for k in getattr(src.split, part)]))
    cache = open_or_build(module, layers, exp.corpus, rows, default_cache_dir(cfg), progress=cfg.run.progress)
    print(f"prefix cache: {layers} frozen layers of {module.num_layers}, {len(rows)} examples, "
          f"{cache.nbytes / 2**20:.0f} MiB shared per node ({cache.path})", flush=True)
    return {"path": str(cache.path), "layers": layers, "rows": rows}
