"""The package's imports point one way: no cycles, and no layer imports a layer above it.

Every ``import latprune.…`` counts, lazy ones inside functions and
``TYPE_CHECKING`` blocks included: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "latprune"

# Bottom to top; a module may import its own layer and the layers below it.
LAYERS: list[tuple[str, ...]] = [
    ("latprune", "latprune.errors", "latprune._io", "latprune._progress", "latprune.budget", "latprune.stats",
     "latprune.parallel", "latprune.parity"),
    ("latprune.graph", "latprune.runtime", "latprune.models"),
    ("latprune.latency_lut",),
    ("latprune.pruner", "latprune.data", "latprune.train"),
    ("latprune.exporters",),
    ("latprune.api", "latprune.gating", "latprune.bench"),
    ("latprune.cli", "latprune.specs", "latprune.report", "latprune.demo", "latprune.__main__"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Module -> the latprune modules it imports (``from a.b import c`` counts as ``a.b``, or
    ``a.b.c`` where that is a module)."""
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.split(".")[0] == "latprune")
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "latprune":
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in modules else node.module)
        graph[name] = {t for t in targets if t != name}
    return graph


def layer_of(module: str) -> int:
    best = -1, -1  # (length of the matching prefix, layer)
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module == prefix or (prefix != "latprune" and module.startswith(prefix + "."))
            if inside and len(prefix) > best[0]:
                best = len(prefix), index
    if best[1] < 0:
        raise AssertionError(f"module {module} is in no layer: add it to LAYERS in {__file__}")
    return best[1]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycle() -> None:
    cycle = find_cycle(imports())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_imports_point_down_the_layers() -> None:
    upward = [f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
              for m, targets in sorted(imports().items()) for t in sorted(targets) if layer_of(t) > layer_of(m)]
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ({"a": {"a2"}, "a2": {"b"}, "b": {"a2"}}, ["a2", "b", "a2"]),
])
def test_find_cycle(graph: dict[str, set[str]], expected: list[str] | None) -> None:
    assert find_cycle(graph) == expected
