"""What a practitioner gets without meta-training, on the same episodes: the honest baselines.

Given the pooled embeddings of an encoder that was never meta-trained (the pretrained one, or
the from-scratch initialisation), every meta-test also scores:

* ``accuracy`` — the strongest standard use of a sentence encoder: L2-normalised embeddings,
  nearest class centroid by cosine (what sentence-transformers users do);
* ``accuracy_euclidean`` — nearest centroid by squared Euclidean distance on raw embeddings;
* ``accuracy_finetune`` — a classifier fitted on each episode's support set (Baseline++ /
  linear probing): a cosine classifier initialised at the normalised class means, then
  ``FINETUNE_STEPS`` full-batch Adam steps on the support examples' cross-entropy.
* ``accuracy_transductive`` (only with ``eval.transductive`` steps) — cosine nearest centroid
  whose prototypes the episode's unlabelled queries refine by soft k-means
  (:func:`transductive_accuracy`); the meta-trained encoder is scored the same way.

All of them run batched over episodes (``[T, N, D]`` features) with no Python loop per episode.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distmeta.algorithms.protonet import centroid_logits

FINETUNE_STEPS = 100
FINETUNE_LR = 0.01
FINETUNE_SCALE = 10.0  # the cosine classifier's temperature, Baseline++'s usual value
TRANSDUCTIVE_SCALE = 10.0  # the soft assignments' temperature on cosine similarities


def _accuracy(logits: Tensor, y: Tensor) -> Tensor:
    return (logits.argmax(-1) == y).to(torch.float64).mean(-1)


@torch.no_grad()
def centroid_accuracy(support: Tensor, support_y: Tensor, query: Tensor, query_y: Tensor, ways: int,
                      distance: str) -> Tensor:
    """Per-episode accuracy ``[T]`` of nearest-centroid classification (``cosine`` or ``euclidean``)."""
    return _accuracy(centroid_logits(support, support_y, query, ways, distance), query_y)


def finetune_accuracy(support: Tensor, support_y: Tensor, query: Tensor, query_y: Tensor, ways: int,
                      steps: int = FINETUNE_STEPS, lr: float = FINETUNE_LR, scale: float = FINETUNE_SCALE) -> Tensor:
    """Per-episode accuracy ``[T]`` of a cosine classifier fitted on each episode's support set.

    The weights start at the normalised class means (so step 0 is the cosine centroid
    classifier) and take ``steps`` Adam steps on the support cross-entropy, every episode
    independently (their losses are summed, which leaves the per-episode gradients separate).
    """
    s = F.normalize(support.detach().to(torch.float32), dim=-1)
    q = F.normalize(query.detach().to(torch.float32), dim=-1)
    onehot = (support_y.unsqueeze(-1) == torch.arange(ways, device=support_y.device)).to(s.dtype)
    means = onehot.transpose(-2, -1) @ s / onehot.sum(-2).unsqueeze(-1)
    weight = F.normalize(means, dim=-1).clone().requires_grad_(True)  # [T, ways, D]
    opt = torch.optim.Adam([weight], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            logits = scale * s @ F.normalize(weight, dim=-1).transpose(-2, -1)
            loss = F.cross_entropy(logits.flatten(0, -2), support_y.flatten(), reduction="sum") / support_y.shape[-1]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        return _accuracy(q @ F.normalize(weight, dim=-1).transpose(-2, -1), query_y)


@torch.no_grad()
def transductive_accuracy(support: Tensor, support_y: Tensor, query: Tensor, query_y: Tensor, ways: int, steps: int,
                          scale: float = TRANSDUCTIVE_SCALE) -> Tensor:
    """Per-episode accuracy ``[T]`` of cosine nearest centroid with soft k-means prototypes (Ren et al. 2018).

    The prototypes start at the normalised class means of the L2-normalised support
    features (step 0 is the cosine centroid classifier). Each step assigns every query a
    softmax over the classes (``scale`` × cosine) and recomputes each prototype as the mean
    of its support features and its assignment-weighted queries. It uses the whole query set
    of an episode at once (transductive), so it suits batch labelling, not one query at a time.

    Args:
        support, query: ``[T, N, D]`` / ``[T, Q, D]`` pooled features; support_y, query_y: labels.
        ways: classes per episode. steps: refinement steps. scale: the assignment temperature.
    Returns:
        ``[T]`` float64 accuracies.
    """
    s = F.normalize(support.to(torch.float32), dim=-1)
    q = F.normalize(query.to(torch.float32), dim=-1)
    onehot = (support_y.unsqueeze(-1) == torch.arange(ways, device=support_y.device)).to(s.dtype)
    sums, counts = onehot.transpose(-2, -1) @ s, onehot.sum(-2).unsqueeze(-1)  # [T, ways, D], [T, ways, 1]
    protos = F.normalize(sums / counts, dim=-1)
    for _ in range(steps):
        w = torch.softmax(scale * q @ protos.transpose(-2, -1), dim=-1)  # [T, Q, ways]
        protos = F.normalize((sums + w.transpose(-2, -1) @ q) / (counts + w.sum(-2).unsqueeze(-1)), dim=-1)
    return _accuracy(q @ protos.transpose(-2, -1), query_y)


def baseline_metrics(support: Tensor, support_y: Tensor, query: Tensor, query_y: Tensor, ways: int,
                     transductive: int = 0) -> dict[str, Tensor]:
    """All baselines of a batch of episodes' frozen embeddings (``[T, N, D]``), per episode ``[T]``.

    Args:
        support, query: pooled embeddings of the support and query examples.
        support_y, query_y: labels ``0..ways-1``.
        ways: classes per episode.
        transductive: soft k-means steps for ``accuracy_transductive`` (0: not scored).
    Returns:
        ``accuracy`` (cosine centroid), ``accuracy_euclidean``, ``accuracy_finetune``, and
        ``accuracy_transductive`` when ``transductive`` > 0.
    """
    out = {
        "accuracy": centroid_accuracy(support, support_y, query, query_y, ways, "cosine"),
        "accuracy_euclidean": centroid_accuracy(support, support_y, query, query_y, ways, "euclidean"),
        "accuracy_finetune": finetune_accuracy(support, support_y, query, query_y, ways),
    }
    if transductive:
        out["accuracy_transductive"] = transductive_accuracy(support, support_y, query, query_y, ways, transductive)
    return out


def error_reduction(accuracy: float, baseline: float) -> float:
    """Relative error reduction ``1 - (1 - accuracy) / (1 - baseline)`` (negative: worse than the baseline).

    NaN when the baseline makes no errors (accuracy 1): there is no error to reduce, so
    the ratio is undefined (both at 100 % is not a +100 % reduction); shown as ``n/a``.
    """
    if baseline >= 1.0:
        return float("nan")
    return 1.0 - (1.0 - accuracy) / (1.0 - baseline)


__all__ = ["FINETUNE_STEPS", "baseline_metrics", "centroid_accuracy", "error_reduction", "finetune_accuracy",
           "transductive_accuracy"]
