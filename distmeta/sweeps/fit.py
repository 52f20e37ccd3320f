"""Does one trial (or grid cell) fit the Ray cluster? Checked before a sweep starts anything.

A Tune trial whose placement group the cluster can never hold stays PENDING forever, and
Ray says why only in a warning deep in its log. So ``distmeta tune`` and ``distmeta grid``
check first, like ``distmeta train``: on a fixed cluster (the private local Ray) a trial
that cannot fit is an error naming the shortfall; on a cluster distmeta joined
(``ray.address`` / ``RAY_ADDRESS``), which may autoscale, it is a message saying what the
sweep waits for, and the sweep goes on::

    problem = fit_problem(bundles, "PACK", ray.cluster_resources(), node_resources())
    check_fits(bundles, "PACK", cfg.ray, "one trial",
               hint="lower driver_cpus, resources.workers or resources.cpus_per_worker")
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

from distmeta.config import RayConfig
from distmeta.distributed.plan import fmt_resources, shortfall
from distmeta.distributed.preflight import joins_cluster
from distmeta.errors import ConfigError

log = logging.getLogger(__name__)

Bundle = dict[str, float]


def describe_bundles(bundles: Sequence[Bundle]) -> str:
    """``[CPU=1] + 2 x [CPU=0.5]``: a placement group in a message (identical bundles counted)."""
    counts = Counter(tuple(sorted(b.items())) for b in bundles)
    parts = []
    for items, n in counts.items():
        text = "[" + ", ".join(f"{k}={v:g}" for k, v in items) + "]" if items else "[nothing]"
        parts.append(text if n == 1 else f"{n} x {text}")
    return " + ".join(parts)


def total(bundles: Sequence[Bundle]) -> Bundle:
    """The resources of all bundles together."""
    out: Bundle = {}
    for b in bundles:
        for k, v in b.items():
            out[k] = out.get(k, 0.0) + float(v)
    return out


def _fits(bundle: Bundle, node: dict[str, float]) -> bool:
    return all(node.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items())


def fit_problem(bundles: Sequence[Bundle], strategy: str, cluster: dict[str, float],
                nodes: Sequence[dict[str, float]]) -> str | None:
    """Why a placement group of ``bundles`` can never be granted on this cluster, or None when it can.

    Args:
        bundles: the group's bundles (empty ones are left out, as Tune does).
        strategy: ``PACK``, ``SPREAD``, ``STRICT_PACK`` or ``STRICT_SPREAD``.
        cluster: the cluster's total resources (``ray.cluster_resources()``).
        nodes: each alive node's total resources.

    Returns:
        A sentence naming the group, the cluster and the shortfall; None when it fits.
    """
    bundles = [b for b in bundles if any(v > 0 for v in b.values())]
    need = total(bundles)
    head = f"a placement group of {describe_bundles(bundles)} = {fmt_resources(need)}"
    short = shortfall(need, cluster)
    if short:
        return f"{head}, but the Ray cluster has {fmt_resources(cluster)} in all (short of {', '.join(f'{k}={v:g}' for k, v in short.items())})"
    big = [b for b in bundles if not any(_fits(b, n) for n in nodes)]
    if big:
        return f"{head}, but no node of the Ray cluster can hold a bundle of {describe_bundles(big[:1])}"
    if strategy == "STRICT_PACK" and not any(_fits(need, n) for n in nodes):
        return f"{head} on one node (STRICT_PACK), but no node of the Ray cluster has that much"
    if strategy == "STRICT_SPREAD" and len(nodes) < len(bundles):
        return f"{head} on {len(bundles)} distinct nodes (STRICT_SPREAD), but the Ray cluster has {len(nodes)}"
    return None


def node_resources() -> list[dict[str, float]]:
    """Total resources of every alive node of the connected Ray cluster."""
    import ray

    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def check_fits(bundles: Sequence[Bundle], strategy: str, ray_cfg: RayConfig, what: str, hint: str) -> str | None:
    """Fail at once when ``what`` (one trial, one grid cell) can never run on the connected cluster.

    Args:
        bundles: its placement group's bundles.
        strategy: the group's placement strategy.
        ray_cfg: the base config's ``ray`` section (``address`` tells a joined cluster, which may
            autoscale, from the private one).
        what: the unit named in messages ("one trial", "a grid cell").
        hint: what to lower, for the error.

    Returns:
        None when it fits; on a joined cluster that may autoscale, the message saying what the
        sweep waits for (also logged as a warning).

    Raises:
        ConfigError: it does not fit a fixed cluster, naming the shortfall.
    """
    import ray

    problem = fit_problem(bundles, strategy, ray.cluster_resources(), node_resources())
    if problem is None:
        return None
    if joins_cluster(ray_cfg):
        msg = (f"waiting for the cluster to grow: {what} needs {problem}; it starts once the autoscaler adds "
               f"that (or stays pending if this cluster does not autoscale)")
        log.warning(msg)
        print(f"warning: {msg}", flush=True)
        return msg
    raise ConfigError(f"{what} needs {problem}, so it could never start; {hint}")


def copies_that_fit(bundles: Sequence[Bundle], strategy: str, nodes: Sequence[dict[str, float]],
                    limit: int = 1024) -> int:
    """How many placement groups of ``bundles`` the nodes hold at once (first fit, biggest bundle first).

    Args:
        bundles: one group's bundles (empty ones are left out, as Tune does).
        strategy: ``PACK`` and ``SPREAD`` place each bundle on any node with room; ``STRICT_PACK``
            puts a whole group on one node; ``STRICT_SPREAD`` each bundle of a group on its own node.
        nodes: each node's resources (:func:`node_resources`).
        limit: the most groups counted (a group of empty bundles fits without end).

    Returns:
        The number of whole groups that fit side by side, 0 when not even one does.
    """
    order = sorted((b for b in bundles if any(v > 0 for v in b.values())), key=lambda b: -sum(b.values()))
    free = [dict(n) for n in nodes]
    count = 0
    while count < limit:
        trial = [dict(n) for n in free]
        used: set[int] = set()
        for b in order:
            candidates = [i for i, n in enumerate(trial) if _fits(b, n) and not (strategy == "STRICT_SPREAD" and i in used)]
            if strategy == "STRICT_PACK" and used:
                candidates = [i for i in candidates if i in used]
            if not candidates:
                return count
            node = trial[candidates[0]]
            used.add(candidates[0])
            for k, v in b.items():
                node[k] = node.get(k, 0.0) - float(v)
        free, count = trial, count + 1
    return count


__all__ = ["check_fits", "copies_that_fit", "describe_bundles", "fit_problem", "node_resources", "total"]
