"""Disjoint meta-train / meta-validation / meta-test classes.

Few-shot evaluation is only honest when test classes were never seen in training,
so classes (not rows) are split: by fractions from a seeded permutation, or by
explicit lists of class names. A split is saved by class *name*, so a run can be
resumed or evaluated against the same classes even if class ids were renumbered.
"""
from __future__ import annotations

import difflib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distmeta.config import SplitConfig
from distmeta.data.labelled import LabelledText
from distmeta.errors import DataError

SPLITS = ("train", "val", "test")
_SHOW_CLASSES = 20


@dataclass
class ClassSplit:
    """Class ids per split: disjoint and sorted (normalised on construction)."""

    train: list[int]
    val: list[int]
    test: list[int]

    def __post_init__(self) -> None:
        for name in SPLITS:
            setattr(self, name, sorted(int(c) for c in getattr(self, name)))
        seen: dict[int, str] = {}
        for name in SPLITS:
            for c in getattr(self, name):
                if c in seen:
                    raise DataError(f"class id {c} is in both the {seen[c]!r} and {name!r} splits")
                seen[c] = name

    def names(self, data: LabelledText) -> dict[str, list[str]]:
        """Split -> class names, in class-id order."""
        return {name: [data.class_names[c] for c in getattr(self, name)] for name in SPLITS}

    def to_json(self, data: LabelledText) -> dict[str, list[str]]:
        """The JSON form saved in a run: ``{"train": [names], "val": [...], "test": [...]}``."""
        return self.names(data)


def _list_classes(data: LabelledText, ids: list[int], counts: np.ndarray, limit: int = _SHOW_CLASSES) -> str:
    """``'name' (n), ...`` for the first ``limit`` classes, then how many more."""
    shown = ", ".join(f"{data.class_names[c]!r} ({int(counts[c])})" for c in ids[:limit])
    more = len(ids) - limit
    return shown + (f", ... and {more} more" if more > 0 else "")


def usable_classes(data: LabelledText, min_examples: int, policy: str) -> list[int]:
    """Class ids with at least ``min_examples`` rows (enough for one episode's shots + queries).

    ``policy="error"`` refuses the data when any class is smaller, listing them;
    ``policy="drop"`` warns with the number dropped and returns the rest.
    """
    if policy not in ("error", "drop"):
        raise DataError(f"data.small_classes must be 'error' or 'drop', got {policy!r}")
    counts = data.class_counts()
    small = [c for c in range(data.num_classes) if counts[c] < min_examples]
    keep = [c for c in range(data.num_classes) if counts[c] >= min_examples]
    if not small:
        return keep
    listing = _list_classes(data, small, counts)
    if policy == "error":
        raise DataError(
            f"{data.source}: {len(small)} of {data.num_classes} classes have fewer than {min_examples} examples "
            f"(shots + queries per episode): {listing}. Set data.small_classes=drop to leave them out, "
            "or lower data.shots / data.queries / eval.queries"
        )
    if not keep:
        raise DataError(
            f"{data.source}: no class has at least {min_examples} examples (shots + queries per episode); "
            "lower data.shots / data.queries / eval.queries"
        )
    warnings.warn(
        f"{data.source}: dropped {len(small)} of {data.num_classes} classes with fewer than {min_examples} "
        f"examples (data.small_classes=drop), e.g. {_list_classes(data, small, counts, limit=3)}",
        stacklevel=2,
    )
    return keep


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def _fraction_split(classes: list[int], cfg: SplitConfig, seed: int) -> ClassSplit:
    """Cut a seeded permutation of ``classes`` by the train/val/test fractions.

    Test and train each get at least one class (val may round to none) and train
    takes the remainder, so every class lands in exactly one split whatever the rounding.
    """
    n = len(classes)
    n_test = min(max(1, _round_half_up(n * cfg.test)), max(1, n - 1))
    n_val = _round_half_up(n * cfg.val)
    n_val = min(n_val, max(0, n - n_test - 1))
    n_train = n - n_test - n_val
    if n_train < 1:
        raise DataError(f"{n} usable classes cannot be split into non-empty train and test splits; need at least 2")
    perm = np.random.default_rng(seed).permutation(np.asarray(sorted(classes), dtype=np.int64)).tolist()
    return ClassSplit(
        train=perm[:n_train],
        val=perm[n_train : n_train + n_val],
        test=perm[n_train + n_val :],
    )


