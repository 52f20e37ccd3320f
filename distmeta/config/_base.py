"""The base of every config section, and the parameter-selector check (``all | head | last:N``) two sections share."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_selector(v: str, field: str) -> str:
    if v in ("all", "head"):
        return v
    if v.startswith("last:") and v[5:].isdigit() and int(v[5:]) >= 0:
        return v
    raise ValueError(f"{field} must be 'all', 'head' or 'last:N', got {v!r}")
