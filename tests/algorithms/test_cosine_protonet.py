"""Cosine ProtoNet with a learned temperature, and :func:`centroid_logits`, against hand-written references."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import vmap

from distmeta.algorithms import centroid_logits
from distmeta.tasks.materialise import split_task
from tests.algorithms.conftest import PATHS, grad_via, make_algorithm, random_tasks
from tests.algorithms.references import protonet_loss, reference_grad, reference_logits


@pytest.mark.parametrize("path", PATHS)
def test_cosine_protonet_gradient_matches_reference_including_temperature(tasks, path):
    alg, meta = make_algorithm("protonet", distance="cosine", temperature=7.0)
    assert set(meta) == {"body.weight", "body.bias", "temperature"}
    assert meta["temperature"].shape == (1,) and float(meta["temperature"]) == 7.0
    task = split_task(tasks, 1)
    got, metrics = grad_via(alg, meta, task, path)
    want = reference_grad(protonet_loss, meta, task, distance="cosine")
    for n in meta:
        torch.testing.assert_close(got[n], want[n], atol=1e-10, rtol=1e-8, msg=n)
    assert abs(float(got["temperature"])) > 1e-6, "the temperature received no gradient"
    loss, logits = protonet_loss(meta, task, "cosine")
    torch.testing.assert_close(metrics["loss"], loss)
    torch.testing.assert_close(metrics["accuracy"], (logits.argmax(-1) == task["query_y"]).double().mean())


@pytest.mark.parametrize("path", PATHS)
def test_cosine_protonet_with_a_fixed_temperature_has_no_extra_meta_parameter(tasks, path):
    alg, meta = make_algorithm("protonet", distance="cosine", temperature=4.0, learn_temperature=False)
    assert set(meta) == {"body.weight", "body.bias"}
    task = split_task(tasks, 0)
    got, _ = grad_via(alg, meta, task, path)
    want = reference_grad(protonet_loss, meta, task, distance="cosine", temperature=4.0)
    for n in meta:
        torch.testing.assert_close(got[n], want[n], atol=1e-10, rtol=1e-8, msg=n)


def test_euclidean_protonet_has_no_temperature():
    _, meta = make_algorithm("protonet", distance="euclidean", temperature=3.0)
    assert "temperature" not in meta


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_centroid_logits_match_reference_and_run_under_vmap(distance):
    g = torch.Generator().manual_seed(5)
    support = torch.randn(4, 6, 5, generator=g, dtype=torch.float64)
    query = torch.randn(4, 7, 5, generator=g, dtype=torch.float64)
    support_y = torch.tensor([0, 1, 2, 0, 1, 2]).repeat(4, 1)
    scale = torch.tensor([2.5], dtype=torch.float64)
    batched = centroid_logits(support, support_y, query, 3, distance, scale)
    mapped = vmap(lambda s, y, q: centroid_logits(s, y, q, 3, distance, scale))(support, support_y, query)
    torch.testing.assert_close(mapped, batched, atol=1e-12, rtol=1e-12)
    for t in range(4):
        want = reference_logits(support[t], support_y[t], query[t], distance, 2.5)
        if distance == "euclidean":
            want = 2.5 * want
        torch.testing.assert_close(batched[t], want, atol=1e-10, rtol=1e-10)


def test_cosine_one_shot_is_nearest_neighbour_by_cosine():
    g = torch.Generator().manual_seed(11)
    support = torch.randn(5, 8, generator=g, dtype=torch.float64) * torch.rand(5, 1, generator=g, dtype=torch.float64) * 10
    support_y = torch.tensor([3, 0, 4, 1, 2])  # one example per class, shuffled
    query = torch.randn(40, 8, generator=g, dtype=torch.float64)
    logits = centroid_logits(support, support_y, query, 5, "cosine")
    sims = F.cosine_similarity(query[:, None, :], support[None, :, :], dim=-1)  # [Q, support example]
    torch.testing.assert_close(logits[:, support_y], sims, atol=1e-12, rtol=1e-12)
    assert torch.equal(logits.argmax(-1), support_y[sims.argmax(-1)])


def test_cosine_protonet_one_shot_accuracy_is_nearest_neighbour():
    tasks = random_tasks(n_tasks=4, shots=1, queries=6, seed=9)
    alg, meta = make_algorithm("protonet", distance="cosine")
    got = alg.batch_eval(meta, tasks, 0)["accuracy"]
    body = {n: meta[n] for n in ("body.weight", "body.bias")}
    for t in range(4):
        s = torch.tanh(tasks["support_x"][t] @ body["body.weight"].T + body["body.bias"])
        q = torch.tanh(tasks["query_x"][t] @ body["body.weight"].T + body["body.bias"])
        nearest = F.cosine_similarity(q[:, None, :], s[None, :, :], dim=-1).argmax(-1)
        want = (tasks["support_y"][t][nearest] == tasks["query_y"][t]).double().mean()
        torch.testing.assert_close(got[t], want)


def test_model_params_leave_out_algorithm_owned_parameters_after_copy():
    # The worker copies the algorithm per number of ways; the copy must still know its own parameters.
    for name, options, own in [("protonet", {"distance": "cosine"}, {"temperature"}),
                               ("protomaml", {"distance": "cosine"}, {"temperature"}),
                               ("metasgd", {}, {"lr.body.weight", "lr.body.bias", "lr.head.weight", "lr.head.bias"})]:
        alg, meta = make_algorithm(name, **options)
        other = copy.copy(alg)
        other.ways = 2
        for a in (alg, other):
            assert set(meta) - set(a.model_params(meta)) == own, name
            assert a.own_meta_names == own
