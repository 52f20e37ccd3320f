"""Test-time fine-tuning of the encoder's last layers on each episode's support set, probed on ICD-10-CM.

For each of ``--episodes`` fixed 5-way K-shot episodes of the meta-validation sections (10
queries per class), the trainable suffix of all-MiniLM-L6-v2 (the last 2 layers over
distmeta's frozen-prefix cache, as in the default) starts from the pretrained weights, or
from ``--params`` (a run's ``best.safetensors``), and is fine-tuned on the support set alone:
a cosine classifier initialised from the support prototypes (temperature 10), cross-entropy
on the support examples, Adam for ``--steps`` steps (``--lr`` for the layers, ``--head-lr``
for the classifier). Queries are then classified by cosine nearest centroid of the
fine-tuned encoder, and by the fine-tuned classifier. Step 0 is plain nearest centroid, so
each line compares with the unadapted encoder on the same episodes.

It answers "does fine-tuning the encoder itself (not only a head) on the support set at
test time beat nearest centroid", for the frozen and the meta-trained encoder alike.

    .venv/bin/python -m benchmarks.probes.finetune_probes [--params runs/default/best.safetensors]
        [--shots 1] [--steps 10] [--lr 1e-4] [--head-lr 1e-2] [--episodes 200]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor

from benchmarks.probes.common import TRAINED, default_probe, episode
from distmeta.training.evaluation import mean_ci95

WAYS, QUERIES, TEMPERATURE = 5, 10, 10.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, help="meta-trained parameters to start from (default: pretrained)")
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--head-lr", type=float, default=1e-2)
    ap.add_argument("--episodes", type=int, default=200)
    args = ap.parse_args()
    probe = default_probe()
    model, embed = probe.model, probe.embed
    if args.params:
        loaded = load_file(str(args.params))
        names = [n for n, _ in model.named_parameters() if n.startswith(TRAINED)]
        if not set(names) <= set(loaded):
            raise SystemExit(f"{args.params} lacks {sorted(set(names) - set(loaded))[:3]}")
        model.load_state_dict({n: loaded[n] for n in model.state_dict() if n in loaded}, strict=False)
    trained = probe.trained
    start = [p.detach().clone() for p in trained]
    val = probe.classes("val")

    def accuracy(logits: Tensor, y: Tensor) -> float:
        return (logits.argmax(-1) == y).float().mean().item()

    def adapt_and_score(support: np.ndarray, query: np.ndarray) -> list[float]:
        with torch.no_grad():
            for p, v in zip(trained, start):
                p.copy_(v)
        sy = torch.arange(WAYS).repeat_interleave(args.shots)
        qy = torch.arange(WAYS).repeat_interleave(QUERIES)
        with torch.no_grad():
            head = torch.nn.Parameter(F.normalize(embed(support).view(WAYS, args.shots, -1).mean(1), dim=-1))
        opt = torch.optim.Adam([{"params": trained, "lr": args.lr}, {"params": [head], "lr": args.head_lr}])
        for _ in range(args.steps):
            opt.zero_grad()
            F.cross_entropy(TEMPERATURE * embed(support) @ F.normalize(head, dim=-1).T, sy).backward()
            opt.step()
        with torch.no_grad():
            s, q = embed(support), embed(query)
            protos = F.normalize(s.view(WAYS, args.shots, -1).mean(1), dim=-1)
            return [accuracy(q @ protos.T, qy), accuracy(q @ F.normalize(head, dim=-1).T, qy)]

    rng, t0, scores = np.random.default_rng(123), time.time(), []
    for _ in range(args.episodes):
        scores.append(adapt_and_score(*episode(rng, val, WAYS, args.shots, QUERIES)))
    out = np.array(scores)
    for i, name in enumerate(("nearest centroid", "fine-tuned classifier")):
        mean, ci = mean_ci95(out[:, i].tolist())
        print(f"{vars(args)}: {name} {100 * mean:.2f} ± {100 * ci:.2f}, {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
