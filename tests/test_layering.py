"""The package's floor plan, enforced: imports run one way between layers, and no module imports itself in a circle.

In the spirit of Ray's ``test_circular_imports.py``, but static: every ``import`` statement of
every module is read from its source (module level and inside functions alike; only
``if TYPE_CHECKING:`` blocks, which never run, are left out), so an upward import hidden in
a function body fails here as well.

The layers, from the bottom (docs/architecture.md draws them):

* **base**: the config schema, errors, file names and atomic writes, version floors, the
  security checks of files, the on-disk caches, progress bars;
* **compute**: data, text, tasks, models, algorithms, groups, the Worker, results, optim,
  baselines, the experiment. No Ray, no runs, no storage;
* **persistence**: run directories, checkpoints, storage URIs, leases;
* **distribution**: everything Ray (:mod:`distmeta.distributed`); implements the Backend
  protocol structurally, without importing the training layer;
* **drills**: fault drills, wrapped around a backend only when a plan is given;
* **training**: the Trainer loop, backends' factory, evaluation, selection, metrics;
* **sweeps**: Ray Tune searches and grids;
* **front**: the command line, ``distmeta cache``, and the package root's re-exports.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "distmeta"

LAYERS: dict[str, int] = {"base": 0, "compute": 1, "persistence": 2, "distribution": 2, "drills": 3, "training": 4,
                          "sweeps": 5, "front": 6}
#: Layers on the same level that must not know each other.
SIBLINGS = {("persistence", "distribution"), ("distribution", "persistence")}

BASE = ("config", "errors", "files", "_versions", "security", "caches", "progress")
COMPUTE = ("data", "text", "tasks", "models", "algorithms", "groups", "worker", "results", "optim", "baselines",
           "experiment")


def layer_of(module: str) -> str:
    """The layer of ``distmeta.<part>...``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "front"  # the package root re-exports the front door
    top = parts[1]
    if top in BASE:
        return "base"
    if top in COMPUTE:
        return "compute"
    known = {"persistence": "persistence", "distributed": "distribution", "drills": "drills", "training": "training",
             "sweeps": "sweeps", "cli": "front", "cache_admin": "front"}
    if top not in known:
        raise AssertionError(f"{module}: in no layer; add it to tests/test_layering.py and docs/architecture.md")
    return known[top]


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node that runs: ``if TYPE_CHECKING:`` bodies are left out."""
    out, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        out.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return out


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports when it runs (``from pkg import submodule`` names the submodule)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]

    def resolve(dotted: str) -> str:
        while dotted not in known and "." in dotted:
            dotted = dotted.rsplit(".", 1)[0]
        return dotted

    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            targets = subs + ([base] if len(subs) < len(node.names) else [])
        found.update(resolve(t) for t in targets if t == "distmeta" or t.startswith("distmeta."))
    found.discard(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_the_checker_finds_cycles_and_upward_imports() -> None:
    """The checks below can fail: a planted cycle and a planted upward import are found."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _violations({"distmeta.worker": {"distmeta.training.trainer"}}) == [
        "distmeta.worker (compute) imports distmeta.training.trainer (training)"]
    assert _violations({"distmeta.distributed.pool": {"distmeta.persistence.lease"}})


def test_no_import_cycles(graph) -> None:
    assert _cycles(graph) == [], "modules that import each other in a circle"


def _violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for name, targets in sorted(graph.items()):
        mine = layer_of(name)
        for target in sorted(targets):
            theirs = layer_of(target)
            upward = LAYERS[theirs] > LAYERS[mine] or (mine, theirs) in SIBLINGS
            if target == "distmeta" and mine != "front":
                upward = True  # the root re-exports everything: importing it from inside is a cycle in waiting
            if upward:
                out.append(f"{name} ({mine}) imports {target} ({theirs})")
    return out


def test_imports_run_one_way_between_layers(graph) -> None:
    assert _violations(graph) == []


def test_compute_never_imports_ray(graph) -> None:
    """The compute (and everything below the distribution layer) runs without Ray: on a GPU box, in a test."""
    for name, path in modules().items():
        if LAYERS[layer_of(name)] >= LAYERS["distribution"] and layer_of(name) != "persistence":
            continue
        roots = {a.name.split(".")[0] for n in _runtime_nodes(ast.parse(path.read_text()))
                 if isinstance(n, ast.Import) for a in n.names}
        roots |= {n.module.split(".")[0] for n in _runtime_nodes(ast.parse(path.read_text()))
                  if isinstance(n, ast.ImportFrom) and n.module and not n.level}
        assert "ray" not in roots, f"{name} ({layer_of(name)}) imports ray"


def test_no_two_modules_share_a_name_for_different_jobs() -> None:
    """Module and package names are unique across the package (``config/data.py`` beside ``data/`` would not be)."""
    seen: dict[str, str] = {}
    clashes = []
    for name, path in modules().items():
        if name == "distmeta":
            continue
        stem = name.rsplit(".", 1)[-1]
        if stem in seen:
            clashes.append(f"{seen[stem]} and {name}")
        seen[stem] = name
    assert clashes == []


#: The modules of the distribution and persistence layers that may hold the whole ``Config``, and why:
#: the Ray backend and its pool ship the experiment to the actors (each Worker is built from it),
#: and reopening a saved run reads one back. Everything else there takes its own section.
WHOLE_CONFIG = {"distmeta.distributed.ray_backend", "distmeta.distributed.actor_pool", "distmeta.persistence.reopen"}


def _imported_names(path: Path, module: str) -> set[str]:
    return {a.name for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.ImportFrom) and n.module == module for a in n.names}


def test_the_layers_below_training_take_their_own_config_section() -> None:
    """Distribution and persistence code reads ``resources`` / ``ray`` / ``run``, never the whole run's config."""
    holders = {name for name, path in modules().items()
               if layer_of(name) in ("distribution", "persistence") and "Config" in _imported_names(path, "distmeta.config")}
    assert holders == WHOLE_CONFIG
