"""No module of jobgate imports itself back, however far round.

The graph is built from the source with `ast`, not by importing, so a cycle is found
even where it happens not to break at run time. An edge is every `import` a module runs:
at module level and inside functions alike, since an import deferred into a function is
how a cycle is usually hidden rather than removed (`api` ⇄ `stream_api`, `config` ⇄
`kinds` were both written that way). Imports under `if TYPE_CHECKING:` are left out: they
never run, and an annotation naming a type from a module that imports this one is not an
arrow against the grain of what runs. Importing `jobgate.a.b` counts as an edge to
`jobgate.a.b` only, not to the package `jobgate.a` it implies: a package's `__init__`
importing its own submodules is what packages are for.

`JOBGATE_SRC` names another source root (the folder holding `jobgate/`) to check, e.g. a
copy of another branch's `src`.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

SRC = Path(os.environ.get("JOBGATE_SRC", Path(__file__).parent.parent / "src"))
PACKAGE = "jobgate"


def modules(src: Path) -> dict[str, Path]:
    """Every module of the package under `src`, by dotted name."""
    found = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run: all of them but those under `if TYPE_CHECKING:`."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for statement in node.orelse:
                visit(statement)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(src: Path) -> dict[str, set[str]]:
    """Each module of the package → the package's modules it imports."""
    known = modules(src)
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        for node in _imports(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    here = name.split(".") if is_package else name.split(".")[:-1]
                    here = here[: len(here) - (node.level - 1)]
                    base = ".".join([*here, base] if base else here)
                # `from jobgate import stream_api` imports a module; `from jobgate.x import
                # f` imports jobgate.x.
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                           for alias in node.names]
            for target in targets:
                while target and target not in known and "." in target:
                    target = target.rsplit(".", 1)[0]  # `import jobgate.x.y` of a name
                if target in known and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted, each
    given as one cycle through it: `a → b → … → a`."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_one_cycle(graph, group) for group in sorted(groups)]


def _one_cycle(graph: dict[str, set[str]], group: list[str]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    following.append(w)
        frontier = following
    return group  # unreachable: a strongly connected group has a cycle through each member


def test_the_graph_sees_the_package() -> None:
    graph = import_graph(SRC)
    assert "jobgate.cli" in graph and "jobgate.store.base" in graph
    assert "jobgate.model" in graph["jobgate.queue"]  # a plain module-level import


def test_no_module_imports_in_a_cycle() -> None:
    found = cycles(import_graph(SRC))
    assert not found, "import cycles:\n" + "\n".join(" → ".join(c) for c in found)


@pytest.mark.parametrize(("source", "expected"), [
    ("import jobgate.b\n", [["jobgate.a", "jobgate.b", "jobgate.a"]]),
    ("def f():\n    from jobgate import b\n", [["jobgate.a", "jobgate.b", "jobgate.a"]]),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from jobgate.b import x\n", []),
    ("from . import b\n", [["jobgate.a", "jobgate.b", "jobgate.a"]]),
    ("import os\n", []),
])
def test_a_cycle_is_found_and_named(tmp_path: Path, source: str, expected: list[list[str]]) -> None:
    package = tmp_path / PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(source)
    (package / "b.py").write_text("from jobgate.a import thing\n")
    assert cycles(import_graph(tmp_path)) == expected
