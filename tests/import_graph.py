"""The import graph of a package, read from its source (AST), not by importing it.

Every import anywhere in a module counts: at module level, inside a function or under ``if TYPE_CHECKING``
alike, because a lazy import only hides a dependency until the day someone moves it to the top. A ``from a
import b`` names ``a.b`` when that is a module of the package, else ``a``; the parent packages that Python
also runs on the way are not edges, or every ``__init__`` that re-exports would import itself back.
Loaded by tests/conftest.py (the ``import_graph`` fixture): pytest's importlib mode puts no test folder on sys.path.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from pathlib import Path


def modules(package: str) -> dict[str, Path]:
    """Every module of the installed ``package`` (packages by their ``__init__``), name -> source file."""
    root = importlib.import_module(package)
    found = {package: Path(str(root.__file__))}
    for info in pkgutil.walk_packages(root.__path__, prefix=package + "."):
        spec = importlib.util.find_spec(info.name)
        assert spec is not None and spec.origin is not None, info.name
        found[info.name] = Path(spec.origin)
    return found


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_names(module: str, path: Path, known: set[str] | frozenset[str] = frozenset()) -> set[str]:
    """The absolute names ``module`` imports anywhere in its source; ``from a import b`` gives ``a.b`` if that is
    in ``known`` (the package's modules), else ``a``."""
    names: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node)
            names |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return names


def graph(found: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports."""
    known = set(found)
    return {name: {t for t in imported_names(name, path, known) if t in known and t != name}
            for name, path in found.items()}


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None: depth-first search, iterative (no recursion limit)."""
    done: set[str] = set()
    for start in sorted(edges):
        if start in done:
            continue
        path, on_path = [start], {start}
        stack = [iter(sorted(edges[start]))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
            elif nxt in on_path:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in done:
                path.append(nxt)
                on_path.add(nxt)
                stack.append(iter(sorted(edges.get(nxt, ()))))
    return None


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle for each group of modules that import one another (a strongly connected component)."""
    reach = {name: reachable(edges, name) for name in edges}
    found, grouped = [], set()
    for name in sorted(edges):
        if name in grouped or name not in reach[name]:
            continue
        group = {other for other in reach[name] if name in reach[other]}
        grouped |= group
        cycle = find_cycle({m: edges[m] & group for m in group})
        assert cycle is not None
        found.append(cycle)
    return found
