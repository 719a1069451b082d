"""The import graph of bot/ and generator/: no circles, and the walls between the two halves.

The graph is read with ``ast`` from the source, so it sees imports that a test run never
executes. Every import is an edge of one kind:

- ``module``: runs when the module is imported (class bodies and try/except included);
- ``function``: inside a function body, runs when that function is first called (the usual
  workaround for a circle, so it counts for circles);
- ``type-checking``: under ``if TYPE_CHECKING:``, never runs, but still ties the two modules
  together (the other usual workaround), so it counts for circles too.

Walls: the bot process never imports torch/diffusers/transformers, and nothing in generator/
imports discord or bot. The bot's side of the wall follows every import a bot module runs
(module and function level) into the generator modules it reaches, and from there their
module-level imports; a generator module's function-level imports run where that function
runs (the worker process), so the static walk stops there and the subprocess checks below
confirm what a real import loads.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "generator")
HEAVY = ("torch", "diffusers", "transformers")


@dataclass(frozen=True)
class Edge:
    source: str
    target: str  # a first-party module name, or the dotted name of a third-party import
    kind: str  # "module" | "function" | "type-checking"
    line: int

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({self.kind}, line {self.line})"


def find_modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of ``packages`` under ``root``."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]):
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        # Relative import: strip one package level per dot beyond the first.
        package = module if is_package else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    # `from pkg import name` imports the submodule pkg.name when there is one.
    return [
        f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names
    ]


def module_edges(module: str, path: Path, known: set[str]) -> list[Edge]:
    """Every import in one module, with the kind of each (see the module docstring)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    edges: list[Edge] = []

    def visit(node: ast.AST, kind: str) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in dict.fromkeys(_targets(node, module, is_package, known)):
                edges.append(Edge(module, target, kind, node.lineno))
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, "type-checking")
            for child in node.orelse:
                visit(child, kind)
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            kind = kind if kind == "type-checking" else "function"
        for child in ast.iter_child_nodes(node):
            visit(child, kind)

    visit(tree, "module")
    return edges


def import_graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> list[Edge]:
    modules = find_modules(root, packages)
    known = set(modules)
    return [edge for name, path in modules.items() for edge in module_edges(name, path, known)]


def _top(name: str) -> str:
    return name.partition(".")[0]


def circles(edges: list[Edge], package: str) -> list[list[Edge]]:
    """The strongly connected groups of modules inside ``package``, each as its inner edges."""
    inner = [e for e in edges if _top(e.source) == package and _top(e.target) == package]
    graph: dict[str, set[str]] = {}
    for e in inner:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    # Tarjan's algorithm, iteratively (no recursion limit on a long chain).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1 or node in graph[node]:
                    groups.append(group)
    return [
        sorted((e for e in inner if e.source in g and e.target in g), key=str)
        for g in sorted(groups, key=sorted)
    ]


def _describe(groups: list[list[Edge]]) -> str:
    lines = []
    for edges in groups:
        members = sorted({e.source for e in edges})
        lines.append("circle between " + ", ".join(members) + ":")
        lines.extend(f"    {e}" for e in edges)
    return "\n".join(lines)


def heavy_paths(edges: list[Edge]) -> list[list[Edge]]:
    """Import chains from a bot module to torch/diffusers/transformers (see module docstring)."""
    by_source: dict[str, list[Edge]] = {}
    for e in edges:
        by_source.setdefault(e.source, []).append(e)

    def followed(e: Edge) -> bool:
        if e.kind == "type-checking":
            return False
        return _top(e.source) == "bot" or e.kind == "module"

    found: list[list[Edge]] = []
    reported: set[Edge] = set()  # each offending import once, by the first chain reaching it
    for start in sorted({e.source for e in edges if _top(e.source) == "bot"}):
        seen = {start}
        queue: list[tuple[str, list[Edge]]] = [(start, [])]
        while queue:
            node, path = queue.pop(0)
            for e in by_source.get(node, []):
                if not followed(e):
                    continue
                if _top(e.target) in HEAVY:
                    if e not in reported:
                        reported.add(e)
                        found.append([*path, e])
                elif e.target in by_source and e.target not in seen:
                    seen.add(e.target)
                    queue.append((e.target, [*path, e]))
    return found


# -------------------------------------------------------------------------------------------
# The checker on a made-up package: it must see each kind of import and find a circle.


def _write_package(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))


