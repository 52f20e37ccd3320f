"""What distmeta takes from files someone else may have written.

**Saved configs** (a checkpoint's ``state.json``, a run directory's ``config.yaml``).
Whoever writes a checkpoint also writes its manifest, so its checksums prove that the
files are intact, not who meant what. ``distmeta eval`` and ``distmeta train --resume``
therefore take from a saved config only what defines the model and its tasks (model,
tokenizer, algorithm, data shape, seed, optimiser, training length). Where and how the
run executes comes from the user: :data:`USER_KEYS` (``resources.*``, ``ray.*``, ``run.*``,
``faults``) are taken from the command line over the
schema defaults, never from the saved config, and a location the saved config names
(a data file, a model or cache directory: :func:`locations`) must be one the user gave
too, else :class:`UntrustedConfigError` names the field. ``--trust-checkpoint-config``
(``trust=True``) restores the old behaviour for checkpoints whose author you trust. A
local run directory only you could have written (:func:`not_yours` finds no reason) is
your own run: its locations are taken as saved, so ``distmeta eval`` on it needs no
``data.source=`` again; a remote one, or one another user owns or can write, is foreign.

**Directories other users can write** (:func:`check_private_dir`): Ray Tune's
``Tuner.restore`` unpickles what it finds under ``storage_path``, so a search refuses a
storage path that another user could have written into.
"""
from __future__ import annotations

import copy
import os
import stat
import warnings
from pathlib import Path
from typing import Any, Iterator

from distmeta.config import (
    Config,
    apply_overrides,
    config_from_dict,
    parse_override,
    upgrade_saved,
)
from distmeta.errors import ConfigError, DistmetaError
from distmeta.files import RUN_FILE_PATTERN

#: Top-level config keys that say where and how a run executes: always the user's, never a saved config's.
USER_KEYS = ("resources", "run", "ray", "faults")
#: Data sources that read nothing from a path or the network.
BUILTIN_SOURCES = ("icd10cm", "sinusoid")
#: Saved values dropped silently are harmless; these are worth a warning when a saved config sets them.
_NOTEWORTHY = (("ray", "address"), ("ray", "object_store_memory"), ("faults",))


class UntrustedConfigError(ConfigError):
    """A saved config names a path or address the user did not give (and ``--trust-checkpoint-config`` is off)."""


class UntrustedConfigWarning(UserWarning):
    """A saved config's setting for where or how to run was ignored in favour of the user's."""


def _is_location_key(key: str) -> bool:
    """Whether a config key holds a place to read or write: ``source``, ``path``, ``*_path``, ``*dir``."""
    return key in ("source", "path") or key.endswith(("_path", "dir"))


