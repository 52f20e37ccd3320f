"""Reading configs: YAML files plus dotted ``key=value`` overrides, validated with errors that name the key.

The same helpers serve every YAML file distmeta reads (runs, Tune searches, grids).
"""
from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from distmeta.config.schema import Config
from distmeta.errors import ConfigError


def _section_model(root: type[BaseModel], path: tuple[str, ...]) -> type[BaseModel] | None:
    """The model of the section at ``path`` below ``root`` (None when ``path`` is not a section)."""
    model = root
    for part in path:
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


def format_errors(err: ValidationError, root: type[BaseModel], what: str = "config") -> str:
    """One line per problem of a pydantic validation, each naming its dotted key.

    An unknown key gets the nearest valid key of its section as a suggestion.

    Args:
        err: what ``root.model_validate`` raised.
        root: the model validated (:class:`Config`, a Tune search spec, a grid spec).
        what: how messages name the file kind ("config", "tune config", ...).

    Returns:
        The problems, joined by newline and two spaces of indent (no heading).
    """
    lines = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        dotted = ".".join(loc) if loc else f"<{what}>"
        moved = getattr(root, "MOVED_KEYS", {}).get(dotted)
        if e["type"] == "extra_forbidden" and moved:
            lines.append(f"{what} key {dotted!r} moved to {moved!r}: write {moved}=... (in YAML, under "
                         f"{moved.split('.')[0]}:)")
        elif e["type"] == "extra_forbidden":
            parent = _section_model(root, loc[:-1])
            near = difflib.get_close_matches(loc[-1], list(parent.model_fields), n=1, cutoff=0.6) if parent else []
            hint = f"; did you mean {'.'.join(loc[:-1] + (near[0],))!r}?" if near else ""
            lines.append(f"unknown {what} key {dotted!r}{hint}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
            lines.append(f"{dotted}: {msg}{got}")
    return "\n  ".join(lines)


M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], raw: dict[str, Any], what: str = "config", where: str = "") -> M:
    """``model.model_validate(raw)``, with a :class:`ConfigError` naming every bad key instead of pydantic's.

    Args:
        model: the pydantic model.
        raw: the plain mapping read from YAML (with overrides applied).
        what: the file kind, for messages ("config", "tune config", "grid config").
        where: the file's name, for messages.

    Returns:
        The validated model.
    """
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        head = f"invalid {what} {where}".rstrip()
        raise ConfigError(f"{head}:\n  {format_errors(err, model, what)}") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value parsed as YAML, so numbers, lists and null work)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def set_key(raw: dict[str, Any], key: str | list[str], value: Any) -> dict[str, Any]:
    """A copy of ``raw`` with the dotted ``key`` (``"algorithm.inner_lr"``) set to ``value``; sections are created.

    Raises:
        ConfigError: a part of ``key`` names a value, not a section.
    """
    out = copy.deepcopy(raw)
    path = key.split(".") if isinstance(key, str) else list(key)
    node = out
    for part in path[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{'.'.join(path)!r}: {part!r} is a value, not a section")
        node = nxt
    node[path[-1]] = value
    return out


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``key=value`` applied (nested keys by dots, values parsed as YAML)."""
    out = raw
    for item in overrides:
        path, value = parse_override(item)
        try:
            out = set_key(out, path, value)
        except ConfigError as err:
            raise ConfigError(f"override {item!r}: {str(err).split(': ', 1)[1]}") from None
    return copy.deepcopy(out) if out is raw else out


def split_overrides(overrides: list[str] | None, own_keys: Any) -> tuple[list[str], list[str]]:
    """``(own, rest)``: the overrides whose first key part is in ``own_keys`` (a sweep file's), and the others.

    ``distmeta tune`` / ``grid`` take both kinds on one command line: ``num_samples=2``
    changes the search, ``train.steps=50`` its base config.
    """
    own, rest = [], []
    for item in overrides or []:
        (own if item.split("=", 1)[0].strip().split(".")[0] in own_keys else rest).append(item)
    return own, rest


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Validate a plain dict; errors name each bad field."""
    return validate(Config, raw)


def upgrade_saved(raw: dict[str, Any]) -> dict[str, Any]:
    """A saved config (a run's ``config.yaml``, a checkpoint's) in today's layout: moved keys put where they live now.

    Configs written before a key moved (:attr:`Config.MOVED_KEYS`) stay readable, so an old run
    can still be resumed and evaluated; what a user types is held to today's layout instead.

    Args:
        raw: the saved mapping.

    Returns:
        A copy with each moved top-level key under its section, unless the section already sets it.
    """
    out = copy.deepcopy(raw)
    for old, new in Config.MOVED_KEYS.items():
        if old in out:
            section, key = new.split(".")
            value = out.pop(old)
            node = out.setdefault(section, {})
            if isinstance(node, dict):
                node.setdefault(key, value)
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping, read with ``yaml.safe_load`` (no Python objects).

    Raises:
        ConfigError: the file is missing, not YAML, or not a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping at top level")
    return raw


#: The embedded default run (``distmeta train`` with no ``--config``); ``configs/default.yaml`` links here.
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "default.yaml"
#: Environment variable naming the base config used when none is given (a site-wide default;
#: the test suite points it at configs/bag_protonet.yaml, a from-scratch model).
BASE_CONFIG_ENV = "DISTMETA_BASE_CONFIG"


def base_config_path() -> Path:
    """``$DISTMETA_BASE_CONFIG`` if set, else the embedded default."""
    env = os.environ.get(BASE_CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (the embedded default, or ``$DISTMETA_BASE_CONFIG``, when ``path`` is None) and apply overrides.

    Keys a file leaves out take the schema defaults of :class:`Config`.
    """
    raw = read_yaml(path if path is not None else base_config_path())
    return config_from_dict(apply_overrides(raw, list(overrides or [])))


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML, loadable again by :func:`load_config`."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
