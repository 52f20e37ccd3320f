"""distmeta's own version, and the version floors distmeta's safety promises rest on, checked when ``distmeta`` is imported.

* torch >= 2.6: before it, ``torch.load(weights_only=True)`` could still execute code
  (CVE-2025-32434), and checkpoints load optimiser state that way.
* ray >= 2.52: before it, Ray has no token authentication, so the private cluster
  distmeta starts (and any cluster it joins) would accept every local connection.

The check reads installed package metadata only (no torch or ray import), so
``import distmeta`` stays light.
"""
from __future__ import annotations

import re
from importlib import metadata
from typing import Callable

#: distmeta's version (``distmeta --version``; actors report it so the driver refuses a mixed cluster).
__version__ = "0.1.0"

FLOORS: dict[str, tuple[tuple[int, ...], str]] = {
    "torch": ((2, 6), "torch.load(weights_only=True) can execute code before 2.6 (CVE-2025-32434)"),
    "ray": ((2, 52), "Ray has no token authentication before 2.52"),
}


class VersionFloorError(ImportError):
    """An installed dependency is older than the version distmeta's safety guarantees need."""


def parse_version(text: str) -> tuple[int, ...]:
    """The leading numeric release of a version string: ``"2.13.0+cpu"`` -> ``(2, 13, 0)``."""
    parts = []
    for piece in text.split("."):
        m = re.match(r"\d+", piece)
        if m is None:
            break
        parts.append(int(m.group()))
        if m.end() != len(piece):
            break
    return tuple(parts)


def check_floors(version_of: Callable[[str], str] = metadata.version) -> None:
    """Raise :class:`VersionFloorError` naming each package below its floor; a package not installed is skipped.

    (A missing torch or ray fails on its own import, with its own message.)
    """
    problems = []
    for name, (floor, why) in FLOORS.items():
        try:
            found = version_of(name)
        except metadata.PackageNotFoundError:
            continue
        if parse_version(found) < floor:
            want = ".".join(map(str, floor))
            problems.append(f"{name} {found} is installed but distmeta needs {name}>={want}: {why}")
    if problems:
        raise VersionFloorError("; ".join(problems) + ". Upgrade: pip install 'torch>=2.6' 'ray[default,tune]>=2.52'")
