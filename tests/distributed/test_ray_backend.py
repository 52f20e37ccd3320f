"""The Ray backend gives the single-process trainer's parameters bit for bit, and survives dead, hung and stale actors."""
from __future__ import annotations

import csv
import random
import re

import numpy as np
import pytest
import torch

import distmeta
from distmeta.config import FaultConfig, load_config
from distmeta.distributed.ray_backend import (
    RayBackend,
    WorkerFailedError,
    assign_blocks,
    plan_workers,
    use_compiled_graph,
)
from distmeta.drills.ray_drill import DrilledRayBackend
from distmeta.groups.sizing import MemoryBudgetError
from distmeta.training.backend import Lent, make_backend

SINUSOID = [
    "data.source=sinusoid", "model.name=mlp", "algorithm.name=maml", "train.steps=3", "train.meta_batch=8",
    "algorithm.group_size=2", "run.checkpoint_every=0", "run.eval_every=0", "eval.episodes=10",
    "eval.baseline=false", "run.progress=false", "resources.cpus_per_worker=0.25", "eval.batch=4",
]

WORDS = ("river stone cloud apple engine paper violin garden winter rocket copper forest "
         "silver market doctor island camera letter bridge candle thunder pencil desert "
         "orange window planet tunnel jacket mirror meadow").split()


@pytest.fixture(scope="module")
def text_csv(tmp_path_factory):
    """15 classes x 20 short texts: each class has its own three words among shared fillers."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "tiny.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for c in range(15):
            own = WORDS[2 * c: 2 * c + 2] + [WORDS[(2 * c + 5) % len(WORDS)]]
            for _ in range(20):
                words = [rng.choice(own) for _ in range(3)] + [rng.choice(WORDS) for _ in range(2)]
                rng.shuffle(words)
                w.writerow([" ".join(words), f"class_{c:02d}"])
    return path


def protonet_overrides(path) -> list[str]:
    return [
        f"data.source=csv:{path}", "model.name=bag", "model.dim=16", "tokenizer.vocab_size=200",
        "algorithm.name=protonet", "data.small_classes=drop", "data.ways=3", "data.shots=1", "data.queries=3",
        "eval.settings=[[3,1]]", "eval.queries=3", "train.steps=3", "train.meta_batch=6", "algorithm.group_size=2",
        "run.checkpoint_every=0", "run.eval_every=0", "eval.episodes=10", "eval.baseline=false",
        "run.progress=false", "resources.cpus_per_worker=0.25", "eval.batch=4",
    ]


@pytest.fixture(scope="module")
def actor_pools(ray_local):
    """One RayBackend per actor count, kept for the module and closed at its end.

    An actor costs seconds to start (a Python process importing torch); the runs of this
    module share them: the first run with N actors builds the backend as ``make_backend``
    does, later runs call :meth:`RayBackend.reconfigure` (every Worker rebuilt for the
    new config from a new object-store entry, as after a restart).
    """
    pools: dict[int, RayBackend] = {}
    yield pools
    for backend in pools.values():
        backend.close()
        assert backend.actors == [] and ray_local.is_initialized(), "close() kills the actors, leaves a reused Ray up"


def pooled_backend(pools: dict[int, RayBackend], cfg, exp) -> RayBackend:
    """The module's backend with ``cfg.resources.workers`` actors, built as the driver does or rebuilt for ``cfg``."""
    if cfg.resources.workers in pools:
        pools[cfg.resources.workers].reconfigure(cfg, exp.worker_args())
    else:
        pools[cfg.resources.workers] = make_backend(cfg, exp)
    assert isinstance(pools[cfg.resources.workers], RayBackend)
    return pools[cfg.resources.workers]


@pytest.fixture
def pooled(actor_pools):
    """A ``backend_factory`` lending the module's backends (in-process for ``workers: 0``); ``.pools`` holds them."""

    def factory(cfg, exp):
        if cfg.resources.workers == 0:
            return make_backend(cfg, exp)
        return Lent(pooled_backend(actor_pools, cfg, exp))

    factory.pools = actor_pools
    return factory


def train(run_dir, overrides: list[str], workers: int, backend_factory=None):
    """Meta-train; return final parameters, meta-test results and the actors of the last step's results."""
    cfg = load_config(None, overrides + [f"resources.workers={workers}", f"run.dir={run_dir}"])
    with distmeta.Trainer(cfg, backend_factory=backend_factory) as trainer:
        results = trainer.fit()
        actors = sorted(trainer.backend.stats().actor_compute_s) if workers else []
        return trainer.meta_params, results["test"], actors


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys()
    for n in a:
        assert a[n].dtype == b[n].dtype
        assert torch.equal(a[n], b[n]), f"{what}: parameter {n} differs (max |diff| {(a[n] - b[n]).abs().max():.3g})"


