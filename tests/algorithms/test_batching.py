"""The vmap path and the loop path compute the same sums and metrics."""
from __future__ import annotations

import pytest
import torch

from distmeta.tasks.materialise import split_task
from tests.algorithms.conftest import (
    assert_vmap_equals_loop,
    make_algorithm,
    random_tasks,
)


@pytest.mark.parametrize("name", ["maml", "fomaml", "anil", "metasgd", "reptile", "protonet", "protomaml", "imaml"])
def test_vmap_equals_loop(name):
    alg, meta = make_algorithm(name, steps=2)
    assert_vmap_equals_loop(alg, meta, random_tasks(n_tasks=5), 5)


def test_batch_grad_is_the_sum_of_task_grads():
    tasks = random_tasks(n_tasks=4)
    alg, meta = make_algorithm("maml", steps=1)
    total, _ = alg.batch_grad(meta, tasks, use_vmap=True)
    parts = [alg.task_grad(meta, split_task(tasks, t))[0] for t in range(4)]
    for n in meta:
        torch.testing.assert_close(total[n], sum(p[n] for p in parts), atol=1e-12, rtol=1e-10)
