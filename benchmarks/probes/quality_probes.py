"""Test-time variants of a trained run, scored on the meta-test's own held-out episodes.

Given a run directory of a ProtoNet-style run on a pretrained encoder (``best.safetensors``
or a checkpoint's parameters), this prints cosine nearest-centroid accuracy ± 95% CI on the
same ``--episodes`` test episodes that ``distmeta train`` meta-tests on, for:

* ``frozen`` / ``meta-trained``: the encoder before and after meta-training (the two figures
  ``make train`` prints);
* ``concat a``: the normalised frozen and meta-trained embeddings side by side, the frozen
  one weighted ``sqrt(a)`` (a feature ensemble);
* ``wise a``: the weights interpolated, ``a * meta-trained + (1 - a) * frozen`` (WiSE-FT);
* ``cl2n``: each encoder's embeddings centred by the mean over meta-train episodes, then
  L2-normalised (SimpleShot's CL2N), for the frozen and the meta-trained encoder;
* ``transductive``: 3 soft k-means steps over each episode's queries
  (:func:`distmeta.baselines.transductive_accuracy`, what ``eval.transductive=3`` scores),
  for the frozen and the meta-trained encoder.

It answers "does any cheap test-time use of the meta-trained encoder beat plain
nearest centroid", and "how strong is the frozen encoder with centring" (a stronger
baseline than the one the meta-test prints).

    .venv/bin/python -m benchmarks.probes.quality_probes runs/default [--params runs/default/best.safetensors]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.numpy import load_file

from distmeta.algorithms.protonet import centroid_logits
from distmeta.baselines import transductive_accuracy
from distmeta.config import load_config
from distmeta.training.evaluation import mean_ci95
from distmeta.experiment import prepare_experiment
from distmeta.worker import Worker

ALPHAS = (0.3, 0.5, 0.7)
WISE = (0.5, 0.7, 0.85)


def accuracy(batch: dict[str, torch.Tensor], ways: int, f=lambda x: x) -> str:
    """Cosine nearest-centroid accuracy ± 95% CI over the batch's episodes, features mapped by ``f``."""
    logits = centroid_logits(f(batch["support_f"]), batch["support_y"], f(batch["query_f"]), ways, "cosine")
    per_episode = (logits.argmax(-1) == batch["query_y"]).double().mean(-1).tolist()
    mean, ci = mean_ci95(per_episode)
    return f"{100 * mean:.2f} ± {100 * ci:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a run directory (its config.yaml, split.json, tokenizer.json)")
    ap.add_argument("--params", type=Path, help="meta-trained parameters (default: the run's best.safetensors)")
    ap.add_argument("--episodes", type=int, default=600)
    args = ap.parse_args()
    cfg = load_config(args.run / "config.yaml", ["resources.workers=0"])
    exp = prepare_experiment(cfg, args.run, reuse_saved=True)
    worker = Worker(cfg, **exp.worker_args())
    frozen = {n: t.numpy() for n, t in worker.initial_meta.items()}
    tuned = load_file(str(args.params or args.run / "best.safetensors"))
    params = {"frozen": frozen, "meta-trained": tuned}
    params.update({f"wise {a}": {n: (a * tuned[n] + (1 - a) * v).astype(v.dtype) for n, v in frozen.items()}
                   for a in WISE})

    def features(name: str, specs: list) -> dict[str, torch.Tensor]:
        # The same per-example feature bank the meta-test uses (one encoding per example and parameter set).
        return worker._feature_batch(worker.algorithm, worker._to_device(params[name]), specs, name)

    train = exp.sampler("train", ways=5, shots=5, queries=15)
    train_specs = [train.sample(1, i) for i in range(100)]
    means = {}
    for name in ("frozen", "meta-trained"):
        b = features(name, train_specs)
        means[name] = torch.cat([b["support_f"].flatten(0, 1), b["query_f"].flatten(0, 1)]).mean(0)
    for ways, shots in [tuple(s) for s in cfg.eval.settings]:
        sampler = exp.sampler("test", ways=ways, shots=shots, queries=cfg.eval.queries)
        specs = [sampler.sample(0, i) for i in range(args.episodes)]
        feats = {name: features(name, specs) for name in params}
        print(f"\n{ways}-way {shots}-shot, {args.episodes} test episodes (cosine nearest centroid)")
        for name in params:
            print(f"  {name:18} {accuracy(feats[name], ways)}")
        for name in ("frozen", "meta-trained"):
            print(f"  {'cl2n ' + name:18} {accuracy(feats[name], ways, lambda x, m=means[name]: x - m)}")
        for name in ("frozen", "meta-trained"):
            b = feats[name]
            per_episode = transductive_accuracy(b["support_f"], b["support_y"], b["query_f"], b["query_y"], ways, 3)
            mean, ci = mean_ci95(per_episode.tolist())
            print(f"  {'transductive ' + name:18} {100 * mean:.2f} ± {100 * ci:.2f}")
        for a in ALPHAS:
            both = {k: torch.cat([a ** 0.5 * F.normalize(feats["frozen"][k], dim=-1),
                                  (1 - a) ** 0.5 * F.normalize(feats["meta-trained"][k], dim=-1)], -1)
                    for k in ("support_f", "query_f")}
            both.update(support_y=feats["frozen"]["support_y"], query_y=feats["frozen"]["query_y"])
            print(f"  {f'concat {a}':18} {accuracy(both, ways)}")


if __name__ == "__main__":
    main()
