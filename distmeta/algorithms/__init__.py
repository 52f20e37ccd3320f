"""Meta-learners selected by ``algorithm.name``; :func:`build_algorithm` wires one to a model."""
from __future__ import annotations

from torch import nn

from distmeta.algorithms.base import Algorithm, InnerSettings
from distmeta.algorithms.functional import ModelFn, Params
from distmeta.algorithms.imaml import IMAML
from distmeta.algorithms.maml import ANIL, FOMAML, MAML, MetaSGD
from distmeta.algorithms.protomaml import ProtoMAML
from distmeta.algorithms.protonet import (
    ProtoNet,
    PrototypeAlgorithm,
    centroid_logits,
    prototype_logits,
)
from distmeta.algorithms.reptile import Reptile
from distmeta.config import PRETRAINED_MODELS, Config
from distmeta.errors import ConfigError

ALGORITHMS: dict[str, type[Algorithm]] = {
    "maml": MAML,
    "fomaml": FOMAML,
    "anil": ANIL,
    "metasgd": MetaSGD,
    "reptile": Reptile,
    "protonet": ProtoNet,
    "protomaml": ProtoMAML,
    "imaml": IMAML,
}


def resolve_distance(cfg: Config) -> str:
    """``algorithm.distance`` with ``auto`` resolved: cosine for pretrained encoders, Euclidean otherwise.

    Pretrained sentence encoders are trained to compare embeddings by angle; a
    from-scratch encoder learns whatever geometry the squared distance rewards.
    """
    distance = cfg.algorithm.distance
    if distance == "auto":
        return "cosine" if cfg.model.name in PRETRAINED_MODELS else "euclidean"
    return distance


def algorithm_options(cfg: Config, cls: type[Algorithm]) -> dict[str, object]:
    """Keyword options of ``cls``'s constructor beyond the common ones, from ``algorithm.*``."""
    options: dict[str, object] = {}
    if issubclass(cls, PrototypeAlgorithm):
        a = cfg.algorithm
        options.update(distance=resolve_distance(cfg), temperature=a.temperature, learn_temperature=a.learn_temperature)
    if issubclass(cls, ProtoMAML):
        options["first_order"] = cfg.algorithm.first_order
    if issubclass(cls, IMAML):
        options.update(imaml_lambda=cfg.algorithm.imaml_lambda, cg_steps=cfg.algorithm.cg_steps)
    return options


def selected_params(module: nn.Module, selector: str, key: str) -> list[str]:
    """:func:`~distmeta.models.select_params` for the config key ``key``; a selector the model cannot meet
    is a ConfigError naming ``key`` and the values that fit this model (``model.trainable=all|head|last:1``).

    Args:
        module: the model.
        selector: ``all`` | ``head`` | ``last:N``.
        key: the config key it came from, named in the error.
    Returns:
        The selected parameter names.
    """
    from distmeta.models import layer_groups, select_params

    try:
        return select_params(module, selector)
    except ConfigError as err:
        body = len(layer_groups(module)) - 1  # groups below the head
        lasts = "" if body < 1 else "|last:1" if body == 1 else f"|last:1..{body}"
        raise ConfigError(f"{key}={selector} does not fit {type(module).__name__}: {err}. "
                          f"Set {key}=all|head{lasts}") from None


def build_algorithm(cfg: Config, module: nn.Module, ways: int | None = None) -> tuple[Algorithm, Params]:
    """The algorithm bound to ``module`` and the initial meta-parameters (what the outer loop trains).

    Meta-parameters are the ``model.trainable`` parameters (less the unused head for
    ProtoNet and Proto-MAML) plus the algorithm's own (Meta-SGD's ``lr.*``, the cosine
    ``temperature``); every other parameter or buffer is a constant of the model function.
    """
    from distmeta.models import select_params

    name = cfg.algorithm.name
    cls = ALGORITHMS[name]
    trainable = set(selected_params(module, cfg.model.trainable, "model.trainable"))
    if cls.any_ways:  # the classifier comes from the prototypes: the model's head is unused
        head = set(select_params(module, "head"))
        trainable -= head
    adapt = selected_params(module, "head" if name == "anil" else cfg.algorithm.adapt, "algorithm.adapt")
    state = {n: p.detach() for n, p in module.named_parameters()}
    state.update({n: b.detach() for n, b in module.named_buffers()})
    for p in module.parameters():
        p.requires_grad_(False)
    meta = {n: state[n].clone() for n, _ in module.named_parameters() if n in trainable}
    frozen = {n: t for n, t in state.items() if n not in meta}
    inner = InnerSettings(
        lr=cfg.algorithm.inner_lr, steps=cfg.algorithm.inner_steps,
        optimizer=cfg.algorithm.inner_optimizer, momentum=cfg.algorithm.inner_momentum,
        checkpoint=cfg.algorithm.checkpoint_inner,
    )
    kind = "regression" if cfg.data.is_regression else "classification"
    algorithm = cls(ModelFn(module, frozen), kind, adapt, inner, ways or cfg.data.ways, **algorithm_options(cfg, cls))
    meta.update(algorithm.extra_meta_params(meta))
    return algorithm, meta


__all__ = [
    "ALGORITHMS", "Algorithm", "InnerSettings", "ModelFn", "Params", "build_algorithm",
    "MAML", "FOMAML", "ANIL", "IMAML", "MetaSGD", "Reptile", "ProtoNet", "ProtoMAML", "PrototypeAlgorithm",
    "algorithm_options", "centroid_logits", "prototype_logits", "resolve_distance", "selected_params",
]
