"""Typed errors: each names the field, file, class or task at fault."""
from __future__ import annotations


class DistmetaError(Exception):
    """Base class of every error distmeta raises on purpose."""


class ConfigError(DistmetaError, ValueError):
    """A config value is missing, unknown or out of range; the message names the field."""


class DataError(DistmetaError, ValueError):
    """A data source cannot give valid few-shot tasks; the message names the file, column or class."""


class CheckpointError(DistmetaError):
    """A checkpoint is missing, corrupt or unsafe to load."""


class RunDirError(DistmetaError):
    """The run directory holds a run that this command would overwrite."""
