"""The package's import graph has no cycles, counting imports inside functions as well.

A cycle works only while every module in it is imported in one lucky order; an import deferred
into a function only hides it until that function runs. The graph is read from the source with
``ast``: an edge ``a -> b`` for every ``import``/``from ... import`` of a ``mednext_lite`` module in
``a`` (at module level or in a function, except under ``if TYPE_CHECKING:``), and ``a -> p`` for
each package ``p`` that importing ``b`` initialises first and that ``a`` is not inside.
"""

from __future__ import annotations

import ast
from collections.abc import Collection
from pathlib import Path

import mednext_lite

PACKAGE = Path(mednext_lite.__file__).parent


def module_names() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its __init__)."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("mednext_lite", *path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _runtime_nodes(tree: ast.AST):
    """All nodes of ``tree`` except those under ``if TYPE_CHECKING:`` (never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports_of(name: str, path: Path, modules: Collection[str]) -> set[str]:
    """The package modules that running ``name`` (all of it, functions included) imports."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # ``from pkg import sub`` imports the submodule ``pkg.sub`` too.
            targets = [source] + [f"{source}.{alias.name}" for alias in node.names
                                  if f"{source}.{alias.name}" in modules]
        else:
            continue
        for target in targets:
            if target in modules:
                found.update([target, *_ancestors(target)])
    # A module's own packages are initialised before it runs: importing them adds no edge.
    return found - {name, *_ancestors(name)}


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (each one cycle or several), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm; the graph has a few dozen nodes
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def test_the_graph_reader_finds_module_level_deferred_and_package_edges(tmp_path):
    graph = import_graph()
    assert "mednext_lite.model" in graph["mednext_lite"]  # from .model import ... in __init__
    assert "mednext_lite.profile" in graph["mednext_lite.cli"]  # deferred, inside build_parser
    assert "mednext_lite.data" in graph["mednext_lite.cli"]  # importing data.commands runs data/__init__ first
    source = tmp_path / "mod.py"
    source.write_text("from typing import TYPE_CHECKING\nfrom . import b\n"
                      "if TYPE_CHECKING:\n    from .d import x\nelse:\n    import p.e\n"
                      "def f():\n    from .sub.g import y\n")
    modules = dict.fromkeys(["p", "p.b", "p.d", "p.e", "p.sub", "p.sub.g"])
    assert imports_of("p.a", source, modules) == {"p.b", "p.e", "p.sub", "p.sub.g"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_has_no_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles (each group imports itself through the others): " + "; ".join(
        " <-> ".join(group) for group in found)
