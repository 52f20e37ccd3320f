"""The vmap path and the loop path compute the same sums and metrics."""
from __future__ import annotations

import pytest
import torch

from distmeta.tasks.materialise import split_task
from tests.algorithms.conftest import make_algorithm, random_tasks


@pytest.mark.parametrize("name", ["maml", "fomaml", "anil", "metasgd", "reptile", "protonet", "protomaml"])
def test_vmap_equals_loop(name):
    tasks = random_tasks(n_tasks=5)
    alg, meta = make_algorithm(name, steps=2)
    g_vmap, m_vmap = alg.batch_grad(meta, tasks, use_vmap=True)
    g_loop, m_loop = alg.batch_grad(meta, tasks, use_vmap=False)
    for n in meta:
        torch.testing.assert_close(g_vmap[n], g_loop[n], atol=1e-12, rtol=1e-10, msg=n)
    for k in m_loop:
        torch.testing.assert_close(m_vmap[k], m_loop[k], atol=1e-12, rtol=1e-10)
    assert m_loop["loss"].shape == (5,)
    e_vmap = alg.batch_eval(meta, tasks, 3, use_vmap=True)
    e_loop = alg.batch_eval(meta, tasks, 3, use_vmap=False)
    torch.testing.assert_close(e_vmap["accuracy"], e_loop["accuracy"])
    torch.testing.assert_close(e_vmap["loss"], e_loop["loss"])


def test_batch_grad_is_the_sum_of_task_grads():
    tasks = random_tasks(n_tasks=4)
    alg, meta = make_algorithm("maml", steps=1)
    total, _ = alg.batch_grad(meta, tasks, use_vmap=True)
    parts = [alg.task_grad(meta, split_task(tasks, t))[0] for t in range(4)]
    for n in meta:
        torch.testing.assert_close(total[n], sum(p[n] for p in parts), atol=1e-12, rtol=1e-10)
