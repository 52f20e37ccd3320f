"""Small shared builders for tests: tiny configs and a tiny labelled CSV."""
from __future__ import annotations

import csv
import random
from pathlib import Path

QUIET = ["resources.workers=0", "run.progress=false", "run.checkpoint_every=0", "run.eval_every=0", "eval.baseline=false"]

SINUSOID_TINY = [
    "resources.workers=0", "data.source=sinusoid", "model.name=mlp", "algorithm.name=maml", "data.shots=5", "data.queries=5",
    "train.steps=3", "train.meta_batch=8", "algorithm.group_size=2", "eval.episodes=10", "eval.batch=5",
]

WORDS = {
    "sport": "ball goal team match score player coach league",
    "food": "bread cheese apple soup salad pasta spice sugar",
    "music": "guitar piano song melody drum chord tempo choir",
    "space": "planet orbit rocket star comet galaxy moon probe",
    "law": "court judge verdict appeal statute lawyer trial jury",
    "sea": "wave tide coral ship harbor anchor sailor reef",
    "farm": "tractor wheat barn cattle harvest plough field hay",
    "code": "python compiler bug function loop variable syntax commit",
}


def write_tiny_csv(path: Path, per_class: int = 20, seed: int = 0) -> Path:
    """Eight topics, ``per_class`` short texts each: learnable, and quick to tokenise."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for label, words in WORDS.items():
            vocab = words.split()
            for _ in range(per_class):
                w.writerow([" ".join(rng.choice(vocab) for _ in range(5)), label])
    return path


def text_tiny(csv_path: Path) -> list[str]:
    return [
        "resources.workers=0", f"data.source=csv:{csv_path}", "model.name=bag", "model.dim=16", "tokenizer.vocab_size=200",
        "tokenizer.min_frequency=1", "data.ways=3", "data.shots=1", "data.queries=3", "data.split.train=0.625",
        "data.split.val=0", "data.split.test=0.375", "eval.settings=[[3,1]]", "eval.queries=3",
        "train.steps=3", "train.meta_batch=4", "algorithm.group_size=2", "eval.episodes=10", "eval.batch=5",
    ]


def pairwise_tree_sum(values: list[dict]) -> dict:
    """The documented reduction order, written out plainly: split after the largest power of two below the count.

    ``[g0, g1, g2]`` sums as ``(g0 + g1) + g2``; ``[g0, .., g4]`` as ``((g0 + g1) + (g2 + g3)) + g4``.
    """
    if len(values) == 1:
        return values[0]
    half = 1
    while half * 2 < len(values):
        half *= 2
    left, right = pairwise_tree_sum(values[:half]), pairwise_tree_sum(values[half:])
    return {n: left[n] + right[n] for n in left}

