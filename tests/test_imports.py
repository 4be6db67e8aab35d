"""The package's import graph has no circles, function-level imports included.

Every module of the installed packages (see pyproject's ``package-dir``) is parsed with
``ast``; each ``import`` / ``from ... import`` at any depth is an edge, except those under
``if TYPE_CHECKING:`` (they never run). An import of ``rtbci.x.y`` is an edge to the module
``rtbci.x.y``; ``from rtbci.x import name`` is an edge to ``rtbci.x.name`` when that is a
module, else to the package ``rtbci.x``. The one TYPE_CHECKING-only edge that would close a
circle today is ``rtbci.stream`` → ``rtbci.preprocess`` (an annotation; preprocess imports
stream at run time). Importing ``rtbci.x.y`` also runs the packages
above it, but those ``__init__`` edges are not counted: a package that re-exports its
submodules would otherwise be a circle with each of them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"rtbci": "rtbci", "rtbci.devices": "devices", "rtbci.models": "models",
                "rtbci.gui": "gui"}


def _modules() -> dict[str, Path]:
    """Map each dotted module name of the installed packages to its file."""
    found: dict[str, Path] = {}
    for package, folder in PACKAGE_DIRS.items():
        base = ROOT / folder
        for path in base.rglob("*.py"):
            parts = path.relative_to(base).with_suffix("").parts
            if any(p in {"__pycache__", "checkpoints"} for p in parts):
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join((package, *parts))
            # a folder of devices/ that is a package of its own in pyproject wins
            found.setdefault(name, path)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, list[str]]]:
    """Every (base module, imported names) the tree imports, outside TYPE_CHECKING blocks."""
    out: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            out.append((base, [alias.name for alias in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module → the package modules it imports (edges to itself dropped)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for base, names in _imports(tree, name, path.name == "__init__.py"):
            targets = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
            if len(targets) < len(names) or not names:
                targets.append(base)
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(found)


def _path(graph: dict[str, set[str]], component: list[str]) -> str:
    """One circle through the component's first module, for the failure message."""
    members, start = set(component), component[0]
    trail, seen = [start], {start}

    def walk(v: str) -> bool:
        for w in sorted(graph[v] & members):
            if w == start and len(trail) > 1:
                trail.append(w)
                return True
            if w not in seen:
                seen.add(w)
                trail.append(w)
                if walk(w):
                    return True
                trail.pop()
        return False

    walk(start)
    return " → ".join(trail)


def test_the_graph_sees_function_level_and_relative_imports() -> None:
    graph = import_graph()
    assert "rtbci.engine" in graph and "rtbci.devices.replay" in graph
    assert "rtbci.models.training" in graph and "rtbci.gui.app" in graph
    assert "rtbci.config" in graph["rtbci.engine"]
    assert "rtbci.devices.session" in graph["rtbci.devices.recording"]  # inside a function
    assert "rtbci.preprocess" not in graph["rtbci.stream"]  # under TYPE_CHECKING only


def test_no_import_circles() -> None:
    graph = import_graph()
    found = cycles(graph)
    lines = [f"{len(c)} modules: {_path(graph, c)}  [{', '.join(c)}]" for c in found]
    assert not found, "import circles:\n" + "\n".join(lines)


def _is_cli(module: str) -> bool:
    return module == "rtbci.cli" or module.startswith("rtbci.cli.")


def test_only_the_entry_point_imports_the_command_line() -> None:
    """The library sits below the command line: no module outside ``rtbci.cli`` imports it or
    one of its command modules, except ``rtbci/__main__.py`` (``python -m rtbci``)."""
    graph = import_graph()
    assert "rtbci.cli.train" in graph["rtbci.cli"] and "rtbci.cli" in graph["rtbci.__main__"]
    users = sorted(f"{module} → {target}" for module, targets in graph.items()
                   if not _is_cli(module) and module != "rtbci.__main__"
                   for target in targets if _is_cli(target))
    assert not users, "modules that import the command line:\n" + "\n".join(users)


def test_importing_the_config_loads_no_implementation() -> None:
    heavy = ["aiomqtt", "scipy.signal", "rtbci.engine", "rtbci.report", "torch"]
    code = ("import sys, rtbci.config\n"
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, check=True)
    assert done.stdout.strip() == "", f"import rtbci.config loaded {done.stdout.strip()}"


MAX_LINES = 500
ON_PURPOSE = "Over 500 lines on purpose"


def test_no_module_is_over_500_lines_unless_its_docstring_says_why() -> None:
    """Issue 25: a module a new maintainer can read; a longer one's docstring says why
    (``Over 500 lines on purpose: …``)."""
    long = {name: n for name, path in _modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES
            and ON_PURPOSE not in (ast.get_docstring(ast.parse(path.read_text())) or "")}
    assert not long, f"modules over {MAX_LINES} lines with no reason in their docstring: {long}"
