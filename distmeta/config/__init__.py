"""Typed run configuration: YAML files plus ``key=value`` overrides, validated at load.

Every section is a pydantic model with ``extra="forbid"``, so a misspelt key is an
error that names the key and suggests the nearest valid one::

    cfg = load_config("configs/sinusoid_maml.yaml", ["train.steps=200", "algorithm.inner_lr=0.1"])

The same helpers serve every YAML file distmeta reads (runs, Tune searches, grids):
:func:`apply_overrides` / :func:`set_key` for dotted ``key=value`` changes,
:func:`validate` for any pydantic model with errors that name the key, and
:func:`split_overrides` to send each override to the file it belongs to.

Modules: :mod:`~distmeta.config.data_sections` (the ``data`` and ``tokenizer`` sections),
:mod:`~distmeta.config.sections` (every other section), :mod:`~distmeta.config.schema`
(the root :class:`Config` and its cross-section checks), :mod:`~distmeta.config.loading`
(files, overrides, error messages). Import from here: the split is not part of the API.
"""
from __future__ import annotations

from distmeta.config.data_sections import (
    DataConfig,
    MixtureComponent,
    SinusoidConfig,
    SplitConfig,
    TokenizerConfig,
)
from distmeta.config.loading import (
    BASE_CONFIG_ENV,
    DEFAULT_CONFIG,
    apply_overrides,
    base_config_path,
    config_from_dict,
    dump_config,
    format_errors,
    load_config,
    parse_override,
    read_yaml,
    set_key,
    split_overrides,
    upgrade_saved,
    validate,
)
from distmeta.config.schema import Config
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

__all__ = [
    "BASE_CONFIG_ENV", "DEFAULT_CONFIG", "PRETRAINED_MODELS", "AlgorithmConfig", "Config", "DataConfig", "EvalConfig",
    "FaultConfig", "MixtureComponent", "ModelConfig", "OuterConfig", "PretrainConfig", "RayConfig", "ResourcesConfig",
    "RunConfig", "SinusoidConfig", "SplitConfig", "TokenizerConfig", "TrainConfig", "apply_overrides",
    "base_config_path", "config_from_dict", "dump_config", "format_errors", "load_config", "parse_override",
    "read_yaml", "set_key", "split_overrides", "upgrade_saved", "validate",
]
