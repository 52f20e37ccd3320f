"""Checks on what Ray actors send back, before any of it touches the meta-parameters.

An actor's answer is data from another process, possibly on another node that runs a
different distmeta or torch (a half-upgraded cluster), or a buggy one. The driver
sums group gradients straight into its optimiser's buffers, where a wrong shape can
broadcast silently and a missing name fails half-way through an update. So, as DDP
checks parameter shapes across ranks at start-up, the backend

* compares every actor's distmeta and torch versions with the driver's when the
  actors are built (:func:`check_versions`), and
* checks every answer (:func:`group_results_problem`, :func:`evaluation_problem`,
  :func:`shm_answer_problem`, :func:`open_answer`): a malformed one is a failed attempt
  that names the actor and is re-run elsewhere, never part of an update.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from distmeta._versions import __version__
from distmeta.distributed.wire import Packed, unpack
from distmeta.errors import DistmetaError
from distmeta.groups import is_node
from distmeta.results import GroupResult
from distmeta.tasks.specs import TaskSpec, task_key

_EXTRA_KEYS = frozenset({"actor", "node", "pid", "actor_compute_s"})  # what the backend reads from every result
MetaSpec = Mapping[str, tuple[tuple[int, ...], np.dtype]]


class VersionMismatchError(DistmetaError, RuntimeError):
    """An actor runs another distmeta or torch version than the driver."""


def local_versions() -> dict[str, str]:
    """The versions this process runs, as an actor reports them at set-up."""
    import torch

    return {"distmeta_version": str(__version__), "torch_version": str(torch.__version__)}


def check_versions(infos: Sequence[Mapping[str, Any]]) -> None:
    """Raise :class:`VersionMismatchError` naming every actor whose distmeta or torch differs from this process's."""
    mine = local_versions()
    bad = []
    for k, info in enumerate(infos):
        theirs = {key: info.get(key, "unknown") for key in mine}
        if theirs != mine:
            node = str(info.get("node", "?"))[:12]
            diff = ", ".join(f"{key.removesuffix('_version')} {theirs[key]}" for key in mine if theirs[key] != mine[key])
            bad.append(f"actor {k} (node {node}) runs {diff}")
    if bad:
        want = ", ".join(f"{key.removesuffix('_version')} {v}" for key, v in mine.items())
        raise VersionMismatchError(f"the driver runs {want} but " + "; ".join(bad)
                                   + ": install the same versions on every node")


