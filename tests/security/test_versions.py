"""Item 2: torch >= 2.6 (weights_only is safe) and ray >= 2.52 (token auth), declared and checked at import."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from distmeta._versions import VersionFloorError, check_floors, parse_version

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_floors():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"torch>=2.6,' in text and '"ray[default,tune]>=2.52,' in text


@pytest.mark.parametrize("pkg,old", [("torch", "2.5.1+cpu"), ("ray", "2.51.0")])
def test_import_refuses_an_old_torch_or_ray(pkg, old):
    code = ("import importlib.metadata as m; real = m.version\n"
            f"m.version = lambda n: {old!r} if n == {pkg!r} else real(n)\n"
            "import distmeta\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "VersionFloorError" in out.stderr and f"{pkg}>=" in out.stderr, out.stderr[-2000:]


def test_check_floors_names_each_package_and_accepts_current_ones():
    with pytest.raises(VersionFloorError, match=r"torch 2\.3\.0.*CVE-2025-32434.*ray 2\.40\.0"):
        check_floors(lambda n: {"torch": "2.3.0", "ray": "2.40.0"}[n])
    check_floors(lambda n: {"torch": "2.6.0", "ray": "2.52.0"}[n])
    assert parse_version("2.13.0+cu121") == (2, 13, 0) and parse_version("2.6.0rc1") == (2, 6, 0)
