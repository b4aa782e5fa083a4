"""The package's import graph has no cycle: modules are layered (design.md §2).

Every ``import`` and ``from ... import`` in ``wskit_trio`` counts, those under
``if TYPE_CHECKING:`` and inside functions too, and so does the implicit import
of a module's parent packages (importing ``wskit_trio.pubsub._hub`` runs
``wskit_trio/pubsub/__init__.py`` first, and whatever that imports).
"""

from __future__ import annotations

import ast
from pathlib import Path

import wskit_trio

PACKAGE = Path(wskit_trio.__file__).parent


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _parents(name: str) -> list[str]:
    """The packages Python runs before ``name``, outermost (the root) excluded:
    the root ``__init__`` only re-exports, and importing it is never a step down."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    module = node.module or ""
                targets.add(module)
                targets.update(f"{module}.{alias.name}" for alias in node.names)
        for target in targets:
            if target not in modules or target == name:
                continue
            graph[name].add(target)
            graph[name].update(p for p in _parents(target) if p != name and p not in _parents(name))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle, as the list of modules along it, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_import_graph_has_no_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_type_checking_and_parent_package_imports() -> None:
    graph = import_graph()
    # Under TYPE_CHECKING only, in _config.
    assert "wskit_trio._context" in graph["wskit_trio._config"]
    # Importing a submodule runs its package's __init__ first.
    assert "wskit_trio.pubsub" in graph["wskit_trio._router"]
