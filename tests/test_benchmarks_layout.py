"""The benchmarks run as modules of one package: no ``sys.path`` edits, no E402 suppressions, every module imports.

Scripts that put their own folder on ``sys.path`` (and import after doing so) break when moved or
run from elsewhere; as modules of ``benchmarks`` they import each other by name. Every speed
benchmark is in the suite ``make bench`` runs, and its ``--quick`` defaults name real flags.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
#: Packages of this repository: a missing one is a broken import, never an optional dependency.
OWN = {"benchmarks", "distmeta", "clusterbox", "tests"}
FORBIDDEN = {"edits sys.path": re.compile(r"\bsys\.path\b"), "suppresses E402": re.compile(r"noqa:[^\n]*\bE402\b")}


def module_names() -> list[str]:
    """Every module under benchmarks/ as a dotted name (packages by their own name)."""
    names = []
    for path in sorted(BENCHMARKS.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__main__":
            continue  # running it runs the suite or a build; its imports are checked by test_suite_main_imports
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def violations(root: Path) -> list[str]:
    """``file:line: what`` for every sys.path edit or E402 suppression in ``root``'s Python files."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            found += [f"{path.relative_to(root)}:{number}: {what}" for what, pattern in FORBIDDEN.items()
                      if pattern.search(line)]
    return found


def test_no_benchmark_edits_sys_path_or_suppresses_e402() -> None:
    assert violations(BENCHMARKS) == []


def test_the_scan_finds_a_planted_sys_path_edit(tmp_path: Path) -> None:
    (tmp_path / "script.py").write_text("import sys\nsys.path.insert(0, '.')\nimport peers  # noqa: E402\n")
    assert violations(tmp_path) == ["script.py:2: edits sys.path", "script.py:3: suppresses E402"]


@pytest.mark.parametrize("name", module_names())
def test_every_benchmark_module_imports(name: str) -> None:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top and top not in OWN and importlib.util.find_spec(top) is None:
            pytest.skip(f"{name} needs {top}, which is not installed")
        raise


def own_imports(path: Path) -> list[tuple[int, str, str | None]]:
    """``(line, module, name or None)`` of every import of this repository's packages in ``path``, nested ones included
    (many benchmarks import distmeta inside a function, which importing the module does not run)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, None) for a in node.names if a.name.split(".")[0] in OWN]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in OWN:
            found += [(node.lineno, node.module, a.name) for a in node.names]
    return found


def unresolved(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line: module[.name]`` for each import of the repository's own code in ``path`` that does not resolve."""
    bad = []
    for line, module, name in own_imports(path):
        where = f"{path.relative_to(root)}:{line}: {module}" + (f".{name}" if name else "")
        try:
            imported = importlib.import_module(module)
        except ImportError:
            bad.append(where)
            continue
        if name is None or hasattr(imported, name):
            continue
        if not (hasattr(imported, "__path__") and importlib.util.find_spec(f"{module}.{name}") is not None):
            bad.append(where)  # neither an attribute nor a submodule of a package
    return bad


def test_every_import_of_the_repository_in_benchmarks_resolves() -> None:
    """Also the imports inside functions: a moved distmeta module breaks a benchmark only when it runs."""
    assert [b for p in sorted(BENCHMARKS.rglob("*.py")) for b in unresolved(p)] == []


def test_the_import_check_finds_a_moved_module(tmp_path: Path) -> None:
    planted = BENCHMARKS / "speed" / "common.py"  # read only; the planted file is a copy outside the tree
    copy = tmp_path / "bench.py"
    copy.write_text(planted.read_text() + "\n\ndef late() -> None:\n    from distmeta.no_such_module import x\n"
                    "    from distmeta.config import no_such_name\n")
    got = unresolved(copy, tmp_path)
    assert [g.split(": ", 1)[1] for g in got] == ["distmeta.no_such_module.x", "distmeta.config.no_such_name"]


def test_suite_main_imports() -> None:
    for name in ("benchmarks.speed.__main__", "benchmarks.corpora.build"):
        assert importlib.import_module(name).main


def test_the_suite_holds_every_speed_benchmark() -> None:
    suite = importlib.import_module("benchmarks.speed.__main__")
    with_main = {p.stem for p in (BENCHMARKS / "speed").glob("*.py")
                 if not p.stem.startswith("__") and "def main(" in p.read_text()}
    assert {b.name for b in suite.SUITE} == with_main


@pytest.mark.parametrize("name", [b.name for b in importlib.import_module("benchmarks.speed.__main__").SUITE])
def test_quick_mode_names_real_flags(name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """``--quick --help`` parses (parse_args refuses quick defaults for flags the benchmark lacks) and shows --quick."""
    try:
        module = importlib.import_module(f"benchmarks.speed.{name}")
    except ModuleNotFoundError as e:
        pytest.fail(f"benchmarks.speed.{name} does not import: {e}")
    assert module.QUICK, f"{name} has no quick-mode defaults"
    monkeypatch.setattr(sys, "argv", [name, "--quick", "--help"])
    with pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 0
    assert "--quick" in capsys.readouterr().out


def test_quick_defaults_yield_to_explicit_flags() -> None:
    from benchmarks.speed.common import parse_args

    def parser() -> argparse.ArgumentParser:
        ap = argparse.ArgumentParser()
        ap.add_argument("--rounds", type=int, default=7)
        ap.add_argument("--meta-batch", type=int, default=16)
        return ap

    quick = {"rounds": 1, "meta_batch": 4}
    assert vars(parse_args(parser(), quick, [])) == {"rounds": 7, "meta_batch": 16, "quick": False}
    assert vars(parse_args(parser(), quick, ["--quick"])) == {"rounds": 1, "meta_batch": 4, "quick": True}
    assert vars(parse_args(parser(), quick, ["--quick", "--rounds", "3"])) == {"rounds": 3, "meta_batch": 4, "quick": True}
    with pytest.raises(ValueError, match="unknown options \\['steps'\\]"):
        parse_args(parser(), {"steps": 2}, [])
