"""The optional supervised stage before episodic meta-training (``pretrain:``).

Whole-class classification over every meta-train class with a cosine classifier
(``temperature * cos(f, w_c)``) trains the meta-trained encoder parameters; the classifier
is then dropped. This is the route Meta-Baseline and "Rethinking few-shot classification:
a good embedding is all you need" show to be strong: it sees every meta-train example with
its true class, where an episode sees a handful. Meta-validation (the run's own episodic
algorithm on the validation classes) every ``pretrain.eval_every`` steps picks the encoder
that episodic meta-training starts from, and stops the stage early after
``pretrain.patience`` validations without improvement.

The stage runs in the driver's process on one in-process :class:`~distmeta.worker.Worker`
(its device: CUDA when the driver has one), with the frozen-prefix cache when the run has
one; the batches are a pure function of (seed, step), so the stage is reproducible.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from distmeta.config import Config
from distmeta.optim import scheduled_lr
from distmeta.training.selection import BestTracker

PRETRAIN_STREAM = 11  # the batches' own random stream, apart from the episode samplers'
INIT_PER_CLASS = 32

Validate = Callable[[dict[str, np.ndarray]], dict[str, float]]


def batch_rows(rows: np.ndarray, seed: int, step: int, size: int) -> np.ndarray:
    """Indices into ``rows`` of step ``step``'s batch: a pure function of (seed, step)."""
    rng = np.random.default_rng([seed, PRETRAIN_STREAM, step])
    return rng.choice(len(rows), size=min(size, len(rows)), replace=False)


def train_rows(exp: Any) -> tuple[np.ndarray, np.ndarray]:
    """Every meta-train row and its class index ``0..C-1`` (in the split's class order)."""
    by_class = exp.data.rows_by_class()
    rows = [np.asarray(by_class[c]) for c in exp.split.train]
    labels = [np.full(len(r), i, dtype=np.int64) for i, r in enumerate(rows)]
    return np.concatenate(rows), np.concatenate(labels)


class Pretrainer:
    """Runs the supervised stage from meta-parameters ``meta`` and returns the selected encoder.

    Args:
        cfg: the run's config (``pretrain`` section, seed, dtype, device).
        exp: the prepared experiment (data, split, token ids, prefix cache).
        validate: meta-validation of a meta-parameter dict (the trainer's episodic validation).
        run_dir: where the stage's best parameters are kept (``pretrain_best.safetensors``).
    """

    def __init__(self, cfg: Config, exp: Any, validate: Validate, run_dir: Any) -> None:
        from distmeta.worker import Worker

        self.cfg, self.p, self.validate = cfg, cfg.pretrain, validate
        self.worker = Worker(cfg, **exp.worker_args(), threads=torch.get_num_threads())
        self.rows, self.labels = train_rows(exp)
        self.classes = len(exp.split.train)
        self.best = BestTracker(run_dir, cfg.pretrain.patience, name="pretrain_")

    @torch.no_grad()
    def _class_means(self, enc: dict[str, Tensor]) -> Tensor:
        """Initial class weights: each class's mean normalised embedding over up to ``INIT_PER_CLASS`` rows.

        Starting at the class means makes step 0 the nearest-centroid classifier, so the first
        encoder updates follow a sensible classifier instead of a random one (which would
        pull the pretrained features apart before the classifier has learnt anything).
        """
        rng = np.random.default_rng([self.cfg.seed, PRETRAIN_STREAM + 1])  # apart from every step's batch
        means = []
        for c in range(self.classes):
            rows = self.rows[self.labels == c]
            pick = rows[rng.permutation(len(rows))[:INIT_PER_CLASS]]
            feats = self.worker.algorithm.model(enc, self.worker.builder.inputs(pick.tolist()), head=False)
            means.append(F.normalize(feats, dim=-1).mean(0))
        return F.normalize(torch.stack(means), dim=-1)

    def _loss(self, enc: dict[str, Tensor], weight: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """Cross-entropy and accuracy of step ``step``'s batch under the cosine classifier."""
        pick = batch_rows(self.rows, self.cfg.seed, step, self.p.batch)
        x = self.worker.builder.inputs(self.rows[pick].tolist())
        y = torch.as_tensor(self.labels[pick], device=weight.device)
        feats = self.worker.algorithm.model(enc, x, head=False)
        logits = self.p.temperature * F.normalize(feats, dim=-1) @ F.normalize(weight, dim=-1).T
        return F.cross_entropy(logits, y), (logits.argmax(-1) == y).float().mean()

    def run(self, meta: dict[str, Tensor], log: Callable[[int, dict[str, float]], None],
            progress: bool = True) -> dict[str, Tensor]:
        """``meta`` with its encoder parameters replaced by the best-validated pretrained ones."""
        from distmeta.progress import progress_bar

        w = self.worker
        own = set(getattr(w.algorithm, "own_meta_names", ()))
        enc = {n: t.detach().to(w.device, w.dtype).clone().requires_grad_() for n, t in meta.items() if n not in own}
        weight = self._class_means(enc).requires_grad_()
        opt = torch.optim.AdamW([{"params": list(enc.values()), "lr": self.p.lr},
                                 {"params": [weight], "lr": self.p.classifier_lr}], weight_decay=self.p.weight_decay)
        base = [g["lr"] for g in opt.param_groups]
        for step in progress_bar(range(self.p.steps), desc="pretrain", unit="step", disable=not progress):
            factor = scheduled_lr(1.0, step, self.p.warmup_steps, "cosine", self.p.steps)
            for g, lr in zip(opt.param_groups, base):
                g["lr"] = lr * factor
            with torch.enable_grad():
                loss, acc = self._loss(enc, weight, step)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            done = step + 1
            if done % 10 == 0 or done == self.p.steps:
                log(done, {"loss": float(loss.detach()), "accuracy": float(acc), "lr": opt.param_groups[0]["lr"]})
            if (self.p.eval_every and done % self.p.eval_every == 0) or done == self.p.steps:
                current = {**meta, **{n: t.detach().cpu() for n, t in enc.items()}}
                val = self.validate({n: t.numpy() for n, t in current.items()})
                log(done, {f"val_{k}": v for k, v in val.items()})
                if self.best.update(done, val, current):
                    break
        best = self.best.best_params()
        return {n: best[n] if best is not None and n in best else t for n, t in meta.items()}


__all__ = ["Pretrainer", "batch_rows", "train_rows"]
