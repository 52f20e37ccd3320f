"""From the workers' group results to one meta-gradient: the fixed-order sum and what happens to NaNs.

The sum runs over groups in group order whatever computed them, which is what makes any
backend and any actor count give the same parameters. A task whose loss or gradient is
not finite is dealt with by ``nan_policy`` (:func:`nan_policy`) before anything is applied.
"""
from __future__ import annotations

import warnings

import torch

from distmeta.errors import DistmetaError
from distmeta.tasks.specs import TaskSpec, task_key
from distmeta.worker import GroupResult


def reduce_groups(results: list[GroupResult], names: list[str], dtype: torch.dtype,
                  out: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Sum group gradients in group order: the fixed reduction that makes runs reproducible.

    ``out`` (e.g. :meth:`OuterOptimizer.grad_buffers`) receives the sum in place, which
    spares a fresh allocation per parameter per step. Arrays from Ray's object store are
    read-only; they are only read here.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        if out is None:
            total = {n: torch.from_numpy(results[0].grad[n]).to(dtype, copy=True) for n in names}
        else:
            total = {n: out[n].copy_(torch.from_numpy(results[0].grad[n])) for n in names}
        for r in results[1:]:
            for n in names:
                total[n] += torch.from_numpy(r.grad[n]).to(dtype)
    return total


class NonFiniteError(DistmetaError, FloatingPointError):
    """A task's loss or meta-gradient is NaN/Inf under ``nan_policy: raise``; the message names the tasks and actors."""


class NonFiniteWarning(RuntimeWarning):
    """Tasks (``skip_task``) or a whole step (``skip_step``) left out because of a NaN/Inf."""


def check_tasks(results: list[GroupResult], specs: list[TaskSpec], step: int) -> None:
    """Every task of the meta-batch came back exactly once, in order: never a silently smaller meta-batch."""
    got = [k for r in results for k in r.tasks]
    want = [task_key(s) for s in specs]
    if got != want:
        lost = sorted(set(want) - set(got))
        twice = sorted({k for k in got if got.count(k) > 1})
        raise DistmetaError(f"step {step}: the backend returned {len(got)} task results for a meta-batch of "
                            f"{len(want)} (missing {lost[:8]}, repeated {twice[:8]}); nothing was applied")


def nan_policy(results: list[GroupResult], n_tasks: int, policy: str, step: int) -> list[tuple[int, int]]:
    """The task keys this step leaves out for a NaN/Inf ([] on the usual path); raises under ``nan_policy: raise``.

    Args:
        results: the step's group results (``bad_tasks``/``skipped`` filled by the workers).
        n_tasks: the meta-batch size.
        policy: ``cfg.nan_policy`` (``raise``, ``skip_task`` or ``skip_step``).
        step: the step's index, for messages.

    Returns:
        The keys of the tasks left out of the update (every task for a skipped step).
    """
    bad = [(k, r.extra.get("actor", 0)) for r in results for k in r.bad_tasks]
    if not bad:
        return []
    where = ", ".join(f"(step {s}, task {t}) on actor {a}" for (s, t), a in bad[:8])
    where += f" and {len(bad) - 8} more" if len(bad) > 8 else ""
    if policy == "raise":
        raise NonFiniteError(
            f"non-finite loss or meta-gradient in task {where}; nan_policy=raise: stopped before the update, "
            f"the parameters are those after {step} steps (nan_policy=skip_task or skip_step goes on past such tasks)")
    if policy == "skip_task" and len(bad) < n_tasks:
        if any(r.skipped != r.bad_tasks for r in results):  # the worker recomputed its groups without them
            raise NonFiniteError(f"nan_policy=skip_task: a worker did not recompute its group without task {where}")
        warnings.warn(f"nan_policy=skip_task: leaving out task {where}; the meta-batch mean divides by "
                      f"{n_tasks - len(bad)} tasks", NonFiniteWarning, stacklevel=3)
        return [k for k, _ in bad]
    warnings.warn(f"nan_policy={policy}: skipping step {step} (no update) for task {where}",
                  NonFiniteWarning, stacklevel=3)
    return [k for r in results for k in r.tasks]