# ---------------------------------------------------------------------- no Ray needed


def test_compiled_graph_only_on_the_drivers_node_and_by_default_only_for_gpu_actors():
    here, there = "node-a", "node-b"
    assert use_compiled_graph("auto", 1.0, [here, here], here)
    assert use_compiled_graph("auto", 0.5, [here], here), "fractional GPUs count as GPU actors"
    assert not use_compiled_graph("auto", 0.0, [here, here], here), "CPU actors: spinning readers steal their cores"
    assert use_compiled_graph(True, 0.0, [here, here], here)
    assert not use_compiled_graph(False, 1.0, [here], here)
    for setting in (True, "auto"):
        assert not use_compiled_graph(setting, 1.0, [here, there], here), "never across nodes"


def test_blocks_are_contiguous_balanced_and_cover_every_group_once():
    for groups in range(0, 12):
        for actors in range(1, 6):
            blocks = assign_blocks(groups, actors)
            assert len(blocks) == actors
            assert [i for b in blocks for i in b] == list(range(groups))
            sizes = [len(b) for b in blocks]
            assert max(sizes) - min(sizes) <= 1
    assert assign_blocks(4, 3) == [range(0, 1), range(1, 2), range(2, 4)]


def test_auto_workers_one_per_gpu_else_per_cpu_share():
    cfg = load_config(None, SINUSOID + ["resources.workers=auto", "resources.cpus_per_worker=2"])
    assert plan_workers(cfg.resources, {"CPU": 8.0}) == (4, 2.0, 0.0)
    assert plan_workers(cfg.resources, {"CPU": 16.0, "GPU": 4.0}) == (4, 2.0, 1.0)
    half = load_config(None, SINUSOID + ["resources.workers=auto", "resources.cpus_per_worker=1", "resources.gpus_per_worker=0.5"])
    assert plan_workers(half.resources, {"CPU": 16.0, "GPU": 2.0}) == (4, 1.0, 0.5)
    assert plan_workers(load_config(None, SINUSOID + ["resources.workers=3"]).resources, {"CPU": 1.0}) == (3, 0.25, 0.0)


# ---------------------------------------------------------------------- bit-identical training


@pytest.mark.ray
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("transport", ["shared-memory", "object-store", "compiled-graph"])
def test_maml_sinusoid_bit_identical_for_any_actor_count(pooled, tmp_path, dtype, transport, monkeypatch):
    from distmeta.distributed import transport as ray_transport

    monkeypatch.setattr(ray_transport, "INLINE_META_BYTES", 0)  # the meta-parameters too take the transport's way
    graph, shm = transport == "compiled-graph", transport == "shared-memory"
    overrides = SINUSOID + [f"dtype={dtype}", f"ray.compiled_graph={str(graph).lower()}",
                            f"ray.shared_memory={str(shm).lower()}"]
    ref, ref_test, _ = train(tmp_path / "local", overrides, workers=0)
    assert ref["head.weight"].dtype == getattr(torch, dtype)
    for n in (1, 2, 3):
        params, test, actors = train(tmp_path / f"ray{n}", overrides, workers=n, backend_factory=pooled)
        assert actors == list(range(n)), "every actor computed a block"
        step = pooled.pools[n].stats()
        assert step.compiled_graph == graph, "the step went the way the config asks"
        assert step.shared_memory_calls == (step.calls if shm else 0)
        assert_bit_identical(ref, params, f"{n} actors vs workers=0 ({dtype})")
        assert test == ref_test, "meta-test through the actors equals the in-process evaluation"


@pytest.mark.ray
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_protonet_text_bit_identical_for_any_actor_count(pooled, tmp_path, text_csv, dtype):
    overrides = protonet_overrides(text_csv) + [f"dtype={dtype}"]
    ref, ref_test, _ = train(tmp_path / "local", overrides, workers=0)
    for n in (1, 2, 3):
        params, test, actors = train(tmp_path / f"ray{n}", overrides, workers=n, backend_factory=pooled)
        assert actors == list(range(n))
        step = pooled.pools[n].stats()
        assert not step.compiled_graph, "ray.compiled_graph=auto: plain calls for CPU actors"
        assert step.shared_memory_calls == step.calls == n, "gradients through shared memory, meta inline"
        assert_bit_identical(ref, params, f"{n} actors vs workers=0 ({dtype})")
        assert test == ref_test