def meta_spec(meta: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Name -> (shape, dtype) of the meta-parameters sent: what every returned gradient must match."""
    out = {}
    for name, value in meta.items():
        array = np.asarray(value)
        out[name] = (tuple(array.shape), array.dtype)
    return out


def open_answer(answer: Any) -> tuple[Any, str | None]:
    """``(value, None)`` for a well-formed packed answer, ``(None, problem)`` when it cannot even be unpacked."""
    try:
        header, blob = answer
        if not isinstance(header, bytes) or not isinstance(blob, np.ndarray):
            return None, f"malformed answer: a {type(header).__name__} header and a {type(blob).__name__} blob"
        return unpack((header, blob)), None
    except Exception as err:  # noqa: BLE001 - whatever broke, it is this answer's fault, not the driver's
        return None, f"malformed answer ({type(err).__name__}: {str(err)[:200]})"


def shm_answer_problem(answer: Any, given: tuple[str, int, int] | None) -> str | None:
    """Why a shared-memory answer ``(header, (path, offset, nbytes))`` cannot be read, or None.

    ``given`` is the ``(path, offset, capacity)`` region the call was given: the answer
    must name it and its byte count must stay inside it (reading past it would take
    another actor's gradients, or bytes past the file).
    """
    try:
        header, (path, offset, nbytes) = answer
    except (TypeError, ValueError):
        return "malformed shared-memory answer"
    if given is None or (path, offset) != tuple(given[:2]):
        return f"answered into shared memory it was not given ({path} at {offset})"
    if not isinstance(nbytes, int) or isinstance(nbytes, bool) or not 0 <= nbytes <= given[2]:
        return f"reported {nbytes!r} bytes of gradients in a shared-memory region of {given[2]} bytes"
    if not isinstance(header, bytes):
        return f"malformed shared-memory answer: a {type(header).__name__} header"
    return None


def _grad_problem(i: int, grad: Any, spec: MetaSpec) -> str | None:
    """Why group ``i``'s gradient dict does not match the meta-parameters, or None."""
    if not isinstance(grad, dict):
        return f"group {i}: gradient is a {type(grad).__name__}, not a dict"
    if set(grad) != set(spec):
        missing, extra = sorted(set(spec) - set(grad)), sorted(set(grad) - set(spec))
        return f"group {i}: gradient names differ from the meta-parameters' (missing {missing[:5]}, unexpected {extra[:5]})"
    for name, (shape, dtype) in spec.items():
        g = grad[name]
        if not isinstance(g, np.ndarray):
            return f"group {i}: gradient {name!r} is a {type(g).__name__}, not an array"
        if tuple(g.shape) != shape or g.dtype != dtype:
            return (f"group {i}: gradient {name!r} is {g.dtype}{list(g.shape)}, "
                    f"the meta-parameter is {np.dtype(dtype)}{list(shape)}")
    return None


def _covers_problem(block: range, value: list, total: int | None) -> str | None:
    """Why the results' ``covers`` do not tile ``block`` with whole subtrees of the reduction tree, or None.

    An actor's own answer sums each group alone (``covers == 1``); a node's sum
    (``total`` given) may hold a whole subtree in its first result and nothing in the others.
    """
    pos = 0
    while pos < len(value):
        c = getattr(value[pos], "covers", None)
        lo = block.start + pos
        if c == 1:
            pos += 1
            continue
        if total is None or not isinstance(c, int) or c < 2 or pos + c > len(value) or not is_node(lo, lo + c, total):
            return f"result for group {lo} sums {c!r} groups, not a whole subtree of the reduction tree inside the block"
        if any(getattr(r, "covers", None) != 0 or r.grad for r in value[pos + 1: pos + c]):
            return f"groups {lo + 1}..{lo + c - 1} are inside group {lo}'s sum but carry gradients of their own"
        pos += c
    return None


def group_results_problem(block: range, value: Any, groups: Sequence[Sequence[TaskSpec]], version: int,
                          spec: MetaSpec, total: int | None = None) -> str | None:
    """Why an actor's (or a node's) answer for ``block`` cannot be used in the update of ``version``, or None.

    One :class:`GroupResult` per group, for the parameter version and tasks sent, with
    per-task metrics and a gradient of exactly the meta-parameters' names, shapes and
    dtypes; with ``total`` (the step's group count) a node's answer may sum whole subtrees
    of the reduction tree (:func:`_covers_problem`).
    """
    if not isinstance(value, list) or len(value) != len(block):
        return f"returned {len(value) if isinstance(value, list) else type(value).__name__} results for {len(block)} groups"
    if any(not isinstance(r, GroupResult) for r in value):
        i = next(i for i, r in zip(block, value) if not isinstance(r, GroupResult))
        return f"result for group {i} is a {type(value[i - block.start]).__name__}, not a GroupResult"
    problem = _covers_problem(block, value, total)
    if problem is not None:
        return problem
    for i, r in zip(block, value):
        if not isinstance(r, GroupResult):
            return f"result for group {i} is a {type(r).__name__}, not a GroupResult"
        if r.version != version:
            return f"stale result for group {i}: parameter version {r.version}, expected {version}"
        if r.tasks != [task_key(s) for s in groups[i]]:
            return f"result for group {i} is for tasks {r.tasks[:3]}..., not the tasks sent"
        problem = _grad_problem(i, r.grad, spec) if r.covers else None
        if problem is not None:
            return problem
        if not isinstance(r.metrics, dict) or any(not isinstance(v, list) or len(v) != len(r.tasks)
                                                  for v in r.metrics.values()):
            return f"group {i}: metrics are not one list entry per task"
        if not (set(r.bad_tasks) <= set(r.tasks) and set(r.skipped) <= set(r.tasks)):
            return f"group {i}: bad or skipped tasks that were not sent"
        if not isinstance(r.extra, dict) or not _EXTRA_KEYS <= set(r.extra):
            return f"group {i}: no actor bookkeeping ({', '.join(sorted(_EXTRA_KEYS))})"
    return None


def evaluation_problem(block: range, value: Any, groups: Sequence[Sequence[TaskSpec]]) -> str | None:
    """Why an actor's evaluation answer is unusable (not one dict of per-episode lists per group), or None."""
    if not isinstance(value, list) or len(value) != len(block):
        return f"returned {len(value) if isinstance(value, list) else type(value).__name__} results for {len(block)} groups"
    for i, r in zip(block, value):
        if not isinstance(r, dict) or any(not isinstance(v, list) for v in r.values()):
            return f"group {i}: evaluation result is a {type(r).__name__}, not a dict of per-episode lists"
        n = len(next(iter(r.values()))) if r else 0
        if n != len(groups[i]) or any(len(v) != n for v in r.values()):
            return f"group {i}: {n} episode results for {len(groups[i])} episodes"
    return None


__all__ = ["VersionMismatchError", "local_versions", "check_versions", "meta_spec", "open_answer",
           "shm_answer_problem", "group_results_problem", "evaluation_problem", "Packed"]
