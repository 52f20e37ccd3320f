"""What-if probes of the default's meta-training on ICD-10-CM, in a plain PyTorch loop.

The default (cosine ProtoNet on all-MiniLM-L6-v2, the last 2 layers trained on 10-way 5-shot
episodes over the frozen-prefix cache, Adam 3e-5 with warm-up and cosine decay, meta-batch 4,
temperature 10) written out as a short single-process loop on distmeta's own split and cache,
so a change to the recipe can be tried in minutes and judged on meta-validation (200 fixed
5-way 1-shot episodes of the validation sections, 10 queries, every 25 steps). It reproduces
the default's plateau; these are the changes it measured beside it:

- ``--dropout 0.1``: the encoder's dropout on in the trained layers (transformers' training
  mode; distmeta keeps encoders in eval mode so meta-gradients do not depend on an RNG).
- ``--temperature 5`` / ``30``: a softer or sharper starting temperature.
- ``--episodes categories``: training episodes over ICD-10-CM categories (the 3-character
  codes within the training sections, those with >= 10 descriptions) instead of sections.
- ``--episodes mixed``: every other training episode over categories.
- ``--ways 5 --shots 1``: training episodes of the test shape instead of 10-way 5-shot.
- ``--extra-corpora wordnet-topics debian-sections fortunes``: half the training episodes
  (``--extra-share``) drawn from the other corpora's training classes, each over its own prefix
  cache, the encoder shared (a broader task distribution; validation stays on ICD-10-CM).
- ``--ema 0.9``: also validate an exponential moving average of the trained weights
  (weight averaging along the trajectory).

    .venv/bin/python -m benchmarks.probes.training_probes [--steps 150] [--dropout 0.1] [--temperature 10]
        [--episodes sections|categories|mixed] [--ways 10] [--shots 5] [--ema 0.9]
        [--extra-corpora NAME ...] [--extra-share 0.5]
"""
from __future__ import annotations

import argparse
import math
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.corpora import corpora_dir, corpus_overrides
from benchmarks.probes.common import Probe, default_probe, episode
from distmeta.data.icd10cm import build_rows

META_BATCH, QUERIES = 4, 10


def category_classes(train_rows: np.ndarray, texts, min_rows: int = 10) -> list[np.ndarray]:
    """The training rows grouped by ICD-10-CM category (3-character code), categories with >= ``min_rows`` rows."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import simple_icd_10_cm as cm
    codes, seen = [], set()
    for code in dict.fromkeys(cm.get_all_codes(with_dots=True)):  # the row order of distmeta.data.icd10cm
        if not cm.is_category_or_subcategory(code) or cm.is_extended_subcategory(code):
            continue
        block = next((a for a in cm.get_ancestors(code) if cm.is_block(a)), None)
        text = " ".join(cm.get_description(code).split())
        if block is None or not text or (text, block) in seen:
            continue
        seen.add((text, block))
        codes.append(code)
    rows_texts, _ = build_rows()
    if len(codes) != len(rows_texts) or any(texts[int(r)] != rows_texts[int(r)] for r in train_rows[:200]):
        raise SystemExit("the corpus's rows are not in simple_icd_10_cm's code order: categories unavailable")
    groups: dict[str, list[int]] = {}
    for r in train_rows:
        groups.setdefault(codes[r][:3], []).append(int(r))
    return [np.array(v) for _, v in sorted(groups.items()) if len(v) >= min_rows]


def parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--temperature", type=float, default=10.0)
    ap.add_argument("--episodes", choices=["sections", "categories", "mixed"], default="sections")
    ap.add_argument("--ways", type=int, default=10, help="training episodes' ways")
    ap.add_argument("--shots", type=int, default=5, help="training episodes' shots")
    ap.add_argument("--extra-corpora", nargs="*", default=[], help="also train on these quality-suite corpora's "
                    "training classes (python -m benchmarks.corpora builds them)")
    ap.add_argument("--extra-share", type=float, default=0.5, help="the share of training episodes drawn from them")
    ap.add_argument("--ema", type=float, default=0.0, help="also validate an exponential moving average of the trained weights")
    return ap


def loss_acc(source: Probe, support: np.ndarray, query: np.ndarray, ways: int, shots: int, queries: int, train: bool,
             temperature: Tensor | float) -> tuple[Tensor, float]:
    """Cosine ProtoNet loss and accuracy of one episode of ``source``'s corpus rows."""
    e = source.embed(np.concatenate([support, query]), train)
    protos = F.normalize(e[:len(support)].view(ways, shots, -1).mean(1), dim=-1)
    logits = temperature * e[len(support):] @ protos.T
    y = torch.arange(ways).repeat_interleave(queries)
    return F.cross_entropy(logits, y), (logits.argmax(-1) == y).float().mean().item()


