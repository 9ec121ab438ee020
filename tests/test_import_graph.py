"""The import graph of the project: no circles anywhere, and the package arrows of DESIGN.md.

Every ``import`` and ``from ... import`` statement counts, module-level or inside a function (a
lazy import that closes a circle is still a circle). Packages: ``core`` imports none of the others;
``serving`` never imports the two halves or ``pipelines``; ``recsys_ssl`` and ``text_ood`` never
import each other; nothing imports ``pipelines`` (training and serving run without Beam).
"""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("core", "pipelines", "recsys_ssl", "serving", "text_ood")
FORBIDDEN = {
    "core": {"pipelines", "recsys_ssl", "serving", "text_ood"},
    "serving": {"pipelines", "recsys_ssl", "text_ood"},
    "recsys_ssl": {"pipelines", "text_ood"},
    "text_ood": {"pipelines", "recsys_ssl"},
}


def _modules() -> dict[str, str]:
    """Dotted module name -> file path, for every module of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for directory, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    relative = os.path.relpath(os.path.join(directory, name), ROOT)[:-3].split(os.sep)
                    if relative[-1] == "__init__":
                        relative = relative[:-1]
                    modules[".".join(relative)] = os.path.join(directory, name)
    return modules


def _imports(module: str, path: str, modules: dict[str, str]) -> set[str]:
    """The project modules that ``module`` imports (``from a import b`` counts ``a.b`` if it is a module)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in modules else base)
    return {name for name in found if name in modules and name != module}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {module: _imports(module, path, modules) for module, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, result, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return result


def test_the_checker_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    cycles = _cycles(_graph())
    assert not cycles, f"import circles: {cycles}"


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_arrows(package):
    graph = _graph()
    bad = sorted((module, target) for module, targets in graph.items() if module.split(".")[0] == package
                 for target in targets if target.split(".")[0] in FORBIDDEN[package])
    assert not bad, f"{package} must not import {sorted(FORBIDDEN[package])}: {bad}"
