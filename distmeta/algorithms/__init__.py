"""Meta-learners selected by ``algorithm.name``; :func:`build_algorithm` wires one to a model."""
from __future__ import annotations

from torch import nn

from distmeta.algorithms.base import Algorithm, InnerSettings
from distmeta.algorithms.functional import ModelFn, Params
from distmeta.algorithms.maml import ANIL, FOMAML, MAML, MetaSGD
from distmeta.algorithms.protonet import ProtoNet, prototype_logits
from distmeta.algorithms.reptile import Reptile
from distmeta.config import Config

ALGORITHMS: dict[str, type[Algorithm]] = {
    "maml": MAML,
    "fomaml": FOMAML,
    "anil": ANIL,
    "metasgd": MetaSGD,
    "reptile": Reptile,
    "protonet": ProtoNet,
}


def build_algorithm(cfg: Config, module: nn.Module, ways: int | None = None) -> tuple[Algorithm, Params]:
    """The algorithm bound to ``module`` and the initial meta-parameters (what the outer loop trains).

    Meta-parameters are the ``model.trainable`` parameters (less the unused head for
    ProtoNet) plus the algorithm's own (Meta-SGD learning rates); every other
    parameter or buffer is a constant of the model function.
    """
    from distmeta.models import select_params

    name = cfg.algorithm.name
    trainable = set(select_params(module, cfg.model.trainable))
    if name == "protonet":
        head = set(select_params(module, "head"))
        trainable -= head
    adapt = select_params(module, "head" if name == "anil" else cfg.algorithm.adapt)
    state = {n: p.detach() for n, p in module.named_parameters()}
    state.update({n: b.detach() for n, b in module.named_buffers()})
    for p in module.parameters():
        p.requires_grad_(False)
    meta = {n: state[n].clone() for n, _ in module.named_parameters() if n in trainable}
    frozen = {n: t for n, t in state.items() if n not in meta}
    inner = InnerSettings(
        lr=cfg.algorithm.inner_lr, steps=cfg.algorithm.inner_steps,
        optimizer=cfg.algorithm.inner_optimizer, momentum=cfg.algorithm.inner_momentum,
    )
    kind = "regression" if cfg.data.is_regression else "classification"
    algorithm = ALGORITHMS[name](ModelFn(module, frozen), kind, adapt, inner, ways or cfg.data.ways)
    meta.update(algorithm.extra_meta_params(meta))
    return algorithm, meta


__all__ = [
    "ALGORITHMS", "Algorithm", "InnerSettings", "ModelFn", "Params", "build_algorithm",
    "MAML", "FOMAML", "ANIL", "MetaSGD", "Reptile", "ProtoNet", "prototype_logits",
]