@pytest.mark.ray
@pytest.mark.parametrize("algorithm", ["imaml", "fomaml"])  # implicit MAML; first order's straight-through step
def test_more_algorithms_bit_identical_for_any_actor_count(pooled, tmp_path, algorithm):
    overrides = SINUSOID + [f"algorithm.name={algorithm}", "dtype=float32", "algorithm.inner_lr=0.01"]
    ref, ref_test, _ = train(tmp_path / "local", overrides, workers=0)
    for n in (1, 2):
        params, test, actors = train(tmp_path / f"ray{n}", overrides, workers=n, backend_factory=pooled)
        assert actors == list(range(n))
        assert_bit_identical(ref, params, f"{algorithm}: {n} actors vs workers=0")
        assert test == ref_test


# ---------------------------------------------------------------------- faults


def _groups(cfg, step: int = 0):
    from distmeta.experiment import prepare_experiment
    from distmeta.groups import chunks

    exp = prepare_experiment(cfg)
    specs = exp.sampler("train").batch(step, cfg.train.meta_batch)
    return exp, [specs[r.start: r.stop] for r in chunks(len(specs), cfg.algorithm.group_size)]


def _same(a, b) -> None:
    assert [r.tasks for r in a] == [r.tasks for r in b]
    for x, y in zip(a, b):
        assert x.grad.keys() == y.grad.keys()
        assert all(np.array_equal(x.grad[n], y.grad[n]) for n in x.grad)
        assert x.metrics == y.metrics


@pytest.mark.ray
@pytest.mark.parametrize("transport", ["shared-memory", "compiled-graph"])
def test_dead_hung_and_stale_actors_are_recomputed_once_then_named(ray_local, transport, monkeypatch):
    from distmeta.distributed import transport as ray_transport

    monkeypatch.setattr(ray_transport, "INLINE_META_BYTES", 0)  # meta-parameters through shared memory too
    # The compiled graph's failures (a death, a hang, a raise) are pinned on their actor as well.
    graph = str(transport == "compiled-graph").lower()
    cfg = load_config(None, SINUSOID + ["resources.workers=2", "ray.step_timeout=120", "ray.max_retries=2", f"ray.compiled_graph={graph}"])
    exp, groups = _groups(cfg)
    meta = {n: t.numpy() for n, t in distmeta.Worker(cfg).initial_meta.items()}
    # The drilled backend make_backend builds for a config with faults; its drill is replaced as the test goes.
    backend = DrilledRayBackend(cfg, exp.worker_args())
    try:
        _drill(backend, graph == "true", meta, groups)
    finally:
        backend.close()


def _drill(backend, compiled: bool, meta, groups) -> None:
    """Faults of every kind on a warm two-actor backend: each block re-run once, then a clear error."""
    f0 = len(backend.failures)
    assert backend.num_workers == 2 and all(i["device"] == "cpu" and i["threads"] == 1 for i in backend.infos)
    ref = backend.compute(meta, groups, version=5)
    assert [r.extra["actor"] for r in ref] == [0, 0, 1, 1]  # 4 groups, contiguous blocks
    assert all(r.version == 5 for r in ref)
    stats = backend.stats()
    assert stats.meta_bytes == sum(v.nbytes for v in meta.values())
    assert stats.calls == 2 and stats.retries == 0
    assert (stats.compiled_graph, stats.shared_memory_calls) == ((True, 0) if compiled else (False, 2))
    pid1 = backend.infos[1]["pid"]

    for kind in ("exit", "stale", "stall"):
        if kind == "stall":
            backend.ray_cfg.step_timeout = 5.0  # warm now: a short deadline keeps the test short
        backend.set_faults([FaultConfig(kind=kind, actor=1, step=5, seconds=60.0)])
        got = backend.compute(meta, groups, version=5)
        _same(ref, got)
        assert backend.stats().retries == 1, kind
        assert [r.extra["actor"] for r in got] == [0, 0, 0, 0], f"{kind}: block 1 re-ran on actor 0"
        assert backend.failures[-1]["actor"] == 1 and backend.failures[-1]["groups"] == (2, 4)
        backend.wait_ready(120)  # actor 1 restarted (exit, hang) before the next fault
    # Back to the long deadline: the next step rebuilds the compiled graph, which took over 5 s in a
    # loaded full run and had actor 0's block re-run on actor 1.
    backend.ray_cfg.step_timeout = 120.0
    failures = backend.failures[f0:]
    assert "Actor" in failures[0]["reason"]  # ActorDiedError / ActorUnavailableError
    assert "stale" in failures[1]["reason"] and "within ray.step_timeout" in failures[2]["reason"]

    # The dead and the killed actor came back (new processes, Worker rebuilt from the object store).
    after = backend.compute(meta, groups, version=6)
    assert [r.extra["actor"] for r in after] == [0, 0, 1, 1] and after[2].extra["pid"] != pid1
    assert backend.stats().retries == 0
    evals = backend.evaluate(meta, groups, inner_steps=1)
    assert [len(e["loss"]) for e in evals] == [len(g) for g in groups]

    # A block that fails on every attempt: a clear error naming actors and tasks.
    backend.set_faults([FaultConfig(kind="stale", actor="all", step=7, times=10)])
    with pytest.raises(WorkerFailedError) as err:
        backend.compute(meta, groups, version=7)
    msg = str(err.value)
    assert "ray.max_retries=2" in msg and "actor 0" in msg and "actor 1" in msg
    assert re.search(r"groups (0\.\.1|2\.\.3) = tasks \(step 0, task [04]\)", msg), msg

    # An exception raised by the compute itself is not retried: it would fail again. Both actors
    # are suspect after step 7 and a step gives blocks only to those that answered since, so wait
    # for both: otherwise actor 0's block could go to actor 1 and the fault would never fire.
    backend.wait_ready(120)
    backend.set_faults([FaultConfig(kind="raise", actor=0, step=8)])
    with pytest.raises(WorkerFailedError, match="injected fault in actor 0"):
        backend.compute(meta, groups, version=8)


