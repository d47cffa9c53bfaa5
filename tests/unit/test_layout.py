"""The layout carries the data flow: one subpackage per stage, short files, and no import circle.

The import graph is read from the source (every import, at module level, inside functions and under
TYPE_CHECKING alike: a lazy import that closes a circle is still a circle), not from what happens
to be imported at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("orchestrator", "workers")
TOP_LEVEL = {"__init__.py", "client.py", "errors.py", "defaults.py", "results.py"}
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imported(tree: ast.AST, known: set[str]) -> set[str]:
    """The project modules a module's source imports (a name imported from a package, when it is a
    module, counts as that module)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] not in PACKAGES:
                continue
            for a in node.names:
                full = f"{node.module}.{a.name}"
                out.add(full if full in known else node.module)
    return out & known


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported(ast.parse(path.read_text()), set(found)) - {name} for name, path in found.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_circle_finder_finds_a_planted_circle_and_nothing_in_a_chain() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_a_lazy_import_counts_as_an_edge() -> None:
    tree = ast.parse("def f():\n    from orchestrator.spec import model\n")
    assert imported(tree, {"orchestrator.spec", "orchestrator.spec.model"}) == {"orchestrator.spec.model"}


def test_no_import_circle() -> None:
    graph = import_graph()
    assert len(graph) > 50, "the walk found the package's modules"
    assert circles(graph) == []


def test_the_spec_layer_imports_nothing_from_workers_or_ray() -> None:
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("orchestrator.spec"):
            assert not {d for d in deps if d.startswith("workers")}, name
            assert "ray" not in (ROOT / modules()[name]).read_text().split(), name


def test_every_orchestrator_module_sits_in_a_stage_subpackage() -> None:
    loose = {p.name for p in (ROOT / "orchestrator").glob("*.py")} - TOP_LEVEL
    assert loose == set()


@pytest.mark.parametrize("package", sorted(p.parent.name for p in (ROOT / "orchestrator").glob("*/__init__.py")))
def test_every_stage_says_what_it_takes_and_gives(package: str) -> None:
    doc = ast.get_docstring(ast.parse((ROOT / "orchestrator" / package / "__init__.py").read_text()))
    assert doc and len(doc) > 40, f"orchestrator/{package}/__init__.py needs a docstring"


def test_no_file_over_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in modules().values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
