"""The root :class:`Config`: every section, plus the checks that span sections."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from distmeta.config._base import _Section
from distmeta.config.data_sections import DataConfig, TokenizerConfig
from distmeta.config.sections import (
    PRETRAINED_MODELS,
    AlgorithmConfig,
    EvalConfig,
    FaultConfig,
    ModelConfig,
    OuterConfig,
    PretrainConfig,
    RayConfig,
    ResourcesConfig,
    RunConfig,
    TrainConfig,
)


class Config(_Section):
    """A whole run. Field names are the public config vocabulary (``train.steps`` ...)."""

    #: Keys that moved into a section: naming the old spelling is an error that gives the new one.
    MOVED_KEYS: ClassVar[dict[str, str]] = {k: f"resources.{k}" for k in
                                            ("workers", "cpus_per_worker", "gpus_per_worker", "device", "threads")}

    seed: int = Field(0, description="everything random derives from it: the class split, every task (a pure "
                      "function of seed, step, index), the initial weights")
    dtype: Literal["float32", "float64"] = Field("float32", description="float type of parameters and computation")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: forward passes under bfloat16 autocast "
                                               "(parameters and gradients stay dtype)")
    resources: ResourcesConfig = ResourcesConfig()
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
        if self.eval.transductive and (regression or not (self.algorithm.name == "protonet"
                                                          or self.algorithm.adapt == "head" or self.algorithm.name == "anil")):
            raise ValueError("eval.transductive scores the encoder's features: it needs a classification source and "
                             f"algorithm.name=protonet or algorithm.adapt=head, not {self.algorithm.name} "
                             f"with adapt={self.algorithm.adapt}")
        if self.model.name == "hf" and not self.model.path:
            raise ValueError("model.name=hf needs model.path: a local model directory or a name in the local HF cache")
        return self

    @model_validator(mode="after")
    def _faults_fit_workers(self) -> "Config":
        workers = self.resources.workers
        for i, f in enumerate(self.faults):
            if workers == 0 and f.actor not in (0, "all"):
                raise ValueError(f"faults.{i}.actor={f.actor}: resources.workers=0 has one in-process worker, actor 0")
            if isinstance(workers, int) and workers > 0 and isinstance(f.actor, int) and f.actor >= workers:
                raise ValueError(f"faults.{i}.actor={f.actor}: there are only resources.workers={workers} actors "
                                 f"(0..{workers - 1})")
            if workers == 0 and f.kind == "stale":
                raise ValueError(f"faults.{i}.kind=stale needs Ray workers (resources.workers >= 1): the in-process "
                                 "worker has no versions")
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
