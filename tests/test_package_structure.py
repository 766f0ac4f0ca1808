"""The package's import graph reads top to bottom: no cycle, and the lower layers never reach the upper ones.

Both module-level imports and the ones inside functions count (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "eomt_ood"
# What a reader can learn without the BRAVO code, the training code, the reports or the command line.
LOWER = ("eomt_ood.models", "eomt_ood.inference", "eomt_ood.confidence", "eomt_ood.metrics", "eomt_ood.data")
UPPER = (
    "eomt_ood.bravo",
    "eomt_ood.evaluate",
    "eomt_ood.training",
    "eomt_ood.reports",
    "eomt_ood.store",
    "eomt_ood.regress",
    "eomt_ood.serve",
    "eomt_ood.cli",
)


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _in(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """The first cycle a depth-first walk of `edges` finds (its nodes, the first repeated last), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target, [*path, target])):
                return found
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node, [node])):
            return found
    return None


def test_no_import_cycle():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])  # eomt_ood.bravo.scoring -> eomt_ood.bravo


def test_no_cycle_between_packages():
    # Module-level acyclicity still lets two packages lean on each other (bravo.x -> reports.y -> bravo.z); the
    # packages must form a layered graph too, so each can be read knowing only the ones below it.
    edges: dict[str, set[str]] = {}
    for name, targets in _graph().items():
        for target in targets:
            if _package(name) != _package(target):
                edges.setdefault(_package(name), set()).add(_package(target))
    cycle = _cycle(edges)
    assert cycle is None, "package cycle: " + " -> ".join(cycle or [])


def test_lower_layers_never_import_upper_ones():
    upward = [
        f"{name} -> {target}"
        for name, targets in _graph().items()
        if _in(name, LOWER)
        for target in targets
        if _in(target, UPPER)
    ]
    assert upward == []


def test_the_structure_check_sees_real_edges():
    graph = _graph()  # a negative control: the checks above would be empty-handed on a broken parser
    assert "eomt_ood.confidence.outputs" in graph["eomt_ood.inference.predict"] or any(
        t.startswith("eomt_ood.confidence") for t in graph["eomt_ood.inference.predict"]
    )
    assert "eomt_ood.bravo.scoring" in graph["eomt_ood.evaluate"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # and the walk finds cycles
    assert _cycle({"a": {"b", "c"}, "b": {"c"}}) is None