@torch.no_grad()
def validate(probe: Probe, val: list[np.ndarray]) -> float:
    """Meta-validation accuracy (%): 200 fixed 5-way 1-shot episodes of the validation sections."""
    rng = np.random.default_rng(123)
    return 100 * float(np.mean([loss_acc(probe, *episode(rng, val, 5, 1, QUERIES), 5, 1, QUERIES, False, 10.0)[1]
                                for _ in range(200)]))


def swapped(trained: list[torch.nn.Parameter], values: list[Tensor], fn: Callable[[], float]) -> float:
    """``fn()`` with the trained parameters temporarily replaced by ``values``."""
    saved = [p.detach().clone() for p in trained]
    with torch.no_grad():
        for p, v in zip(trained, values):
            p.copy_(v)
    try:
        return fn()
    finally:
        with torch.no_grad():
            for p, v in zip(trained, saved):
                p.copy_(v)


def meta_batch_backward(args: argparse.Namespace, rng: np.random.Generator, probe: Probe, sections: list[np.ndarray],
                        cats: list[np.ndarray], extra: list[Probe], log_t: Tensor) -> None:
    """Accumulate the mean loss of one meta-batch of training episodes into the gradients (temperature ``exp(log_t)``)."""
    for i in range(META_BATCH):
        use_cats = args.episodes == "categories" or (args.episodes == "mixed" and i % 2)
        classes, queries, source = (cats, 5, probe) if use_cats else (sections, QUERIES, probe)
        if extra and rng.random() < args.extra_share:
            source = extra[rng.integers(len(extra))]
            classes = source.classes("train")
        support, query = episode(rng, classes, args.ways, args.shots, queries)
        loss = loss_acc(source, support, query, args.ways, args.shots, queries, True, log_t.exp())[0]
        (loss / META_BATCH).backward()


def main() -> None:
    """Meta-train the default's suffix with the changes the flags ask for, validating every 25 steps."""
    args = parser().parse_args()
    probe = default_probe()
    exp, model = probe.exp, probe.model
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = args.dropout
    sections, val = probe.classes("train"), probe.classes("val")
    cats = category_classes(np.concatenate(sections), exp.data.texts) if args.episodes != "sections" else []
    extra = [default_probe(corpus_overrides(c, corpora_dir())) for c in args.extra_corpora]
    for other in extra:
        other.model = model  # one encoder; each corpus its own prefix cache and rows
    trained = probe.trained
    log_t = torch.nn.Parameter(torch.tensor(math.log(args.temperature)))
    opt = torch.optim.Adam([*trained, log_t], lr=args.lr)
    ema = [p.detach().clone() for p in trained]
    print(f"{vars(args)}: frozen encoder, meta-validation {validate(probe, val):.2f}", flush=True)
    rng, t0, best = np.random.default_rng(0), time.time(), 0.0
    for step in range(1, args.steps + 1):
        scale = min(1.0, step / 10) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in opt.param_groups:
            group["lr"] = args.lr * scale
        opt.zero_grad()
        meta_batch_backward(args, rng, probe, sections, cats, extra, log_t)
        opt.step()
        with torch.no_grad():
            for e, p in zip(ema, trained):
                e.lerp_(p, 1 - args.ema)
        if step % 25 == 0:
            acc = validate(probe, val)
            best = max(best, acc)
            line = f"step {step}: meta-validation {acc:.2f} (best {best:.2f})"
            if args.ema:
                line += f", weight average {swapped(trained, ema, lambda: validate(probe, val)):.2f}"
            print(f"{line}, {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