def test_walker_classifies_module_function_and_type_checking_imports(tmp_path: Path) -> None:
    """The walker resolves relative and submodule imports and labels each edge's kind."""
    _write_package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": """
                from typing import TYPE_CHECKING
                import torch.nn
                from pkg import b
                from . import c as see

                class K:
                    from pkg.b import thing

                if TYPE_CHECKING:
                    from pkg.c import C

                def f():
                    from .b import other
                    return lambda: __import__("os")
            """,
            "pkg/b.py": "",
            "pkg/c.py": "",
        },
    )
    edges = import_graph(tmp_path, ["pkg"])
    got = sorted((e.source, e.target, e.kind, e.line) for e in edges)
    assert got == [
        ("pkg.a", "pkg.b", "function", 13),
        ("pkg.a", "pkg.b", "module", 3),
        ("pkg.a", "pkg.b", "module", 7),
        ("pkg.a", "pkg.c", "module", 4),
        ("pkg.a", "pkg.c", "type-checking", 10),
        ("pkg.a", "torch.nn", "module", 2),
        ("pkg.a", "typing", "module", 1),
    ]


def test_checker_finds_circles_through_function_and_type_checking_imports(tmp_path: Path) -> None:
    """A circle closed only by a function-level or TYPE_CHECKING import is still a circle."""
    _write_package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/app.py": "from pkg import ui\n",
            "pkg/ui.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.app import App\n"
            ),
            "pkg/back.py": "def f():\n    from pkg import redis\n",
            "pkg/redis.py": "from pkg.back import f\n",
            "pkg/leaf.py": "from pkg import app\n",
        },
    )
    groups = circles(import_graph(tmp_path, ["pkg"]), "pkg")
    assert [sorted({e.source for e in g}) for g in groups] == [
        ["pkg.app", "pkg.ui"],
        ["pkg.back", "pkg.redis"],
    ]
    assert {e.kind for e in groups[0]} == {"module", "type-checking"}
    assert {e.kind for e in groups[1]} == {"module", "function"}


def test_heavy_walk_follows_bot_imports_into_generator_module_level_only(tmp_path: Path) -> None:
    """From bot/ every import is followed; in generator/ only module-level ones."""
    _write_package(
        tmp_path,
        {
            "bot/__init__.py": "",
            "bot/app.py": "def start():\n    from generator import backend\n",
            "bot/types.py": """
                from typing import TYPE_CHECKING
                if TYPE_CHECKING:
                    import torch
            """,
            "generator/__init__.py": "",
            "generator/backend.py": """
                from generator import model
                def run():
                    import diffusers
            """,
            "generator/model.py": "import transformers\n",
        },
    )
    paths = heavy_paths(import_graph(tmp_path, ["bot", "generator"]))
    assert [[str(e) for e in p] for p in paths] == [
        [
            "bot.app -> generator.backend (function, line 2)",
            "generator.backend -> generator.model (module, line 1)",
            "generator.model -> transformers (module, line 1)",
        ]
    ]


# -------------------------------------------------------------------------------------------
# The real tree.


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circles(package: str) -> None:
    """No two modules of bot/ (or of generator/) import each other, by any path or kind."""
    groups = circles(import_graph(), package)
    if groups:
        pytest.fail(_describe(groups), pytrace=False)


def test_bot_never_reaches_torch_diffusers_or_transformers() -> None:
    """No import a bot module runs leads to torch/diffusers/transformers, via generator/ or not."""
    paths = heavy_paths(import_graph())
    if paths:
        pytest.fail("\n".join(" => ".join(map(str, p)) for p in paths), pytrace=False)


def test_generator_never_imports_discord_or_bot() -> None:
    """No import in generator/, of any kind, names discord or the bot package."""
    edges = [
        e
        for e in import_graph()
        if _top(e.source) == "generator" and _top(e.target) in ("discord", "bot")
    ]
    if edges:
        pytest.fail("\n".join(map(str, edges)), pytrace=False)


def _loaded_after_import(modules: list[str], watched: tuple[str, ...]) -> list[str]:
    code = (
        "import importlib, sys, warnings\n"
        "warnings.simplefilter('ignore')\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(m for m in {watched!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return ast.literal_eval(out.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(180)
def test_importing_bot_app_and_every_bot_module_loads_no_heavy_stack() -> None:
    """A fresh interpreter that imports bot.app, then every bot/ module, has no torch & co."""
    bot_modules = [m for m in find_modules(ROOT, ["bot"]) if m != "bot"]
    assert "bot.app" in bot_modules
    assert _loaded_after_import(["bot.app"], HEAVY) == []
    assert _loaded_after_import(["bot.app", *bot_modules], HEAVY) == []


@pytest.mark.timeout(180)
def test_importing_every_generator_module_loads_no_discord() -> None:
    """A fresh interpreter that imports every generator/ module (torch included) has no discord."""
    generator_modules = [m for m in find_modules(ROOT, ["generator"]) if m != "generator"]
    assert "generator.pipeline" in generator_modules
    assert _loaded_after_import(generator_modules, ("discord", "bot")) == []


# The Discord edge of bot/ (DESIGN.md section 1); everything else in bot/ is the plain core,
# which the edge calls and which never calls back into the edge.
EDGE = {
    "bot.app",
    "bot.buttons",
    "bot.commands",
    "bot.delivery",
    "bot.interactions",
    "bot.post_recovery",
}


def test_the_core_never_imports_the_edge() -> None:
    """No module of bot/'s core (no discord) imports an edge module, by any kind of import."""
    edges = [
        e
        for e in import_graph()
        if _top(e.source) == "bot" and e.source not in EDGE and e.target in EDGE
    ]
    assert any(e.source == "bot.jobs" for e in import_graph())  # the walk found the core
    if edges:
        pytest.fail("\n".join(map(str, edges)), pytrace=False)
