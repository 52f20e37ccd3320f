"""What every corpus builder shares: the raw rows it read, and a missing input with its install command."""
from __future__ import annotations

import subprocess
from dataclasses import dataclass


class MissingInput(RuntimeError):
    """An input corpus is not on this machine; ``commands`` install it."""

    def __init__(self, what: str, commands: list[list[str]]):
        super().__init__(what)
        self.commands = commands

    def hint(self) -> str:
        """The install commands as one shell line."""
        return " && ".join(" ".join(c) for c in self.commands)


@dataclass
class Raw:
    """What a builder read: (text, label) pairs before the common filters, and where from."""

    rows: list[tuple[str, str]]
    source: str
    aliases: dict[str, list[str]]


APT_UPDATE = ["apt-get", "update"]


def apt_install(pkg: str) -> list[list[str]]:
    """The commands that install Debian package ``pkg``."""
    return [APT_UPDATE, ["apt-get", "install", "-y", "--no-install-recommends", pkg]]


def dpkg_version(pkg: str) -> str:
    """The installed version of Debian package ``pkg``, or ``?``."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return "?"
    return out.stdout.strip() or "?"

