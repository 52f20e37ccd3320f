"""Proto-MAML against a hand-written reference loop and float64 central finite differences."""
from __future__ import annotations

import pytest
import torch

from distmeta.tasks.materialise import split_task
from tests.algorithms.conftest import (
    PATHS,
    assert_matches_finite_differences,
    assert_vmap_equals_loop,
    grad_via,
    make_algorithm,
    random_tasks,
)
from tests.algorithms.references import protomaml_loss, reference_grad

HEAD = ["head.weight", "head.bias"]  # the model's head: for Proto-MAML, "adapt the prototype head only"
ALL = ["body.weight", "body.bias", *HEAD]
ADAPT = {"head": HEAD, "all": ALL}


def make(distance: str, adapt: str, *, steps: int = 2, lr: float = 0.3, first_order: bool = False, **options):
    return make_algorithm("protomaml", steps=steps, lr=lr, adapt=ADAPT[adapt], distance=distance,
                          first_order=first_order, **options)


def reference_kw(distance: str, adapt: str, steps: int, lr: float, first_order: bool = False) -> dict:
    return dict(distance=distance, steps=steps, lr=lr, first_order=first_order, adapt_encoder=adapt == "all")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
@pytest.mark.parametrize("adapt", ["head", "all"])
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_protomaml_gradient_matches_reference_loop(tasks, distance, adapt, first_order, path):
    alg, meta = make(distance, adapt, steps=3, lr=0.4, first_order=first_order)
    assert not any(n.startswith("head.") for n in meta), "the model's head is unused and must not be meta-trained"
    assert ("temperature" in meta) == (distance == "cosine")
    assert alg.head_only == (adapt == "head")
    task = split_task(tasks, 0)
    got, metrics = grad_via(alg, meta, task, path)
    kw = reference_kw(distance, adapt, 3, 0.4, first_order)
    want = reference_grad(protomaml_loss, meta, task, **kw)
    for n in meta:
        torch.testing.assert_close(got[n], want[n], atol=1e-10, rtol=1e-8, msg=n)
        assert float(got[n].abs().sum()) > 1e-8, f"{n} received no meta-gradient"
    leaves = {n: p.clone().requires_grad_(True) for n, p in meta.items()}
    loss, logits = protomaml_loss(leaves, task, **kw)
    torch.testing.assert_close(metrics["loss"], loss.detach())
    torch.testing.assert_close(metrics["accuracy"], (logits.argmax(-1) == task["query_y"]).double().mean())


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("adapt", ["head", "all"])
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_second_order_protomaml_matches_finite_differences(tasks, distance, adapt, path):
    alg, meta = make(distance, adapt, steps=2, lr=0.5)
    task = split_task(tasks, 1)
    got, _ = grad_via(alg, meta, task, path)
    kw = reference_kw(distance, adapt, 2, 0.5)

    def loss_at(params):
        leaves = {n: p.clone().requires_grad_(True) for n, p in params.items()}
        return float(protomaml_loss(leaves, task, **kw)[0].detach())

    assert_matches_finite_differences(got, meta, loss_at, relative=True)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("adapt", ["head", "all"])
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_second_order_differs_from_first_order(tasks, distance, adapt, path):
    # Guards against the second-order path silently dropping the terms through the inner gradients.
    task = split_task(tasks, 0)
    so, _ = grad_via(*make(distance, adapt), task, path)
    fo, _ = grad_via(*make(distance, adapt, first_order=True), task, path)
    assert max(float((so[n] - fo[n]).abs().max()) for n in so) > 1e-4


@pytest.mark.parametrize("case", [("euclidean", "head", False), ("euclidean", "all", True),
                                  ("cosine", "head", True), ("cosine", "all", False)])
def test_vmap_equals_loop_on_a_multi_task_batch(case):
    distance, adapt, first_order = case
    alg, meta = make(distance, adapt, steps=2, first_order=first_order)
    assert_vmap_equals_loop(alg, meta, random_tasks(n_tasks=5), 5)


@pytest.mark.parametrize("adapt", ["head", "all"])
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_task_eval_adapts_for_the_given_steps_then_scores_the_query_set(tasks, distance, adapt):
    alg, meta = make(distance, adapt, steps=1, lr=0.4)
    task = split_task(tasks, 2)
    got = alg.task_eval(meta, task, 4)
    leaves = {n: p.clone().requires_grad_(True) for n, p in meta.items()}
    loss, logits = protomaml_loss(leaves, task, **reference_kw(distance, adapt, 4, 0.4))
    torch.testing.assert_close(got["loss"], loss.detach())
    torch.testing.assert_close(got["accuracy"], (logits.argmax(-1) == task["query_y"]).double().mean())


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_protomaml_without_inner_steps_predicts_as_protonet(distance):
    # Euclidean: the prototype head's logits are ProtoNet's plus ||q||^2 per query, so the
    # predictions and the softmax (hence the loss) are the same; cosine: the logits are equal.
    tasks = random_tasks(n_tasks=6, queries=5, seed=4)
    proto, meta = make_algorithm("protonet", distance=distance)
    pmaml, meta_pm = make(distance, "head", steps=0)
    assert set(meta) == set(meta_pm)
    want = proto.batch_eval(meta, tasks, 0)
    got = pmaml.batch_eval(meta, tasks, 0)
    torch.testing.assert_close(got["accuracy"], want["accuracy"])
    torch.testing.assert_close(got["loss"], want["loss"], atol=1e-12, rtol=1e-10)
    assert 0 < float(want["accuracy"].mean()) < 1
