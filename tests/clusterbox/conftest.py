"""Tests on a cluster in a box (:mod:`clusterbox`): Ray nodes in namespaces of their own.

Opt in with ``make test-cluster`` (``pytest -m cluster tests/clusterbox``): they need root and
iproute2 and take minutes. Every test is bounded: a driver that does not finish in time is
killed and the test fails (never hangs); the box is removed by namespace whatever happens.
"""
from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from clusterbox import NetCluster, Spec, unavailable_reason

DRIVER = "tests/clusterbox/driver.py"
#: The from-scratch config (no pretrained weights); tests override what they need.
BAG = "configs/bag_protonet.yaml"
#: Sinusoid MAML, 16 tasks in 8 groups of 2: every node gets blocks; seconds per step on 2 CPUs.
SINUSOID = ["data.source=sinusoid", "model.name=mlp", "algorithm.name=maml", "data.shots=5", "data.queries=5",
            "train.meta_batch=16", "algorithm.group_size=2", "eval.episodes=10", "eval.batch=5",
            "run.progress=false", "run.eval_every=0", "eval.baseline=false", "run.log_every=1"]


def make_box(spec: Spec) -> NetCluster:
    """A started box, or a skip naming why none can be made here."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    return NetCluster(spec).start()


@pytest.fixture(scope="module")
def box():
    """Head + 2 worker nodes, 1 logical CPU each, 1 Gbit/s links, S3 on the head; removed after the module."""
    cluster = make_box(Spec(workers=2, head_cpus=1, cpus_per_node=1, rate="1gbit"))
    yield cluster
    cluster.close()


@dataclass
class Drive:
    """What a driver run reported."""

    steps: list[dict] = field(default_factory=list)
    result: dict | None = None
    error: dict | None = None
    params: dict[str, torch.Tensor] | None = None
    log: list[str] = field(default_factory=list)

    def tail(self) -> str:
        """The driver's last output lines, for assertion messages."""
        return "\n".join(self.log[-60:])


def drive(box: NetCluster, name: str, overrides: list[str], *, node: str = "head",
          faults: dict[int, Callable[[], Any]] | None = None, timeout: float = 300, resume: bool = False,
          config: str = BAG) -> Drive:
    """Run :data:`DRIVER` on ``node`` of ``box``; apply ``faults[step]()`` after ``step``; bounded by ``timeout``.

    Args:
        box: the cluster.
        name: the run's name (its parameters go to ``/tmp/out/<name>.pt`` on the node).
        overrides: config overrides (``ray.address`` is added).
        node: where the driver runs.
        config: the config file the overrides apply to.
        faults: step -> a callable run while the driver waits after that step.
        timeout: seconds before the driver is killed and the test fails.
        resume: pass ``--resume``.

    Returns:
        The steps, the result or error, and the saved parameters.
    """
    faults = faults or {}
    out = f"/tmp/out/{name}.pt"
    argv = ["python", DRIVER, "--out", out, "--pause", ",".join(map(str, sorted(faults)))]
    argv += ["--config", config] + (["--resume"] if resume else [])
    argv += ["--", *overrides, f"ray.address={box.address}"]
    proc = box.popen(node, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout] + [lines.put(None)], daemon=True).start()
    run, deadline = Drive(), time.monotonic() + timeout
    try:
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"driver {name} still running after {timeout:.0f} s:\n{run.tail()}") from None
            if line is None:
                break
            line = line.rstrip("\n")
            run.log.append(line)
            head, _, body = line.partition(" ")
            if head == "STEP":
                run.steps.append(json.loads(body))
            elif head == "PAUSE":
                faults[int(body)]()
                proc.stdin.write("go\n")
                proc.stdin.flush()
            elif head == "RESULT":
                run.result = json.loads(body)
            elif head == "ERROR":
                run.error = json.loads(body)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            box.kill(proc)
            proc.wait()
    path = box.nodes[node].tmp / "out" / f"{name}.pt"
    if run.result is not None and path.exists():
        run.params = torch.load(path, weights_only=True)
    return run


def assert_same_bits(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    """Equal names, dtypes and bits."""
    assert a.keys() == b.keys(), what
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), \
            f"{what}: {k} differs by {(a[k].double() - b[k].double()).abs().max().item():.3g}"


def steps_each_task_once(run: Drive, meta_batch: int) -> None:
    """Every step reduced each of its tasks exactly once (no loss, no double count)."""
    for rec in run.steps:
        assert sorted(tuple(k) for k in rec["tasks"]) == [(rec["step"], i) for i in range(meta_batch)], rec



def s3_keys(box: NetCluster, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix`` in the box's bucket, read from the head (small objects only)."""
    code = ("import boto3, json, sys, base64\n"
            "s3 = boto3.client('s3'); out = {}\n"
            "for page in s3.get_paginator('list_objects_v2').paginate(Bucket='distmeta', Prefix=sys.argv[1]):\n"
            "    for o in page.get('Contents', []):\n"
            "        body = s3.get_object(Bucket='distmeta', Key=o['Key'])['Body'].read() if o['Size'] < 2**20 else b''\n"
            "        out[o['Key']] = base64.b64encode(body).decode()\n"
            "print(json.dumps(out))\n")
    proc = box.run("head", ["python", "-c", code, prefix], timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import base64
    return {k: base64.b64decode(v) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
