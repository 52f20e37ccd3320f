"""What the probes share: the default's experiment, prefix cache and trainable suffix.

:mod:`benchmarks.probes.training_probes` and :mod:`benchmarks.probes.finetune_probes` both run the default's encoder (all-MiniLM-L6-v2,
the last 2 layers over distmeta's frozen-prefix cache) outside distmeta's training loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from distmeta.config import load_config
from distmeta.experiment import prepare_experiment
from distmeta.models import build_model
from distmeta.models.hf import masked_mean
from distmeta.models.prefix import open_cache

TRAINED = ("layers.4.", "layers.5.")  # the default's trainable suffix (model.trainable: last:2)


@dataclass
class Probe:
    """The default config's experiment, its prefix cache and a float32 model with the suffix to train."""

    exp: Any
    model: torch.nn.Module
    cache: Any
    first: int  # the first layer the cache does not hold

    @property
    def trained(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.model.named_parameters() if n.startswith(TRAINED)]

    def embed(self, rows: np.ndarray, train: bool = False) -> Tensor:
        """L2-normalised mean-pooled embeddings of corpus ``rows`` (the suffix in training mode if ``train``)."""
        x = self.cache.batch(self.exp.corpus.global_rows(0, rows))
        mask = (x != 0).any(-1)
        for layer in self.model.layers[self.first:]:
            torch.nn.Module.train(layer, train)  # HFEncoder.train() pins eval mode; the layers take it
        return F.normalize(masked_mean(self.model.run_layers(x, mask, self.first), mask), dim=-1)

    def classes(self, split: str) -> list[np.ndarray]:
        """The corpus rows of each class of the ``split`` ("train", "val" or "test")."""
        by_class = self.exp.data.rows_by_class()
        return [by_class[c] for c in getattr(self.exp.split, split)]


def default_probe(overrides: list[str] | None = None) -> Probe:
    """Set up the default configuration (``configs/default.yaml``) as ``make train`` would, seeded.

    ``overrides`` (``key=value``) point it elsewhere, e.g. at another corpus of the quality suite.
    """
    torch.manual_seed(0)
    cfg = load_config("configs/default.yaml", ["run.progress=false", *(overrides or [])])
    exp = prepare_experiment(cfg)
    model = build_model(cfg, exp.vocab_size, cfg.data.ways).float()
    return Probe(exp, model, open_cache(Path(exp.prefix["path"])), exp.prefix["layers"])


def episode(rng: np.random.Generator, classes: list[np.ndarray], ways: int, shots: int,
            queries: int) -> tuple[np.ndarray, np.ndarray]:
    """Support and query rows of one episode, class by class (``ways`` classes of ``classes``)."""
    picks = [rng.choice(classes[c], shots + queries, replace=False) for c in rng.choice(len(classes), ways, False)]
    return np.concatenate([p[:shots] for p in picks]), np.concatenate([p[shots:] for p in picks])