def locations(raw: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every ``(dotted key path, value)`` of ``raw`` that names a file, directory, hub dataset or address.

    List items appear under their index (``data.mixture.0.source``). Built-in data
    sources and empty values are not locations.
    """
    if isinstance(raw, dict):
        for key, value in raw.items():
            path = (*prefix, str(key))
            if _is_location_key(str(key)) and isinstance(value, str) and value:
                if not (key == "source" and value in BUILTIN_SOURCES):
                    yield path, value
            else:
                yield from locations(value, path)
    elif isinstance(raw, list):
        for i, value in enumerate(raw):
            yield from locations(value, (*prefix, str(i)))


def _given_by_user(field: tuple[str, ...], overrides: list[str]) -> bool:
    """Whether an override sets ``field`` or a section or list that holds it (``data.mixture`` holds ``data.mixture.0.source``)."""
    for item in overrides:
        key, _ = parse_override(item)
        if tuple(key) == field[: len(key)]:
            return True
    return False


def _get(raw: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = raw
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def config_from_saved(saved: dict[str, Any], overrides: list[str] | None = None, *, trust: bool = False,
                      source: str = "the checkpoint", pins: dict[str, Any] | None = None,
                      trust_locations: bool = False) -> Config:
    """The config to evaluate or resume a saved run with: its definition, the user's environment.

    ``saved`` is the saved config (a plain dict), ``overrides`` the user's ``key=value``
    items, ``pins`` dotted keys the caller fixes (``run.dir``: the directory actually
    opened). Without ``trust``: :data:`USER_KEYS` start from the schema defaults (a
    noteworthy saved value such as ``ray.address`` is reported with an
    :class:`UntrustedConfigWarning`), and every location left in the result must have
    come from an override or a pin, else :class:`UntrustedConfigError`. With ``trust``:
    the saved config as it is, then pins and overrides (the pre-hardening behaviour).
    With ``trust_locations`` (a run directory of the user's own, :func:`not_yours`): the
    saved locations are taken, while :data:`USER_KEYS` still come from the command line.
    """
    overrides = list(overrides or [])
    if not isinstance(saved, dict):
        raise ConfigError(f"{source}: the saved config is not a mapping")
    raw = upgrade_saved(saved)
    if not trust:
        defaults = Config().model_dump(mode="json")
        for key in USER_KEYS:
            raw[key] = copy.deepcopy(defaults[key])
        for path in _NOTEWORTHY:
            theirs, mine = _get(saved, path), _get(defaults, path)
            if theirs not in (None, [], mine) and not _given_by_user(path, overrides):
                warnings.warn(f"ignoring {'.'.join(path)}={theirs!r} from {source}: where and how to run comes from "
                              f"the command line (pass --trust-checkpoint-config to take it from there)",
                              UntrustedConfigWarning, stacklevel=3)
    for dotted, value in (pins or {}).items():
        node = raw
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    raw = apply_overrides(raw, overrides)
    if not (trust or trust_locations):
        pinned = [tuple(k.split(".")) for k in (pins or {})]
        for path, value in locations(raw):
            if path in pinned or _given_by_user(path, overrides) or _get(Config().model_dump(mode="json"), path) == value:
                continue
            field = ".".join(path)
            raise UntrustedConfigError(
                f"{source} sets {field}={value!r}, a location you did not give. A checkpoint's author chooses its "
                f"config, and its checksums do not vouch for intent: pass {field}=... yourself (the same value to "
                f"use it), or --trust-checkpoint-config if you trust whoever wrote it")
    return config_from_dict(raw)


def _not_private(path: Path, uid: int) -> str | None:
    """Why ``path`` (followed through links) is not this user's alone: another owner, or writable by others."""
    st = os.stat(path)
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != uid:
        return f"{path} belongs to uid {st.st_uid}, not to you (uid {uid})"
    if mode & 0o022:
        return f"{path} is writable by other users (mode {mode:04o})"
    return None


def _read_back(name: str) -> bool:
    """A run directory's file that evaluating its checkpoint reads: the split(s) and the tokenizer."""
    return RUN_FILE_PATTERN.fullmatch(name) is not None


def not_yours(run_dir: str | Path, step_dir: str | Path) -> str | None:
    """Why a local run directory is not one only you could have written, or None when it is.

    Yours: ``run_dir``, the directories down to ``step_dir`` (its checkpoint), the files of
    ``step_dir`` and the run files evaluation reads (split and tokenizer) belong to you and are
    not writable by group or others, and the directories above ``run_dir`` pass
    :func:`check_private_dir` (as the caches do).
    Then nobody else can have chosen the saved config, so ``distmeta eval`` takes its
    data and model locations without their being repeated.

    Args:
        run_dir: the run directory.
        step_dir: the checkpoint's ``step_*`` directory read (inside ``run_dir``).
    Returns:
        The first reason it is not yours, naming the path, or None.
    """
    uid = os.getuid()
    run_dir, step_dir = Path(run_dir).absolute(), Path(step_dir).absolute()
    dirs = [d for d in [step_dir, *step_dir.parents] if d == run_dir or run_dir in d.parents]
    if run_dir not in dirs:
        return f"the checkpoint {step_dir} is outside the run directory {run_dir}"
    try:
        check_private_dir(run_dir, "run directory")
        for d in dirs:
            files = [f for f in d.iterdir() if not f.is_dir() and (d == step_dir or _read_back(f.name))]
            for p in (d, *files):
                reason = _not_private(p, uid)
                if reason is not None:
                    return reason
    except DistmetaError as err:
        return str(err)
    except OSError as err:
        return f"cannot check who owns {run_dir}: {err}"
    return None


def check_private_dir(path: str | Path, what: str) -> None:
    """Refuse ``path`` when another user could have written what is read back from it.

    As ``ssh`` checks the directories above ``authorized_keys``: ``path`` (when it exists)
    and every existing directory above it must belong to this user or root, and none
    may be writable by group or others, except an ancestor with the sticky bit (``/tmp``:
    others cannot rename or delete what is ours there). A missing ``path`` is fine; this
    user creates it. Raises :class:`~distmeta.errors.DistmetaError` naming the directory.
    """
    uid = os.getuid()
    p = Path(path).expanduser().absolute()
    for d in [p, *p.parents]:
        try:
            st = os.stat(d)
        except FileNotFoundError:
            continue
        mode = stat.S_IMODE(st.st_mode)
        where = f"{what} {p}" if d == p else f"{what} {p}: its parent {d}"
        if st.st_uid not in (uid, 0):
            raise DistmetaError(f"{where} belongs to uid {st.st_uid}, not to you (uid {uid}) or root: its owner could "
                                f"plant what is read back from it; use a directory of your own")
        if mode & 0o022 and (d == p or not mode & stat.S_ISVTX):
            raise DistmetaError(f"{where} is writable by other users (mode {mode:04o}): what is read back from it "
                                f"could be theirs; chmod go-w it or use a directory of your own")
