"""The package's shape: imports flow one way (no cycles, counting imports inside functions too), engines run
without torch and without the exporters, and no module grows past the line limit."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Installed package name -> source folder (pyproject's package-dir).
PACKAGES = {"fastast_deploy": ROOT / "fastast_deploy", "fastast_deploy.exporters": ROOT / "exporters",
            "fastast_deploy.engines": ROOT / "engines"}
MAX_LINES = 400


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def imports_of(name: str, source: str, known: set[str], is_package: bool = False) -> set[str]:
    """Every project module that module ``name`` (its ``source`` text) imports, at module level or inside
    functions (``a.b`` for ``from a import b`` when ``a.b`` is a module)."""
    package = name if is_package else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets.add(source)
            targets.update(f"{source}.{alias.name}" for alias in node.names)
    return {t for t in targets if t in known and t != name}


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path.read_text(encoding="utf-8"), set(found), path.name == "__init__.py")
            for name, path in found.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first == last), or None. Package ``__init__`` edges to their own submodules
    are not cycles: Python imports the package first."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_checker_sees_cycles_and_relative_imports() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"p": {"p.x"}, "p.x": {"p"}}) is None
    known = {"fastast_deploy.engines.base", "fastast_deploy.engines.loading", "fastast_deploy.errors"}
    text = "from .base import Engine\n\ndef f():\n    from fastast_deploy import errors\n"
    assert imports_of("fastast_deploy.engines.loading", text, known) == {"fastast_deploy.engines.base",
                                                                         "fastast_deploy.errors"}


def test_no_import_cycles() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_engines_import_neither_torch_nor_the_exporters() -> None:
    bad = []
    for name, path in modules().items():
        if not name.startswith("fastast_deploy.engines"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            bad += [f"{name}: {n}" for n in names
                    if n.split(".")[0] == "torch" or n.startswith(("fastast_deploy.exporters", "exporters"))]
    assert not bad, bad


@pytest.mark.parametrize("name", sorted(modules()))
def test_module_within_line_limit(name: str) -> None:
    lines = len(modules()[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by topic (limit {MAX_LINES})"
