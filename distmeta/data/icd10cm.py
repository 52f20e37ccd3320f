"""ICD-10-CM as a few-shot corpus: each code's description, labelled by its section.

The section (the innermost ICD-10-CM block, e.g. "A00-A09 Intestinal infectious
diseases") is the class, so an N-way episode asks a learner to tell N areas of
medicine apart from a handful of short clinical phrases. Everything comes from the
``simple_icd_10_cm`` package, which ships the classification files: no network.

Importing ``simple_icd_10_cm`` parses its XML (seconds), so the built table is cached
on disk (keyed by the package version and :data:`CACHE_FORMAT`) and in-process.
"""
from __future__ import annotations

import functools
import importlib.metadata
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import datasets

PACKAGE = "simple-icd-10-cm"
CACHE_FORMAT = "v1"
"""Bump when the way rows are built changes, so old on-disk caches are not reused."""

_BLOCK_SUFFIX = re.compile(r"\s*\(([^()]*)\)\s*$")


def cache_root() -> Path:
    """Where distmeta keeps built corpora: ``$DISTMETA_CACHE_DIR``, else ``$XDG_CACHE_HOME/distmeta``, else ``~/.cache/distmeta``."""
    explicit = os.environ.get("DISTMETA_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "distmeta"


def package_version() -> str:
    """The installed ``simple-icd-10-cm`` version, read without importing (and parsing) it."""
    return importlib.metadata.version(PACKAGE)


def cache_path() -> Path:
    """The on-disk cache directory of the built Dataset for the installed package version."""
    return cache_root() / f"icd10cm-{package_version()}-{CACHE_FORMAT}"


def section_label(block: str, description: str) -> str:
    """``("A00-A09", "Intestinal infectious diseases (A00-A09)")`` -> ``"A00-A09 Intestinal infectious diseases"``."""
    name = _BLOCK_SUFFIX.sub("", description).strip() or description.strip()
    return f"{block} {name}"


def build_rows() -> tuple[list[str], list[str]]:
    """Parse the package: (descriptions, section labels) for every category and subcategory.

    Extended subcategories (7th-character codes such as S52.521A) are skipped: they
    repeat their parent's description with "initial encounter" etc. appended and would
    swamp the injury sections with near duplicates. Identical (text, label) pairs are
    kept once, in the package's code order, so the result is deterministic.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import simple_icd_10_cm as cm

    texts: list[str] = []
    labels: list[str] = []
    seen: set[tuple[str, str]] = set()
    section_of_block: dict[str, str] = {}
    # A block holding a single category shares that category's name, so the code list
    # repeats such names; dict.fromkeys keeps the first occurrence and the order.
    for code in dict.fromkeys(cm.get_all_codes(with_dots=True)):
        if not cm.is_category_or_subcategory(code) or cm.is_extended_subcategory(code):
            continue
        block = next((a for a in cm.get_ancestors(code) if cm.is_block(a)), None)
        if block is None:  # every category sits in a block; guard against odd data files
            continue
        if block not in section_of_block:
            section_of_block[block] = section_label(block, cm.get_description(block, prioritize_blocks=True))
        text = " ".join(cm.get_description(code).split())
        label = section_of_block[block]
        if not text or (text, label) in seen:
            continue
        seen.add((text, label))
        texts.append(text)
        labels.append(label)
    return texts, labels


def build_dataset() -> datasets.Dataset:
    """The corpus as an in-memory Dataset with string columns ``text`` and ``label``."""
    texts, labels = build_rows()
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.Value("string")})
    return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)


def _save_atomically(ds: datasets.Dataset, target: Path) -> None:
    """Write ``ds`` to a temporary sibling directory, then rename it to ``target``.

    A reader therefore sees either no cache or a complete one; if another process won
    the race, its copy is kept and ours is discarded.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the cache is an ordinary directory
        ds.save_to_disk(str(tmp))
        os.rename(tmp, target)
    except OSError:
        if not target.exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_cached(target: Path) -> datasets.Dataset | None:
    """The cached Dataset at ``target``, or None when it is absent or unreadable (then rebuilt)."""
    if not target.is_dir():
        return None
    try:
        ds = datasets.load_from_disk(str(target))
    except Exception:  # a corrupt or foreign cache is rebuilt, never fatal
        return None
    if not isinstance(ds, datasets.Dataset) or ds.column_names != ["text", "label"] or len(ds) == 0:
        return None
    return ds


@functools.cache
def load_icd10cm() -> datasets.Dataset:
    """ICD-10-CM descriptions (``text``) labelled by section (``label``), in a fixed order.

    Served from the in-process cache, else the on-disk cache, else built from the
    ``simple_icd_10_cm`` package and cached. An unwritable cache directory only costs
    the rebuild next time; one another user could write to is refused
    (:func:`distmeta.security.check_private_dir`), as every distmeta cache is.
    """
    from distmeta.security import check_private_dir

    datasets.disable_progress_bars()
    target = cache_path()
    check_private_dir(target, "ICD-10-CM corpus cache")  # a planted corpus would change every run's tasks
    ds = _load_cached(target)
    if ds is not None:
        return ds
    ds = build_dataset()
    try:
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        _save_atomically(ds, target)
    except OSError as err:
        warnings.warn(f"could not cache ICD-10-CM corpus under {str(target)!r}: {err}", stacklevel=2)
        return ds
    return _load_cached(target) or ds