def _ids_for_names(data: LabelledText, split: str, names: list[str], usable: set[int]) -> list[int]:
    """Class ids for an explicit ``data.split.<split>_classes`` list; unknown or unusable names refused."""
    field = f"data.split.{split}_classes"
    index = {n: i for i, n in enumerate(data.class_names)}
    unknown = [n for n in names if n not in index]
    if unknown:
        hints = []
        for n in unknown[:5]:
            near = difflib.get_close_matches(n, data.class_names, n=1, cutoff=0.6)
            if near:
                hints.append(f"{n!r} -> did you mean {near[0]!r}?")
        hint = f" ({'; '.join(hints)})" if hints else ""
        raise DataError(f"{field} names classes not in {data.source}: {unknown}{hint}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"{field} lists classes more than once: {repeated}")
    ids = [index[n] for n in names]
    unusable = [data.class_names[c] for c in ids if c not in usable]
    if unusable:
        raise DataError(
            f"{field} names classes that were left out (too few examples, data.small_classes=drop): {unusable}"
        )
    return ids


def _explicit_split(data: LabelledText, cfg: SplitConfig, classes: list[int]) -> ClassSplit:
    """The split given by class names in the config."""
    usable = set(classes)
    lists = {s: list(getattr(cfg, f"{s}_classes") or []) for s in SPLITS}
    owner: dict[str, str] = {}
    overlap: dict[str, list[str]] = {}
    for s in SPLITS:
        for name in dict.fromkeys(lists[s]):
            if name in owner:
                overlap.setdefault(name, [owner[name]]).append(s)
            else:
                owner[name] = s
    if overlap:
        detail = "; ".join(f"{n!r} in {' and '.join(ss)}" for n, ss in overlap.items())
        raise DataError(f"data.split class lists overlap; a class may be in one split only: {detail}")
    ids = {s: _ids_for_names(data, s, lists[s], usable) for s in SPLITS}
    return ClassSplit(train=ids["train"], val=ids["val"], test=ids["test"])


def make_split(data: LabelledText, cfg: SplitConfig, seed: int, classes: list[int] | None = None) -> ClassSplit:
    """Split ``classes`` (default: all) into train / val / test.

    With explicit class lists in ``cfg`` those names are used (and must be among
    ``classes``); otherwise a permutation from ``np.random.default_rng(seed)`` is cut
    by the fractions, so the same seed always gives the same split.
    """
    pool = list(range(data.num_classes)) if classes is None else sorted({int(c) for c in classes})
    bad = [c for c in pool if not 0 <= c < data.num_classes]
    if bad:
        raise DataError(f"class ids {bad[:10]} are not classes of {data.source} (0..{data.num_classes - 1})")
    if any(getattr(cfg, f"{s}_classes") is not None for s in SPLITS):
        return _explicit_split(data, cfg, pool)
    if not pool:
        raise DataError(f"{data.source}: no classes to split")
    return _fraction_split(pool, cfg, seed)


def check_ways(split: ClassSplit, ways_by_split: dict[str, int]) -> None:
    """Refuse a split that cannot fill N-way episodes: each named split needs at least N classes.

    Only the splits in ``ways_by_split`` are checked, so a run without meta-validation
    leaves ``"val"`` out.
    """
    for name, ways in ways_by_split.items():
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; splits are {list(SPLITS)}")
        have = len(getattr(split, name))
        if have < ways:
            raise DataError(
                f"split {name!r} has {have} classes, fewer than data.ways={ways}; "
                "use fewer ways or give that split more classes (data.split)"
            )


def save_split(split: ClassSplit, data: LabelledText, path: Path) -> None:
    """Write the split as JSON class names, atomically (temp file, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(split.to_json(data), f, indent=2, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_split(path: Path, data: LabelledText) -> ClassSplit:
    """Read a split saved by :func:`save_split`, mapping names back to ``data``'s class ids.

    A saved name missing from ``data`` means the data changed since the split was
    made, which would silently mix train and test classes; it is refused.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"split file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"split file {str(path)!r} is not readable JSON: {err}") from None
    if not isinstance(raw, dict) or not all(
        isinstance(raw.get(s, []), list) and all(isinstance(n, str) for n in raw.get(s, [])) for s in SPLITS
    ):
        raise DataError(f"split file {str(path)!r} must map 'train', 'val', 'test' to lists of class names")
    missing_keys = [s for s in ("train", "test") if s not in raw]
    if missing_keys:
        raise DataError(f"split file {str(path)!r} has no {missing_keys} list")
    index = {n: i for i, n in enumerate(data.class_names)}
    missing = [str(n) for s in SPLITS for n in raw.get(s, []) if n not in index]
    if missing:
        shown = missing[:_SHOW_CLASSES]
        more = f" ... and {len(missing) - len(shown)} more" if len(missing) > len(shown) else ""
        raise DataError(
            f"split file {str(path)!r} names classes missing from {data.source}: {shown}{more}; "
            "the data changed since this split was made"
        )
    return ClassSplit(**{s: [index[n] for n in raw.get(s, [])] for s in SPLITS})
