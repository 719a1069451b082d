"""The import graph of bot/: no circles among its modules (imports under TYPE_CHECKING, which
only feed type hints, are left out), and the core modules never import the Discord edge."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EDGE = {"bot.app", "bot.buttons", "bot.commands", "bot.delivery", "bot.interactions"}


def _imports(path: Path, package: str) -> set[str]:
    """Modules of `package` that `path` imports at run time (module level or in a function)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == package:
                found |= {f"{package}.{alias.name}" for alias in node.names}
            elif node.module.startswith(f"{package}."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(f"{package}.")}
    return found


def _graph(package: str) -> dict[str, set[str]]:
    modules = {f"{package}.{p.stem}": p for p in (ROOT / package).glob("*.py")}
    return {name: _imports(path, package) & set(modules) - {name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the path around it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_bot_has_no_import_circles() -> None:
    """No module of bot/ imports itself back through others at run time."""
    graph = _graph("bot")
    assert "bot.jobs" in graph and len(graph) > 10  # the walk found the package
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_a_cycle_is_found_when_there_is_one() -> None:
    """The cycle finder reports a loop it is given (so the test above can fail)."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_core_never_imports_the_edge() -> None:
    """Modules without discord (everything but the edge) import none of the edge's modules."""
    graph = _graph("bot")
    for module, imported in graph.items():
        if module not in EDGE and module != "bot.render":
            assert not imported & EDGE, (module, imported & EDGE)