@pytest.mark.ray
def test_impossible_request_fails_fast_and_names_resources(ray_local):
    from distmeta.errors import ConfigError

    cfg = load_config(None, SINUSOID + ["resources.workers=3", "resources.cpus_per_worker=1"])
    with pytest.raises(ConfigError, match=r"needs 3 x \(cpus_per_worker=1"):
        RayBackend(cfg, {})


# ---------------------------------------------------------------------- multi-node


@pytest.mark.ray
def test_two_node_cluster_spreads_actors_and_matches_one_node(tmp_path):
    """Own Ray (a 2-node ``cluster_utils.Cluster``), so in a subprocess; the session's Ray is left alone."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("ray_cluster_check.py")
    overrides = [o for o in SINUSOID if not o.startswith("resources.cpus_per_worker")]
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), *overrides],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ref, _, _ = train(tmp_path / "local", overrides, workers=0)  # meanwhile, the one-process reference
    stdout, stderr = proc.communicate(timeout=400)
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, stdout[-3000:] + stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert len(set(out["actor_nodes"])) == 2, "SPREAD put one actor on each node (either could hold both)"
    assert out["result_nodes"] == out["actor_nodes"], "the results' extra names the node of each actor"
    assert out["compiled_graph"] is False, "actors off the driver's node get plain calls, not the compiled graph"
    assert_bit_identical(ref, torch.load(tmp_path / "params.pt"), "2 actors on 2 nodes vs workers=0")
    assert out["ray_initialized_after_close"] is False, "a connection this backend opened is closed with it"


@pytest.mark.ray
def test_three_nodes_sum_their_own_groups_and_give_the_in_process_parameters(tmp_path):
    """Own Ray (a 3-node ``cluster_utils.Cluster``), so in a subprocess; the references are computed here meanwhile.

    Four actors over three nodes, eight groups: every node other than the driver's sums its
    groups in the reduction tree's order; the parameters equal the in-process run's bit for
    bit in float32 and float64, and fewer gradient bytes reach the driver than without.
    """
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("ray_tree_check.py")
    overrides = [o for o in SINUSOID if not o.startswith(("resources.cpus_per_worker", "train.meta_batch"))] + ["train.meta_batch=16"]
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), *overrides],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    refs = {dtype: train(tmp_path / f"local-{dtype}", overrides + [f"dtype={dtype}"], workers=0)[0]
            for dtype in ("float32", "float64")}
    stdout, stderr = proc.communicate(timeout=600)
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, stdout[-3000:] + stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    tree = out["float32-tree"]
    remote = {n for n in tree["actor_nodes"] if n != tree["driver_node"]}
    assert len(set(tree["actor_nodes"])) == 3, "SPREAD put actors on all three nodes"
    assert tree["node_sums"] == len(remote), "every node but the driver's summed its own groups"
    assert out["float32-flat"]["node_sums"] == 0
    assert tree["result_bytes"] < out["float32-flat"]["result_bytes"], "fewer gradient bytes into the driver"
    for dtype in ("float32", "float64"):
        assert_bit_identical(refs[dtype], torch.load(tmp_path / f"{dtype}-tree.pt"), f"3 nodes, node sums ({dtype})")
    assert_bit_identical(refs["float32"], torch.load(tmp_path / "float32-flat.pt"), "3 nodes, driver sums (float32)")


@pytest.mark.ray
def test_a_node_that_joins_mid_run_gets_actors_and_the_parameters_do_not_change(tmp_path):
    """Own Ray (a ``cluster_utils.Cluster`` that gains a node after step 1), so in a subprocess.

    ``workers: auto`` starts with the two actors one node holds; the second node's two
    actors take blocks from step 2 on, and the parameters equal the in-process run's.
    """
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("ray_elastic_check.py")
    overrides = [o for o in SINUSOID if not o.startswith(("resources.cpus_per_worker", "train.steps"))] + ["train.steps=4"]
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), *overrides],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ref, _, _ = train(tmp_path / "local", overrides, workers=0)
    stdout, stderr = proc.communicate(timeout=600)
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, stdout[-3000:] + stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["joined"] == [2], "the new node's capacity became two actors"
    assert [s["actors"] for s in out["steps"]] == [[0, 1], [0, 1], [0, 1, 2, 3], [0, 1, 2, 3]]
    assert len(out["steps"][0]["nodes"]) == 1 and len(out["steps"][-1]["nodes"]) == 2
    assert_bit_identical(ref, torch.load(tmp_path / "params.pt"), "pool grown mid-run vs workers=0")


# ---------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.ray
def test_gpu_actor_keeps_replica_on_cuda_and_matches_cpu(ray_local, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    overrides = SINUSOID + ["dtype=float64"]
    cpu, _, _ = train(tmp_path / "cpu", overrides + ["resources.device=cpu"], workers=0)
    cfg = load_config(None, overrides + ["resources.workers=1", "resources.gpus_per_worker=1", f"run.dir={tmp_path / 'gpu'}"])
    with distmeta.Trainer(cfg) as trainer:
        trainer.fit()
        assert trainer.backend.infos[0]["device"].startswith("cuda")
        gpu = trainer.meta_params
    for n in cpu:
        assert gpu[n].device.type == "cpu"
        torch.testing.assert_close(gpu[n], cpu[n], rtol=1e-9, atol=1e-9)


@pytest.mark.ray
def test_group_size_auto_is_measured_in_the_actors_not_the_driver(pooled, tmp_path, monkeypatch):
    """The budget is per actor, on the actor's device: the driver builds no Worker to measure with."""
    from distmeta import worker as worker_module

    overrides = SINUSOID + ["dtype=float64"]
    ref, _, _ = train(tmp_path / "local", overrides + ["algorithm.group_size=8"], workers=0)

    def no_driver_worker(*args, **kwargs):
        raise AssertionError("a Worker was built in the driver process")

    monkeypatch.setattr(worker_module.Worker, "__init__", no_driver_worker)
    cfg = load_config(None, overrides + ["resources.workers=2", "algorithm.group_size=auto", "algorithm.memory_budget_mb=4096",
                                         f"run.dir={tmp_path / 'ray'}"])
    with distmeta.Trainer(cfg, backend_factory=pooled) as trainer:
        trainer.fit()
        assert trainer.group_size == 8, "the whole meta-batch fits 4 GB"
        assert_bit_identical(ref, trainer.meta_params, "group_size auto on 2 actors vs a fixed 8 in-process")
    cfg = load_config(None, overrides + ["resources.workers=2", "algorithm.group_size=auto", "algorithm.memory_budget_mb=0.000001",
                                         f"run.dir={tmp_path / 'tiny'}"])
    with distmeta.Trainer(cfg, backend_factory=pooled) as trainer:
        with pytest.raises(MemoryBudgetError, match=r"group of 1 task peaks at .* MB, over algorithm.memory_budget_mb=1e-06"):
            trainer.fit()


@pytest.mark.ray
def test_group_peak_on_a_gpu_actor_reads_the_gpu(ray_local, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cfg = load_config(None, SINUSOID + ["resources.workers=1", "resources.gpus_per_worker=1", "algorithm.group_size=auto",
                                        "algorithm.memory_budget_mb=64", f"run.dir={tmp_path / 'gpu'}"])
    with distmeta.Trainer(cfg) as trainer:
        driver_peak = torch.cuda.max_memory_allocated()
        trainer.fit()
        assert trainer.backend.infos[0]["device"].startswith("cuda")
        assert trainer.group_size >= 1
        assert torch.cuda.max_memory_allocated() == driver_peak, "the driver allocated nothing on its GPU to measure"
