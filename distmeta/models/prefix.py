"""Frozen-prefix cache: a pretrained encoder's frozen layers computed once per example.

When only the last N layers (and the head) of an :class:`~distmeta.models.hf.HFEncoder` are
meta-trained and adapted, the embeddings and the layers before them give the same output
for an example at every step. This module computes that output once, for every row the
run's class split uses, and stores it on disk as a memory-mapped ragged array (float32,
real tokens only, plus row offsets). Every process on a node maps the same file, so the
page cache holds one copy per node whatever the number of actors; training and
evaluation then run only the trainable suffix.

Files live in ``model.cache_dir`` (default ``$DISTMETA_CACHE_DIR/prefix`` or
``~/.cache/distmeta/prefix``), a private root (:mod:`distmeta.caches`: 0600 files in 0700
folders), under a key made from the prefix's parameters, the model's config, the parameters'
dtype, the torch and transformers versions, the token ids and the row set, so a second run
(or another actor on the node) reuses it; concurrent builders on a node serialise on a lock
file (never followed through a symlink) and the loser just opens the result. Each entry's
``meta.json`` records what it was built from and its files' checksums; an entry that does not
match is rebuilt, never used.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import Tensor

from distmeta import caches
from distmeta.config import Config
from distmeta.models.hf import HFEncoder

if TYPE_CHECKING:
    from distmeta.text.corpus import TokenCorpus

STATES, OFFSETS, META = "states.npy", "offsets.npy", caches.MANIFEST
FORMAT = "prefix-v2"


def default_cache_dir(cfg: Config) -> Path:
    """``model.cache_dir``, else ``$DISTMETA_CACHE_DIR/prefix``, else ``~/.cache/distmeta/prefix``."""
    if cfg.model.cache_dir:
        return Path(cfg.model.cache_dir).expanduser()
    root = os.environ.get("DISTMETA_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "distmeta") / "prefix"


def frozen_prefix_layers(module: HFEncoder, moving: set[str]) -> int:
    """How many leading layers have no parameter in ``moving`` (meta-trained or adapted names).

    0 when the embeddings move (nothing can be cached) or the encoder is not a layer stack.
    """
    if module.whole is not None:
        return 0
    groups = module.layer_groups()  # [embeddings], [layer 0], ..., [head]
    if moving & set(groups[0]):
        return 0
    count = 0
    for group in groups[1:-1]:
        if moving & set(group):
            break
        count += 1
    return count


@dataclass
class PrefixCache:
    """Outputs of the first ``layers`` layers for a corpus's rows: ``states[offsets[r]:offsets[r+1]]`` is row r."""

    path: Path
    layers: int
    states: np.ndarray  # [total real tokens, D] float32, memory-mapped read-only
    offsets: np.ndarray  # [rows + 1] int64

    @property
    def nbytes(self) -> int:
        return int(self.states.nbytes + self.offsets.nbytes)

    def batch(self, rows: Sequence[int] | np.ndarray, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> Tensor:
        """``[len(rows), L, D]`` hidden states, zero after each row's tokens; L = the longest row asked for."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        start, stop = self.offsets[rows], self.offsets[rows + 1]
        lengths = stop - start
        width = max(1, int(lengths.max())) if len(rows) else 1
        pos = np.arange(width)
        idx = start[:, None] + pos[None, :]
        valid = pos[None, :] < lengths[:, None]
        out = self.states[np.where(valid, idx, 0)]  # one gather from the mapped file
        out[~valid] = 0.0
        return torch.from_numpy(out).to(device, dtype)


def _as_corpus(token_ids: "TokenCorpus | np.ndarray", pad_id: int = 0) -> "TokenCorpus":
    """A :class:`~distmeta.text.corpus.TokenCorpus`, from ``[rows, L]`` ids padded with ``pad_id`` if given those."""
    from distmeta.text.corpus import TokenCorpus

    if isinstance(token_ids, TokenCorpus):
        return token_ids
    return TokenCorpus.from_padded(np.asarray(token_ids), pad_id=pad_id)


def model_identity(module: HFEncoder) -> dict[str, str]:
    """What besides the weights decides the prefix's outputs: the model's config, the dtype, library versions.

    The config is transformers' own ``to_dict()`` without where it was loaded from (a copied model
    keeps its cache); a changed ``hidden_act`` or ``layer_norm_eps`` gives another key.
    """
    config = getattr(module, "config", None)
    raw = config.to_dict() if hasattr(config, "to_dict") else {}
    raw = {k: v for k, v in raw.items() if k not in ("_name_or_path", "transformers_version")}
    dtypes = sorted({str(t.dtype) for t in module.state_dict().values() if t.is_floating_point()})
    return {"config_sha256": hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest(),
            "dtype": ",".join(dtypes), **caches.library_versions("torch", "transformers")}


def cache_key(module: HFEncoder, layers: int, token_ids: "TokenCorpus | np.ndarray", rows: np.ndarray) -> str:
    """Identity of a cache: the prefix's parameters and buffers (MPNet's position bias table with the
    embeddings), :func:`model_identity`, the padded token ids of ``rows``, the layer count."""
    corpus = _as_corpus(token_ids, module.pad_id)
    h = hashlib.sha256()
    h.update(f"{FORMAT}:{layers}:{module.pooling}".encode())
    h.update(json.dumps(model_identity(module), sort_keys=True).encode())
    prefix = ("embeddings.", "relative_bias.") + tuple(f"layers.{i}." for i in range(layers))
    for name, t in sorted(module.state_dict().items()):
        if name.startswith(prefix):
            h.update(name.encode())
            h.update(t.detach().to(torch.float32).contiguous().numpy().tobytes())
    h.update(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
    for s in range(0, len(rows), 65536):  # the bytes of the [rows, max_length] int64 ids, a chunk at a time
        h.update(corpus.padded(rows[s : s + 65536]).tobytes())
    return h.hexdigest()[:24]


def cache_problem(path: Path, built_from: dict[str, object] | None = None) -> str | None:
    """Why the cache entry ``path`` cannot be used (None when it can): its manifest, checksums and shapes.

    Args:
        path: the entry (``<cache_dir>/<key>``); its name is the key it must record.
        built_from: what the caller expects it was built from (None: whatever the entry records).
    """
    problem = caches.manifest_problem(path, path.name, built_from)
    if problem is not None:
        return problem
    record = caches.read_manifest(path) or {}
    states = np.load(path / STATES, mmap_mode="r")
    offsets = np.load(path / OFFSETS, mmap_mode="r")
    if states.dtype != np.float32 or states.ndim != 2 or offsets.ndim != 1 or int(offsets[-1]) != len(states) \
            or list(states.shape) != record.get("states_shape"):
        return "its arrays do not have the recorded shapes"
    return None


def open_cache(path: Path) -> PrefixCache:
    """Map a finished cache directory read-only, after checking it (:func:`cache_problem`).

    Raises:
        OSError: the entry does not verify (a caller rebuilds it with :func:`open_or_build`).
    """
    problem = cache_problem(path)
    if problem is not None:
        raise OSError(f"prefix cache {path}: {problem}")
    meta = caches.read_manifest(path) or {}
    states = np.load(path / STATES, mmap_mode="r")
    offsets = np.load(path / OFFSETS)
    caches.mark_used(path)
    return PrefixCache(path, int(meta["layers"]), states, offsets)


@torch.no_grad()
def _compute(module: HFEncoder, layers: int, corpus: "TokenCorpus", rows: np.ndarray, out: Path,
             batch: int, progress: bool) -> None:
    """Write ``states.npy`` / ``offsets.npy`` for ``rows`` into ``out`` (rows outside get zero length)."""
    from distmeta.progress import progress_bar

    lengths = np.zeros(len(corpus), dtype=np.int64)
    lengths[rows] = np.minimum(corpus.lengths()[rows], corpus.max_length)  # real tokens, whatever the pad id
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    states = np.lib.format.open_memmap(out / STATES, mode="w+", dtype=np.float32,
                                       shape=(int(offsets[-1]), module.embed_dim))
    order = rows[np.argsort(lengths[rows], kind="stable")]  # similar lengths together: little padding
    bar = progress_bar(total=len(order), desc=f"prefix cache ({layers} layers)", unit="ex", disable=not progress)
    for s in range(0, len(order), batch):
        chunk = order[s : s + batch]
        width = int(lengths[chunk].max())
        x = torch.from_numpy(corpus.padded(chunk, width))
        mask = torch.from_numpy(np.arange(width)[None, :] < lengths[chunk][:, None])
        h = module.run_layers(module.embed(x), mask, 0, layers).to(torch.float32).numpy()
        for i, r in enumerate(chunk):
            states[offsets[r] : offsets[r + 1]] = h[i, : lengths[r]]
        bar.update(len(chunk))
    bar.close()
    states.flush()
    del states
    np.save(out / OFFSETS, offsets)


def open_or_build(module: HFEncoder, layers: int, token_ids: "TokenCorpus | np.ndarray", rows: np.ndarray, cache_dir: Path,
                  batch: int = 128, progress: bool = True) -> PrefixCache:
    """The cache for (module prefix, rows): opened if a process on this node built it, else built here.

    Args:
        module: the encoder whose first ``layers`` layers are frozen.
        layers: prefix length (>= 1).
        token_ids: the whole corpus: a :class:`~distmeta.text.corpus.TokenCorpus`, or ``[rows, L]`` ids padded with
            the model's ``pad_id``.
        rows: the rows to cache (those of the run's classes).
        cache_dir: directory of caches; created if missing, and refused when another user could write there.
    Returns:
        The mapped cache; its ``nbytes`` is what the node holds for it.
    """
    root = caches.prepare_root(cache_dir, "prefix cache (model.cache_dir)")
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    corpus = _as_corpus(token_ids, module.pad_id)
    if corpus.pad_id != module.pad_id:
        raise ValueError(f"the corpus pads with id {corpus.pad_id} but the encoder's pad_token_id is {module.pad_id}: "
                         "tokenise with the model's own tokenizer (tokenizer.kind=pretrained)")
    key = cache_key(module, layers, corpus, rows)
    path = root / key
    built_from = {"format": FORMAT, "layers": layers, "rows": int(len(rows)), "corpus_rows": len(corpus),
                  "pooling": module.pooling, **model_identity(module)}
    with caches.locked(root / f"{key}.lock"):  # another process on this node may be building it
        if path.exists():
            problem = cache_problem(path, built_from)
            if problem is None:
                return open_cache(path)
            caches.discard(path, problem, "prefix cache")
        tmp = caches.tmp_dir(root, key)
        t0 = time.perf_counter()
        try:
            _compute(module, layers, corpus, rows, tmp, batch, progress)
            shape = list(np.load(tmp / STATES, mmap_mode="r").shape)
            caches.write_manifest(tmp, key, built_from, [STATES, OFFSETS], layers=layers, states_shape=shape,
                                  build_s=round(time.perf_counter() - t0, 3))
            caches.seal(tmp)
            try:
                os.replace(tmp, path)  # published whole or not at all
            except OSError:  # published by a builder that held a pruned lock file's inode: keep theirs
                if not path.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return open_cache(path)


__all__ = ["PrefixCache", "cache_key", "cache_problem", "model_identity", "default_cache_dir", "frozen_prefix_layers", "open_cache", "open_or_build"]
