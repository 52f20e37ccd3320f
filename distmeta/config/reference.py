"""The config reference (``docs/config.md``), generated from the schema so it cannot drift from it.

Every key of :class:`~distmeta.config.Config`, section by section, with its type (and the
bounds pydantic checks), its schema default, the value the embedded default run
(``distmeta/default.yaml``, what ``make train`` runs) gives it where that differs, and its
``Field(description=...)``. Regenerate after changing the schema::

    .venv/bin/python -m distmeta.config.reference > docs/config.md

``tests/test_config_reference.py`` fails when ``docs/config.md`` is stale or a key has no description.
"""
from __future__ import annotations

import inspect
import json
import re
import sys
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from distmeta.config.loading import DEFAULT_CONFIG, read_yaml
from distmeta.config.schema import Config

#: Bounds pydantic checks (``annotated_types`` metadata), as the reference writes them.
_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


@dataclass(frozen=True)
class Key:
    """One documented config key.

    Attributes:
        key: dotted name; ``[]`` marks a list of sections (``faults[].kind``).
        type: the accepted values, e.g. ``int (>= 1)`` or ``sgd | momentum``.
        default: the schema default as YAML-like JSON (``required`` when there is none).
        description: the field's ``description``, empty when it has none.
    """

    key: str
    type: str
    default: str
    description: str


def _section_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """``(model, is_list)`` when ``annotation`` is a section, an optional section or a list of sections."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and args:
        model, _ = _section_of(args[0])
        return model, model is not None
    if origin in (Union, types.UnionType):
        for arg in args:
            model, is_list = _section_of(arg)
            if model is not None:
                return model, is_list
    return None, False


def type_name(annotation: Any) -> str:
    """A readable name for a field's type: ``Literal`` as ``a | b``, ``None`` as ``null``, tuples as ``[x, y]``."""
    if annotation is type(None):
        return "null"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is tuple:
        return "[" + ", ".join(type_name(a) for a in args) + "]"
    if origin is list:
        return f"list of {type_name(args[0])}"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field: FieldInfo) -> str:
    out = [f"{_BOUNDS[name]} {getattr(m, name)}" for m in field.metadata for name in _BOUNDS if hasattr(m, name)]
    return f" ({', '.join(out)})" if out else ""


def _as_yaml(value: Any) -> str:
    """A default as a reader writes it in YAML (JSON is YAML): tuples as lists, None as null."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return json.dumps(value, default=list)


def _default(field: FieldInfo) -> str:
    if field.default is not PydanticUndefined:
        return _as_yaml(field.default)
    if field.default_factory is not None:
        return _as_yaml(field.default_factory())  # type: ignore[call-arg]
    return "required"


def keys(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, type[BaseModel], list[Key]]]:
    """Every section below ``model`` with its own keys, in schema order.

    Args:
        model: the section to walk (the root :class:`Config` by default).
        prefix: its dotted name (``""`` for the root, ``"data."`` for ``data``).

    Returns:
        ``(section name, section model, its keys)`` triples; nested sections follow their parent.
    """
    own: list[Key] = []
    nested: list[tuple[str, type[BaseModel], list[Key]]] = []
    for name, field in model.model_fields.items():
        section, is_list = _section_of(field.annotation)
        if section is not None:
            dotted = f"{prefix}{name}{'[]' if is_list else ''}"
            if is_list or field.default is None:  # a list of sections, or an optional one: say so in the parent
                kind = f"sections (`{dotted}.*`)" if is_list else f"section (`{dotted}.*`)"
                own.append(Key(f"{prefix}{name}", type_name(field.annotation).replace(section.__name__, kind),
                               _default(field), field.description or ""))
            nested += keys(section, dotted + ".")
            continue
        own.append(Key(f"{prefix}{name}", type_name(field.annotation) + _bounds(field), _default(field),
                       field.description or ""))
    return [(prefix.rstrip(".") or "(top level)", model, own), *nested]


def _embedded_defaults() -> dict[str, Any]:
    """The values ``distmeta/default.yaml`` sets, by dotted key (lists of sections not flattened)."""
    flat: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                flat[f"{prefix}{k}"] = v
    walk(read_yaml(DEFAULT_CONFIG), "")
    return flat


def _paragraphs(doc: str) -> list[str]:
    """A section's docstring as Markdown paragraphs (Sphinx roles and double backticks as plain code)."""
    out = []
    for para in inspect.cleandoc(doc).split("\n\n"):
        text = " ".join(line.strip() for line in para.splitlines() if line.strip())
        text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text).replace("``", "`")
        if text:
            out += [text, ""]
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    """The whole reference as Markdown (what ``docs/config.md`` holds)."""
    embedded = _embedded_defaults()
    lines = [
        "# Config reference",
        "",
        "<!-- Generated by `python -m distmeta.config.reference > docs/config.md` from the schema in",
        "     distmeta/config/*.py; edit the schema's Field(description=...), not this file. -->",
        "",
        "Every key of a run's YAML config. Set keys in a file (`--config`) or on the command line as",
        "`section.key=value` (values parse as YAML: numbers, lists, `null`); `distmeta config [--config X]",
        "[overrides]` prints the result with every key resolved. A misspelt key is an error with a suggestion.",
        "**default** is the schema's (what a key a file leaves out takes); **default.yaml** is the value the",
        "embedded default run (`distmeta train` without `--config`, `make train`) sets, where it sets one.",
        "`[]` marks a list of sections (`faults: [{kind: kill, step: 3}]`).",
        "",
    ]
    for section, model, own in keys():
        if not own:
            continue
        lines += [f"## `{section}`" if section != "(top level)" else "## Top level", ""]
        if model is not Config:
            lines += _paragraphs(model.__doc__ or "")
        lines += ["| key | type | default | default.yaml | description |", "| --- | --- | --- | --- | --- |"]
        for k in own:
            shipped = _as_yaml(embedded[k.key]) if k.key in embedded else ""
            lines.append(f"| `{k.key}` | {_cell(k.type)} | `{_cell(k.default)}` | "
                         f"{f'`{_cell(shipped)}`' if shipped else ''} | {_cell(k.description)} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    """Print the reference to stdout (``python -m distmeta.config.reference > docs/config.md``)."""
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
