"""What Tune searches and grids share: reading a sweep YAML and its base config.

A sweep file (``configs/tune_*.yaml``, ``configs/grid_*.yaml``) names a ``base`` distmeta
config (a path relative to the file, or a mapping) plus ``overrides``, and keys of its own.
:func:`load_sweep` reads one, sends each command-line override to the sweep or to its base
(:func:`~distmeta.config.split_overrides`), validates both with errors naming the key, and
returns the spec and the base config as a plain mapping::

    spec, base_raw, where = load_sweep("configs/grid_sinusoid.yaml", ["episodes=50"], GridSpec, "grid config")
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from distmeta.config import (
    apply_overrides,
    config_from_dict,
    read_yaml,
    split_overrides,
    validate,
)
from distmeta.errors import ConfigError

S = TypeVar("S", bound=BaseModel)

FILE_SOURCES = ("csv:", "json:", "jsonl:", "parquet:")
#: Sweep keys that hold where results are stored (a path or a storage URI).
STORAGE_KEYS = ("storage_path", "output_dir")


def sweep_error(what: str, where: str, msg: str) -> ConfigError:
    """``invalid <what> <where>:`` and the problem lines, the way :func:`~distmeta.config.validate` words them."""
    return ConfigError(f"invalid {what} {where}:\n  {msg}")


def load_sweep(path: str | Path | dict[str, Any], overrides: list[str] | None, model: type[S],
               what: str) -> tuple[S, dict[str, Any], str]:
    """Read and validate a sweep file and its base config; nothing runs.

    Args:
        path: the YAML file, or the same content as a mapping.
        overrides: ``key=value``; a key of ``model`` (``num_samples=2``) changes the sweep,
            any other (``train.steps=50``) its base config.
        model: the sweep's pydantic spec (it has ``base`` and ``overrides`` fields).
        what: the file kind for messages ("tune config", "grid config").

    Returns:
        ``(spec, base_raw, where)``: the validated spec, the base config mapping with every
        override applied (checked by :func:`~distmeta.config.config_from_dict`), and the
        file's name for messages.
    """
    if isinstance(path, dict):
        raw, where, root = copy.deepcopy(path), "<mapping>", Path.cwd()
    else:
        raw, where, root = read_yaml(path), str(path), Path(path).resolve().parent
    own, rest = split_overrides(overrides, model.model_fields)
    raw = apply_overrides(raw, own)
    if "base" not in raw:
        raise sweep_error(what, where, "base: missing (a distmeta config path, relative to this file, or a mapping)")
    spec = validate(model, raw, what, where)
    base = spec.base
    if isinstance(base, str):
        base_path = Path(base)
        if not base_path.is_absolute() and (root / base_path).exists():
            base_path = root / base_path
        try:
            base = read_yaml(base_path)
        except ConfigError as err:
            raise sweep_error(what, where, f"base: {err}") from None
    base_raw = apply_overrides(base, [*spec.overrides, *rest])
    try:
        cfg = config_from_dict(base_raw)
    except ConfigError as err:
        raise sweep_error(what, where, f"base: {err}") from None
    stored = {key: getattr(spec, key) for key in STORAGE_KEYS if isinstance(getattr(spec, key, None), str)}
    for key, value in {**stored, "base run.dir": cfg.run.dir}.items():
        check_storage(value, key, what, where)
    return spec, base_raw, where


def check_storage(value: str, key: str, what: str, where: str) -> None:
    """Refuse a storage URI that carries credentials (:func:`~distmeta.persistence.uris.check_uri`) before Tune stores it.

    Args:
        value: a local path (accepted as it is) or a storage URI.
        key: the sweep key that holds it, for the message.
        what: the file kind for messages; where: the file's name.

    Raises:
        ConfigError: the URI has user info or a query key off its scheme's allowlist (value redacted).
    """
    from distmeta.persistence.storage import is_remote
    from distmeta.persistence.uris import UriCredentialsError, check_uri

    if is_remote(value):
        try:
            check_uri(value)
        except UriCredentialsError as err:
            raise sweep_error(what, where, f"{key}: {err}") from None


def absolute_paths(raw: dict[str, Any], root: Path) -> dict[str, Any]:
    """A copy of a config mapping with file data sources and ``model.path`` made absolute from ``root``.

    Tune trials run in their own working directories; a relative path means "from where
    the command ran", as for ``distmeta train``.
    """
    out = copy.deepcopy(raw)
    data = out.get("data") or {}
    sources = [data] + [c for c in data.get("mixture") or [] if isinstance(c, dict)]
    for node in sources:
        src = node.get("source")
        for prefix in FILE_SOURCES:
            if isinstance(src, str) and src.startswith(prefix) and not Path(src[len(prefix):]).is_absolute():
                node["source"] = prefix + str((root / src[len(prefix):]).resolve())
    model = out.get("model") or {}
    if isinstance(model.get("path"), str) and not Path(model["path"]).is_absolute():
        model["path"] = str((root / model["path"]).resolve())
    return out


def join_location(base: str, *parts: str) -> str:
    """``base/parts``, joined as a URI when ``base`` is a storage URI (``s3://b/grids`` + ``ws`` -> ``s3://b/grids/ws``).

    ``Path()`` would turn ``s3://b`` into ``s3:/b``, a local directory named ``s3:``.
    """
    from distmeta.persistence.storage import is_remote, join_uri

    return join_uri(base, *parts) if is_remote(base) else str(Path(base, *parts))


def one_line(err: ConfigError) -> str:
    """A config error's problems on one line (``a; b``), for an error about one candidate value or cell."""
    return str(err).split(":\n  ", 1)[-1].replace("\n  ", "; ")
