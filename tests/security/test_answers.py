"""Item 5: malformed actor answers are failed attempts that name the actor; versions are checked at start-up."""
from __future__ import annotations

import numpy as np
import pytest

import distmeta
from distmeta.config import load_config
from distmeta.distributed import answers
from distmeta.distributed import ray_backend as actors
from distmeta.distributed.wire import unpack
from distmeta.tasks.specs import task_key
from distmeta.worker import GroupResult
from tests.distributed.test_ray_backend import SINUSOID


def result(grad, tasks, version=0):
    return GroupResult(grad=grad, metrics={"loss": [0.0] * len(tasks)}, tasks=tasks, version=version,
                       extra={"actor": 0, "node": "n", "pid": 1, "actor_compute_s": 0.0})


def test_gradients_must_match_the_meta_parameters_names_shapes_and_dtypes():
    spec = answers.meta_spec({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)})
    tasks = [(0, 0)]

    class S:  # a task spec with the key (0, 0)
        step, index = 0, 0

    groups = [[S()]]
    if task_key(S()) != (0, 0):
        pytest.skip("task_key shape changed")
    ok = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}
    assert answers.group_results_problem(range(1), [result(ok, tasks)], groups, 0, spec) is None
    for bad, needle in [({**ok, "w": np.zeros((1,), np.float32)}, "shape"),
                        ({**ok, "b": np.zeros(2, np.float64)}, "float64"),
                        ({"w": ok["w"]}, "missing ['b']"),
                        ({**ok, "x": ok["b"]}, "unexpected ['x']"),
                        ({**ok, "b": [0.0, 0.0]}, "not an array")]:
        problem = answers.group_results_problem(range(1), [result(bad, tasks)], groups, 0, spec)
        assert problem is not None and (needle in problem or "float32[1]" in problem), (needle, problem)
    assert "not a GroupResult" in answers.group_results_problem(range(1), ["junk"], groups, 0, spec)


def test_shared_memory_byte_counts_stay_inside_the_region():
    given = ("/dev/shm/x", 4096, 1000)
    assert answers.shm_answer_problem((b"h", ("/dev/shm/x", 4096, 1000)), given) is None
    assert "1001 bytes" in answers.shm_answer_problem((b"h", ("/dev/shm/x", 4096, 1001)), given)
    assert answers.shm_answer_problem((b"h", ("/dev/shm/x", 4096, -1)), given) is not None
    assert "not given" in answers.shm_answer_problem((b"h", ("/dev/shm/y", 0, 10)), given)


def test_version_check_names_the_actor_and_versions():
    mine = answers.local_versions()
    answers.check_versions([{**mine, "node": "a"}])
    with pytest.raises(answers.VersionMismatchError, match=r"actor 1 \(node b\) runs torch 2\.0\.0"):
        answers.check_versions([{**mine, "node": "a"}, {**mine, "torch_version": "2.0.0", "node": "b"}])


@pytest.mark.ray
def test_a_wrong_shape_gradient_is_retried_never_applied(ray_local, tmp_path, monkeypatch):
    cfg = load_config(None, [*SINUSOID, "resources.workers=2", "ray.shared_memory=false", f"run.dir={tmp_path}"])
    from distmeta.experiment import prepare_experiment

    exp = prepare_experiment(cfg, tmp_path)
    backend = actors.RayBackend(cfg, exp.worker_args())
    try:
        meta = {n: t.numpy() for n, t in backend.initial_meta.items()}
        specs = exp.sampler("train").batch(0, 8)
        groups = [specs[i: i + 2] for i in range(0, 8, 2)]
        clean = backend.compute(meta, groups, version=0)
        mangled = []

        def hostile_unpack(packed):  # the first answer arrives with one gradient of the wrong shape
            value = unpack(packed)
            if not mangled and isinstance(value, list) and value and isinstance(value[0], GroupResult):
                name = next(iter(value[0].grad))
                value[0].grad[name] = np.zeros(1, value[0].grad[name].dtype)
                mangled.append(name)
            return value

        monkeypatch.setattr(answers, "unpack", hostile_unpack, raising=False)
        got = backend.compute(meta, groups, version=0)
        assert mangled and len(backend.failures) == 1, backend.failures
        failure = backend.failures[0]
        assert failure["actor"] in (0, 1) and mangled[0] in failure["reason"] and "[1]" in failure["reason"], failure
        for a, b in zip(clean, got):
            for n in a.grad:
                np.testing.assert_array_equal(a.grad[n], b.grad[n])
    finally:
        backend.close()


@pytest.mark.ray
def test_actors_of_another_distmeta_version_are_refused_at_start(ray_local, tmp_path, monkeypatch):
    cfg = load_config(None, [*SINUSOID, "resources.workers=1", f"run.dir={tmp_path}"])
    from distmeta.experiment import prepare_experiment

    exp = prepare_experiment(cfg, tmp_path)
    monkeypatch.setattr(answers, "__version__", "99.0.0")  # the driver's; the actors import the real one
    with pytest.raises(distmeta.DistmetaError, match=r"actor 0 .*distmeta 0\.1\.0"):
        actors.RayBackend(cfg, exp.worker_args()).close()
