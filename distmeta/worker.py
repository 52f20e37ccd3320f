"""The compute every replica runs: task specs in, summed meta-gradients out.

A :class:`Worker` owns one model replica and the algorithm, and reads the tokenised
corpus it is given (compact ragged ids, shared per node: memory-mapped, or zero-copy from
Ray's object store), padding only the rows of the episodes it builds. It imports nothing from Ray, so the single-process trainer, the Ray actors
and a GPU box without Ray all run exactly this code.
"""
from __future__ import annotations

import contextlib
import copy
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from distmeta.algorithms import Algorithm, Params, build_algorithm
from distmeta.algorithms.by_ways import ByWays
from distmeta.config import Config, ResourcesConfig
from distmeta.models import DTYPES
from distmeta.results import GroupResult, all_finite
from distmeta.tasks.features import FeatureBank
from distmeta.tasks.materialise import (
    SinusoidTaskBuilder,
    TaskBuilder,
    TextTaskBuilder,
    by_source,
)
from distmeta.tasks.specs import TaskSpec, task_key
from distmeta.text.corpus import TokenCorpus

__all__ = ["GroupResult", "Worker", "all_finite", "resolve_device"]


def resolve_device(res: ResourcesConfig) -> torch.device:
    """``resources.device: auto`` -> CUDA when this process sees a GPU, else CPU."""
    if res.device == "cuda" or (res.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


class Worker:
    """One model replica computing meta-gradients and evaluations for task specs."""

    def __init__(
        self,
        cfg: Config,
        corpus: TokenCorpus | None = None,
        vocab_size: int = 0,
        device: str | torch.device | None = None,
        threads: int | None = None,
        prefix_cache: dict[str, Any] | None = None,
    ) -> None:
        """Build the replica.

        Args:
            cfg: the run's config.
            corpus: every source's tokenised rows (text runs; see
                :meth:`distmeta.experiment.Experiment.worker_args`); read, never copied.
            vocab_size: the tokenizer's vocabulary size (the embedding table's rows).
            device: where the replica computes (default from ``cfg.resources.device``).
            threads: torch threads (default ``resources.threads``, else ``resources.cpus_per_worker``).
            prefix_cache: the frozen-prefix cache to open, from :func:`distmeta.experiment.prepare_prefix_cache`.
        """
        from distmeta.models import build_model

        self.cfg = cfg
        res = cfg.resources
        torch.set_num_threads(threads or res.threads or max(1, int(res.cpus_per_worker)))
        self.device = torch.device(device) if device is not None else resolve_device(res)
        self.dtype = DTYPES[cfg.dtype]
        torch.manual_seed(cfg.seed)  # every replica builds the same initial network
        out_dim = 1 if cfg.data.is_regression else cfg.data.ways
        module = build_model(cfg, vocab_size, out_dim).to(self.device, self.dtype)
        self.module = module
        self.algorithm, init = build_algorithm(cfg, module)
        self.by_ways = ByWays(self.algorithm)  # episodes of other ways (ways_range, evaluation, mixture sources)
        self.initial_meta = {n: p.detach().cpu() for n, p in init.items()}
        vmap = cfg.algorithm.vmap  # decided once, from the config and the model: the same on every replica
        self.use_vmap = self.algorithm.prefers_vmap(cfg.algorithm.vmap_max_params) if vmap == "auto" else bool(vmap)
        self.builder: TaskBuilder
        if cfg.data.is_regression:
            self.builder = SinusoidTaskBuilder(self.dtype, self.device)
        else:
            if corpus is None:
                raise ValueError("a text worker needs the tokenised corpus (corpus)")
            self.builder = TextTaskBuilder(corpus, self.device, self._open_prefix(prefix_cache, corpus), self.dtype)
        self._features = FeatureBank()
        self._peak_warm = False  # group_peak has run its one unmeasured warm-up

    # ------------------------------------------------------------------ helpers
    def _open_prefix(self, spec: dict[str, Any] | None, corpus: TokenCorpus) -> Any:
        """The node's frozen-prefix cache (``spec`` from :func:`distmeta.experiment.prepare_prefix_cache`).

        Opened if this node has it (the driver built it before the workers started); on another
        node built here once, the node's other actors waiting on its lock. The encoder then
        runs only the layers after the prefix.
        """
        if not spec:
            return None
        from distmeta.models.prefix import open_cache, open_or_build

        path = Path(spec["path"])
        layers = int(spec["layers"])
        try:
            cache = open_cache(path)  # checked against its manifest and checksums first
        except OSError:  # not on this node, or not what it claims to be: built (or rebuilt) here as the driver does
            builder = copy.deepcopy(self.module).to(torch.float32)
            cache = open_or_build(builder, layers, corpus, np.asarray(spec["rows"]), path.parent, progress=False)
        self.module.prefix_layers = layers
        return cache

    def _to_device(self, meta: dict[str, Any]) -> Params:
        """Meta-parameters (numpy or tensors) as tensors on this replica's device; floats in its dtype."""
        tensors = {n: torch.as_tensor(v) for n, v in meta.items()}
        return {n: t.to(self.device, self.dtype if t.is_floating_point() else None) for n, t in tensors.items()}

    def _autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast for ``precision: bf16``; no context at all otherwise (entering even a disabled one has a cost)."""
        if self.cfg.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ public
    def meta_grad(self, meta: dict[str, Any], specs: Sequence[TaskSpec], version: int = 0) -> GroupResult:
        """Sum of the meta-gradients of ``specs`` (one group, computed as one unit) and per-task metrics.

        A task whose loss or meta-gradient is not finite is named in ``bad_tasks``. With
        ``nan_policy: skip_task`` the group is recomputed without those tasks (the sum
        is one unit: nothing is subtracted) and they are listed in ``skipped``.
        """
        return self._meta_grad(self._to_device(meta), specs, version)

    def meta_grad_groups(self, meta: dict[str, Any], groups: Sequence[Sequence[TaskSpec]], version: int = 0) -> list[GroupResult]:
        """:meth:`meta_grad` for each group, in order (the meta-parameters moved to the device once)."""
        params = self._to_device(meta)
        return [self._meta_grad(params, g, version) for g in groups]

    def group_peak(self, meta: dict[str, Any], specs: Sequence[TaskSpec]) -> int:
        """Peak memory in bytes of :meth:`meta_grad` of ``specs`` as one group, on this replica's device.

        Measured above the resting level (:func:`distmeta.groups.sizing.peak_memory`): the
        CUDA allocator's peak on a GPU, the process's peak resident set on CPU. The first
        call first runs one task unmeasured, so one-off allocations (kernels, caches, the
        thread pool) are not counted as the group's. ``algorithm.group_size: auto`` calls
        this through the backend, so the measurement is of the device the replicas use.
        """
        from distmeta.groups.sizing import peak_memory

        params = self._to_device(meta)
        if not self._peak_warm:
            self._meta_grad(params, list(specs[:1]), 0)
            self._peak_warm = True
        return peak_memory(lambda: self._meta_grad(params, specs, 0), self.device)[1]

    def _meta_grad(self, params: Params, specs: Sequence[TaskSpec], version: int) -> GroupResult:
        t0 = time.perf_counter()
        grad_np, metric_lists = self._group_grad(params, specs)
        keys = [task_key(s) for s in specs]
        bad = self._nonfinite_tasks(params, specs, grad_np, metric_lists["loss"])
        skipped: list[tuple[int, int]] = []
        if bad and self.cfg.nan_policy == "skip_task":
            keep = [i for i in range(len(specs)) if i not in bad]
            grad_np = {n: np.zeros_like(g) for n, g in grad_np.items()}
            if keep:
                grad_np, kept_metrics = self._group_grad(params, [specs[i] for i in keep])
                for k, values in kept_metrics.items():
                    for i, v in zip(keep, values):
                        metric_lists[k][i] = v
            skipped = [keys[i] for i in sorted(bad)]
        return GroupResult(
            grad=grad_np, metrics=metric_lists, tasks=keys, version=version,
            compute_s=time.perf_counter() - t0, finite=not bad,
            bad_tasks=[keys[i] for i in sorted(bad)], skipped=skipped,
        )

    def _group_grad(self, params: Params, specs: Sequence[TaskSpec]) -> tuple[dict[str, np.ndarray], dict[str, list[float]]]:
        """The group's summed meta-gradient (numpy) and per-task metric lists.

        Each source's tasks are one stacked batch run by the algorithm for its ways (one
        batch for a single source); their gradients are summed in source order.
        """
        total: dict[str, Tensor] = {}
        metrics: dict[str, Tensor] = {}
        for pos, part in by_source(specs):
            batch = self.builder.build(part)
            with self._autocast():
                grads, m = self.by_ways(_ways(part)).batch_grad(params, batch, use_vmap=self.use_vmap)
            for n, g in grads.items():
                total[n] = total[n] + g if n in total else g
            _scatter(metrics, len(specs), pos, m)
        grad_np = {n: g.detach().to("cpu", self.dtype).numpy() for n, g in total.items()}
        metric_lists = {k: [float(x) for x in v.detach().float().cpu()] for k, v in metrics.items()}
        return grad_np, metric_lists

    def _nonfinite_tasks(self, params: Params, specs: Sequence[TaskSpec], grad: dict[str, np.ndarray],
                         losses: list[float]) -> set[int]:
        """Indices of the tasks whose loss or meta-gradient is not finite (empty on the usual path: one check).

        A non-finite summed gradient is traced to its tasks by computing the others
        without the ones already known bad and, if that is still not finite, one at a time.
        If no single task is to blame (the sum overflowed), the whole group is.
        """
        bad = {i for i, x in enumerate(losses) if not np.isfinite(x)}
        if all_finite(grad.values()):
            return bad
        rest = [i for i in range(len(specs)) if i not in bad]
        if bad and rest and all_finite(self._group_grad(params, [specs[i] for i in rest])[0].values()):
            return bad
        if not bad and len(specs) == 1:
            return {0}
        for i in rest:
            g, m = self._group_grad(params, [specs[i]])
            if not (all_finite(g.values()) and np.isfinite(m["loss"]).all()):
                bad.add(i)
        return bad or set(range(len(specs)))

    def evaluate(
        self, meta: dict[str, Any], specs: Sequence[TaskSpec], inner_steps: int, cache_key: str | None = None,
        baseline: bool = False,
    ) -> dict[str, list[float]]:
        """Per-episode query loss/accuracy after adaptation (no meta-gradient).

        With ``cache_key`` (one key per parameter set) and an algorithm whose adaptation
        leaves the encoder fixed (ProtoNet, head-only MAML/ANIL), each example is encoded
        once per key and reused by every episode that draws it.

        With ``baseline`` (text episodes), ``meta`` is scored the way a practitioner uses an
        encoder without meta-training (:func:`distmeta.baselines.baseline_metrics`: cosine and
        Euclidean nearest centroid, a classifier fitted on the support set) instead of
        through the algorithm.
        """
        params = self._to_device(meta)
        metrics: dict[str, Tensor] = {}
        for pos, part in by_source(specs):
            _scatter(metrics, len(specs), pos, self._evaluate_part(params, part, inner_steps, cache_key, baseline))
        return {k: [float(x) for x in v.detach().float().cpu()] for k, v in metrics.items()}

    def _evaluate_part(self, params: Params, specs: Sequence[TaskSpec], inner_steps: int, cache_key: str | None,
                       baseline: bool) -> dict[str, Tensor]:
        """:meth:`evaluate` of same-shaped episodes (one source's)."""
        ways = _ways(specs) or 1
        text = isinstance(self.builder, TextTaskBuilder)
        if baseline and text:
            from distmeta.baselines import baseline_metrics

            with self._autocast():
                b = self._feature_batch(self.algorithm, params, specs, cache_key or "baseline")
            return baseline_metrics(b["support_f"], b["support_y"], b["query_f"], b["query_y"], ways,
                                    self.cfg.eval.transductive)
        algorithm = self.by_ways(_ways(specs))
        with self._autocast():
            if cache_key is not None and algorithm.uses_fixed_features and text:
                batch = self._feature_batch(algorithm, params, specs, cache_key)
            else:
                batch = self.builder.build(specs)
            metrics = algorithm.batch_eval(params, batch, inner_steps, use_vmap=self.use_vmap)
        if self.cfg.eval.transductive and "support_f" in batch:
            from distmeta.baselines import transductive_accuracy

            metrics["accuracy_transductive"] = transductive_accuracy(
                batch["support_f"], batch["support_y"], batch["query_f"], batch["query_y"], ways,
                self.cfg.eval.transductive)
        return metrics

    @torch.no_grad()
    def _feature_batch(self, algorithm: Algorithm, params: Params, specs: Sequence[TaskSpec], key: str) -> dict[str, Tensor]:
        """Episodes as cached pooled features instead of token ids (see :meth:`evaluate`)."""
        assert isinstance(self.builder, TextTaskBuilder)
        builder = self.builder
        sx, sy, qx, qy = builder.rows(specs)
        rows = np.array(sorted({r for part in (sx, qx) for task in part for r in task}), dtype=np.int64)
        model_params = algorithm.model_params(params)
        encode = lambda chunk: algorithm.model(model_params, builder.inputs(chunk), head=False).to(self.dtype)  # noqa: E731
        self._features.fill(key, rows, encode)
        take = lambda rs: self._features.take(rs)  # noqa: E731
        lab = lambda ls: torch.tensor(ls, dtype=torch.long, device=self._features.device)  # noqa: E731
        return {"support_f": take(sx), "support_y": lab(sy), "query_f": take(qx), "query_y": lab(qy)}


def _ways(specs: Sequence[TaskSpec]) -> int | None:
    """The ways of same-shaped episodes (None for tasks without classes)."""
    return getattr(specs[0], "ways", None)


def _scatter(out: dict[str, Tensor], size: int, pos: list[int], metrics: dict[str, Tensor]) -> None:
    """Write one part's per-task ``metrics`` at positions ``pos`` of the group's ``[size]`` metrics."""
    if len(pos) == size and not out:
        out.update(metrics)  # the whole group in order (one source)
        return
    for k, v in metrics.items():
        if k not in out:
            out[k] = torch.zeros(size, dtype=v.dtype, device=v.device)
        out[k][torch.tensor(pos, device=v.device)] = v
