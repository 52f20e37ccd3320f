"""From the workers' group results to one meta-gradient: the fixed tree sum and what happens to NaNs.

The sum runs over groups in a pairwise tree fixed by the group count whatever computed
them, which is what makes any backend, actor count and node layout give the same parameters. A task whose loss or gradient is
not finite is dealt with by ``nan_policy`` (:func:`nan_policy`) before anything is applied.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch

from distmeta.errors import DistmetaError
from distmeta.groups import reduce_groups
from distmeta.results import GroupResult, all_finite
from distmeta.tasks.specs import TaskSpec, task_key


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


def reduce_and_update(results: Sequence[GroupResult], specs: Sequence[TaskSpec], step: int, policy: str,
                      optimizer: Any, dtype: torch.dtype) -> tuple[list[tuple[int, int]], bool, dict[str, float]]:
    """One step's results into one update: check, ``nan_policy``, the fixed tree sum, the mean, the optimiser.

    Args:
        results: the step's group results, in group order.
        specs: the step's task specs (every one must come back exactly once).
        step: the step index, for error messages.
        policy: ``nan_policy`` (``raise`` raises here, parameters untouched).
        optimizer: the outer optimiser (:class:`~distmeta.optim.OuterOptimizer`); its buffers take the sum.
        dtype: the run's float dtype.

    Returns:
        ``(skipped task keys, whether the parameters were updated, the optimiser's step statistics)``.
    """
    check_tasks(results, list(specs), step)
    skipped = nan_policy(results, len(specs), policy, step)
    if len(skipped) == len(specs):  # skip_step, or every task skipped: no update
        return skipped, False, {}
    # A group whose tasks were all skipped adds its zero gradient: the tree stays the same.
    grad = reduce_groups(results, optimizer.names, dtype, out=optimizer.grad_buffers())
    mean_grad = {n: g.div_(len(specs) - len(skipped)) for n, g in grad.items()}  # the optimiser's own buffers
    if not all_finite(mean_grad.values()):  # finite groups, non-finite sum: never applied
        raise NonFiniteError(f"step {step}: the summed meta-gradient is not finite although every "
                             f"task's is (overflow); stopped before the update")
    return skipped, True, optimizer.step(mean_grad)

