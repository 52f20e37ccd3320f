"""``checkpoint_inner``: second-order MAML with each inner step recomputed in the backward pass.

The meta-gradient must be the one the stored inner loop gives (float64, 1e-10), on every
path (torch.func.grad on one task, the per-task autograd loop, vmap) and for every
variant that keeps a second-order inner graph.
"""
from __future__ import annotations

import pytest
import torch

from distmeta.config import load_config
from distmeta.errors import ConfigError
from distmeta.tasks.materialise import split_task
from tests.algorithms.conftest import (
    PATHS,
    assert_vmap_equals_loop,
    grad_via,
    make_algorithm,
    random_tasks,
)

CASES = {
    "maml-sgd": ("maml", {}),
    "maml-momentum": ("maml", {"optimizer": "momentum"}),
    "maml-nesterov": ("maml", {"optimizer": "nesterov"}),
    "maml-partial": ("maml", {"adapt": ["head.weight", "head.bias", "body.bias"]}),  # body.weight only in the context
    "anil": ("anil", {}),
    "metasgd": ("metasgd", {}),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_checkpointed_meta_gradient_equals_the_stored_one(tasks, case, path):
    name, kw = CASES[case]
    task = split_task(tasks, 0)
    stored, m_stored = grad_via(*make_algorithm(name, steps=4, lr=0.3, **kw), task, path)
    got, m_got = grad_via(*make_algorithm(name, steps=4, lr=0.3, checkpoint=True, **kw), task, path)
    assert set(got) == set(stored)
    for n in stored:
        torch.testing.assert_close(got[n], stored[n], atol=1e-12, rtol=1e-10, msg=n)
        assert float(got[n].abs().sum()) > 0, f"{n} received no meta-gradient"
    torch.testing.assert_close(m_got["loss"], m_stored["loss"], atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("name", ["maml", "metasgd"])
def test_checkpointed_vmap_equals_loop(name):
    alg, meta = make_algorithm(name, steps=3, checkpoint=True)
    assert_vmap_equals_loop(alg, meta, random_tasks(n_tasks=4), 4)


def test_checkpoint_inner_is_refused_where_there_is_no_second_order_graph():
    load_config(None, ["algorithm.name=maml", "algorithm.checkpoint_inner=true"])
    for name in ("fomaml", "reptile", "imaml"):
        with pytest.raises(ConfigError, match="checkpoint_inner"):
            load_config(None, [f"algorithm.name={name}", "algorithm.checkpoint_inner=true"])


_PEAKS = """
import json, torch
from distmeta.algorithms import ALGORITHMS, InnerSettings, ModelFn
from distmeta.models.mlp import SinusoidMLP
from distmeta.groups.sizing import peak_memory

torch.manual_seed(0)
net = SinusoidMLP([256, 256]).double()  # activations of 4000 support points dominate the parameters
meta = {n: p.detach().clone() for n, p in net.named_parameters()}
for p in net.parameters():
    p.requires_grad_(False)
g = torch.Generator().manual_seed(0)
batch = {k: torch.randn(1, 4000, 1, generator=g, dtype=torch.float64)
         for k in ("support_x", "support_y", "query_x", "query_y")}

def peak(steps, checkpoint):
    alg = ALGORITHMS["maml"](ModelFn(net, {}), "regression", list(meta), InnerSettings(0.01, steps, checkpoint=checkpoint), 1)
    alg.batch_grad(meta, batch, use_vmap=False)  # warm-up
    # The least of three: a resident-memory peak can only be inflated by what the allocator kept.
    return min(peak_memory(lambda: alg.batch_grad(meta, batch, use_vmap=False))[1] for _ in range(3))

print(json.dumps({"stored": peak(10, False) - peak(2, False), "checkpointed": peak(10, True) - peak(2, True)}))
"""


def test_checkpointed_peak_memory_is_flat_in_inner_steps():
    """Peak growth from 2 to 10 inner steps, checkpointed vs stored, measured in a fresh process.

    A fresh process because peaks are read from the process's resident memory, which in a
    long test session carries whatever the allocator kept from earlier tests. Storing every
    step grows by a few activations per step, checkpointing by about one (the recomputed
    step); a checkpoint that kept everything would grow as much as the stored loop, so half
    separates the two with room for the measurement's noise.
    """
    import json
    import subprocess
    import sys

    from distmeta.groups.sizing import cpu_peak_supported

    if not cpu_peak_supported():
        pytest.skip("needs Linux /proc/self/clear_refs")
    runs = []
    for _ in range(3):  # resident-memory peaks are noisy (the allocator, the kernel's reclaim): medians of 3
        out = subprocess.run([sys.executable, "-c", _PEAKS], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    stored = sorted(r["stored"] for r in runs)[1]
    checkpointed = sorted(r["checkpointed"] for r in runs)[1]
    assert stored > 0, "the stored inner loop should grow (else this test measures nothing)"
    assert checkpointed <= 0.5 * stored, (checkpointed, stored)
