"""Everything a run needs before the first step: data, class split, tokenizer, samplers.

Bad data and impossible settings fail here, before any worker or Ray actor starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distmeta.config import Config
from distmeta.errors import DataError
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

    def sampler(self, split: str = "train", ways: int | None = None, shots: int | None = None,
                queries: int | None = None, seed: int | None = None) -> Sampler:
        """Sampler over one split's classes (or sinusoid tasks), episode shape from config unless given."""
        d = self.cfg.data
        shots = shots or d.shots
        queries = queries or d.queries
        seed = self.cfg.seed if seed is None else seed
        if d.is_regression:
            return SinusoidSampler(d.sinusoid, shots, queries, seed, split)
        classes = getattr(self.split, split)
        return EpisodeSampler(self.data.rows_by_class(), classes, ways or d.ways, shots, queries, seed, split)

    def worker_args(self) -> dict[str, Any]:
        """What a Worker is built from (sent once per actor, never per step)."""
        return {"token_ids": self.token_ids, "vocab_size": self.vocab_size}


def min_examples_per_class(cfg: Config) -> int:
    """Enough rows per class for training episodes and every evaluation setting."""
    need = cfg.data.shots + cfg.data.queries
    for _, shots in cfg.eval.settings:
        need = max(need, shots + cfg.eval.queries)
    return need


def prepare_experiment(cfg: Config, run_dir: Path | None = None, reuse_saved: bool = False) -> Experiment:
    """Load and check the data, split classes, build the tokenizer; save split and tokenizer to ``run_dir``.

    With ``reuse_saved`` (resume, eval) the run's saved split and tokenizer are used as they are.
    """
    if cfg.data.is_regression:
        return Experiment(cfg)
    from distmeta.data import check_ways, load_source, load_split, make_split, save_split, usable_classes
    from distmeta.text import encode, load_pretrained_tokenizer, load_tokenizer, save_tokenizer, train_tokenizer

    data = load_source(cfg.data)
    split_path = run_dir / SPLIT_FILE if run_dir is not None else None
    if reuse_saved and split_path is not None and split_path.exists():
        split = load_split(split_path, data)
    else:
        usable = usable_classes(data, min_examples_per_class(cfg), cfg.data.small_classes)
        split = make_split(data, cfg.data.split, cfg.seed, usable)
    ways = {"train": cfg.data.ways, "test": max(w for w, _ in cfg.eval.settings)}
    if split.val:
        ways["val"] = cfg.data.ways
    check_ways(split, ways)

    tok_path = run_dir / TOKENIZER_FILE if run_dir is not None else None
    if cfg.tokenizer.kind == "pretrained":
        from distmeta.models.minilm import minilm_model_dir

        tokenizer = load_pretrained_tokenizer(minilm_model_dir(cfg.model.path))
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
    return Experiment(cfg, data, split, token_ids, tokenizer.get_vocab_size(), tokenizer)
