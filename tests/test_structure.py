"""The package's shape: imports flow one way, as the README's layout section draws it (an allowed-imports table by
package, counting imports inside functions too, and no cycles), engines run without torch and without the
exporters, the config modules load without torch, and no module grows past the line limit."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Installed package name -> source folder (pyproject's package-dir).
PACKAGES = {"fastast_deploy": ROOT / "fastast_deploy", "fastast_deploy.exporters": ROOT / "exporters",
            "fastast_deploy.engines": ROOT / "engines"}
MAX_LINES = 400

# The layers, bottom up (README "Layout"): each package may import its own modules and those listed. "base" is
# the plain modules beside the packages; "root" is the package's own __init__, which nothing imports.
BASE = frozenset({"contract", "errors", "files", "pairs", "metrics", "scoped"})
_BELOW_RUNNERS = {"base", "model", "audio", "checkpoints", "engines"}
ALLOWED: dict[str, set[str]] = {
    "base": {"base"},
    "model": {"base"},
    "audio": {"base", "model"},
    "checkpoints": {"base", "model", "audio"},
    "engines": {"base"},
    "exporters": {"base", "model", "audio", "checkpoints", "engines"},
    "inference": set(_BELOW_RUNNERS),
    "evaluation": _BELOW_RUNNERS | {"exporters", "inference"},
    "serving": _BELOW_RUNNERS | {"exporters", "inference"},
    "training": _BELOW_RUNNERS | {"exporters", "inference"},
    "cli": _BELOW_RUNNERS | {"exporters", "inference", "evaluation", "serving", "training"},
    "root": {"base", "checkpoints"},
}


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


def layer(module: str) -> str:
    """The ALLOWED key of a project module: its sub-package, "base" or "root"."""
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    return "base" if parts[1] in BASE else parts[1]


def back_edges(edges: dict[str, set[str]]) -> list[str]:
    """Every import that runs against the layering table, as "importer -> imported"."""
    return sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets
                  if layer(b) != layer(a) and layer(b) not in ALLOWED[layer(a)])


def test_every_module_has_a_layer() -> None:
    assert {layer(m) for m in modules()} <= set(ALLOWED)


def test_the_layering_table_catches_a_planted_back_edge() -> None:
    known = set(modules())
    planted = "import numpy\n\ndef f():\n    from fastast_deploy.evaluation.timing import time_interleaved\n"
    edges = {"fastast_deploy.engines.ort_engine":
             imports_of("fastast_deploy.engines.ort_engine", planted, known)}
    assert back_edges(edges) == ["fastast_deploy.engines.ort_engine -> fastast_deploy.evaluation.timing"]
    upward = {"fastast_deploy.model.fastast": {"fastast_deploy.audio.features"},
              "fastast_deploy.evaluation.evaluate": {"fastast_deploy.serving.predict"},
              "fastast_deploy.exporters.parity": {"fastast_deploy.metrics", "fastast_deploy.model.fastast"}}
    assert back_edges(upward) == ["fastast_deploy.evaluation.evaluate -> fastast_deploy.serving.predict",
                                  "fastast_deploy.model.fastast -> fastast_deploy.audio.features"]


def test_imports_follow_the_layers() -> None:
    bad = back_edges(graph())
    assert not bad, f"{len(bad)} imports run against the layering (README, Layout):\n" + "\n".join(bad)


def test_config_modules_import_without_torch(tmp_path: Path) -> None:
    blocker = ("import sys\n"
               "class Block:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name == 'torch' or name.startswith('torch.'):\n"
               "            raise ImportError('torch is blocked')\n"
               "sys.meta_path.insert(0, Block())\n")
    modules_ = ["fastast_deploy.model.config", "fastast_deploy.model.schedule", "fastast_deploy.model.flops",
                "fastast_deploy.training.config", "fastast_deploy.audio.frames", "fastast_deploy.contract",
                "fastast_deploy.metrics", "fastast_deploy.scoped", "fastast_deploy.engines"]
    code = blocker + "".join(f"import {m}\n" for m in modules_) + (
        "from fastast_deploy.model.config import ModelConfig\n"
        "from fastast_deploy.model.flops import flop_ratio\n"
        "from fastast_deploy.training.config import TrainConfig\n"
        "assert flop_ratio(ModelConfig(), (16,) * 12) > 1\n"
        "TrainConfig(train='t', val='v', labels='l', output='o').kind()\n"
        "assert 'torch' not in sys.modules\n"
        "try:\n    import torch\nexcept ImportError:\n    pass\n"
        "else:\n    raise SystemExit('the blocker let torch in')\n")
    # Run outside the source tree: from its root, `import fastast_deploy` would find the folder, not the install.
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]


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
