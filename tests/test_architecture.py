"""No import cycles inside dtrl, function-level imports included.

import-linter (``lint-imports``) checks the layers, but it follows module-level imports only: two
modules that import each other inside functions (``checkpoint.load_policy`` importing
``huggingface``, which imported ``checkpoint``) pass it. This checker reads every ``.py`` file under
``src/dtrl`` with ``ast`` and takes every import statement wherever it stands (module level, inside a
function, a method, an ``if``, a ``try``). ``importlib.import_module("name")`` with a string (the CLI's
dispatch) is not an import statement and is not followed.

Resolution: ``import a.b`` imports module ``a.b``; ``from a.b import n`` imports ``a.b.n`` when that is
a module (a submodule), else ``a.b`` (a name defined in ``a/b.py`` or ``a/b/__init__.py``); relative
imports are resolved against the importing module's package. A package is its ``__init__`` module.
Importing ``a.b`` also runs ``a/__init__.py``, but that is not counted as importing ``a``: a package's
``__init__`` re-exporting its own submodules is not a cycle worth failing on.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import dtrl


@dataclass(frozen=True)
class ImportEdge:
    target: str
    """the module imported"""
    where: str
    """file:line of the import statement"""


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Every module under the package directory ``root`` (named ``package``): dotted name -> file."""
    modules = {}
    for file in sorted(root.rglob("*.py")):
        parts = [package, *file.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = file
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` itself if it is a module, else its longest prefix that is one (None: outside the package)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: dict[str, Path]) -> list[str]:
    """The package's modules one import statement imports."""
    if isinstance(node, ast.Import):
        return [target for alias in node.names if (target := _resolve(alias.name, modules))]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = package[:len(package) - (node.level - 1)]
        base = ".".join([*anchor, *([node.module] if node.module else [])])
    targets = []
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        target = submodule if submodule in modules else _resolve(base, modules)
        if target:
            targets.append(target)
    return targets


def import_graph(root: Path, package: str) -> dict[str, list[ImportEdge]]:
    """module -> the package's modules it imports anywhere in its file (module level or inside functions)."""
    modules = module_names(root, package)
    graph: dict[str, list[ImportEdge]] = {}
    for module, file in modules.items():
        tree = ast.parse(file.read_text(), filename=str(file))
        edges = graph.setdefault(module, [])
        statements = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
        for node in sorted(statements, key=lambda n: (n.lineno, n.col_offset)):
            for target in _imported(node, module, file.name == "__init__.py", modules):
                if target != module:
                    edges.append(ImportEdge(target, f"{file.relative_to(root.parent)}:{node.lineno}"))
    return graph


def find_cycles(graph: dict[str, list[ImportEdge]]) -> list[str]:
    """One cycle per strongly connected component of more than one module, as
    ``a -> b (a.py:3) -> a (b.py:7)``; empty when the graph has no cycle."""
    components = _strongly_connected(graph)
    cycles = []
    for component in components:
        if len(component) > 1:
            cycles.append(_describe_cycle(graph, component))
    return cycles


def _strongly_connected(graph: dict[str, list[ImportEdge]]) -> list[set[str]]:
    """Tarjan's algorithm (recursive: a package's import graph is shallow)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for edge in graph.get(node, []):
            if edge.target not in index:
                visit(edge.target)
                low[node] = min(low[node], low[edge.target])
            elif edge.target in on_stack:
                low[node] = min(low[node], index[edge.target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def _describe_cycle(graph: dict[str, list[ImportEdge]], component: set[str]) -> str:
    """The shortest cycle through the component's first module (by name), with the import lines."""
    start = min(component)
    previous: dict[str, tuple[str, ImportEdge]] = {}
    frontier = [start]
    while frontier and start not in previous:
        following = []
        for node in frontier:
            for edge in graph[node]:
                if edge.target in component and edge.target not in previous:
                    previous[edge.target] = (node, edge)
                    following.append(edge.target)
        frontier = following
    steps = []
    node = start
    while True:
        node, edge = previous[node][0], previous[node][1]
        steps.append(f"-> {edge.target} ({edge.where})")
        if node == start:
            break
    return " ".join([start, *reversed(steps)])


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


# ----------------------------------------------------------------------------------------------
# the tests


def test_dtrl_has_no_import_cycles():
    root = Path(dtrl.__file__).parent
    graph = import_graph(root, "dtrl")
    assert len(graph) > 20 and "dtrl.models.checkpoint" in graph  # the walk found the package
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in src/dtrl (function-level imports included):\n  " + "\n  ".join(cycles)


def test_checker_finds_a_function_level_cycle(tmp_path):
    root = _write(tmp_path / "pkg", {
        "__init__.py": "",
        "fmt.py": "import json\n\n\ndef load(path):\n    if path.startswith('hf:'):\n"
                  "        from pkg.conv import load_hf\n\n        return load_hf(path)\n",
        "conv.py": "from pkg import fmt\n",
        "leaf.py": "from pkg.fmt import load\n",
    })
    graph = import_graph(root, "pkg")
    assert [e.target for e in graph["pkg.fmt"]] == ["pkg.conv"]
    assert [e.target for e in graph["pkg.conv"]] == ["pkg.fmt"]  # `from pkg import fmt`: the submodule
    cycles = find_cycles(graph)
    assert cycles == ["pkg.conv -> pkg.fmt (pkg/conv.py:1) -> pkg.conv (pkg/fmt.py:6)"]


def test_checker_resolves_relative_nested_and_package_imports(tmp_path):
    root = _write(tmp_path / "pkg", {
        "__init__.py": "from .sub import helper\n",
        "sub/__init__.py": "from .impl import helper\n",
        "sub/impl.py": "def helper():\n    return 1\n",
        "user.py": "class A:\n    def run(self):\n        try:\n            import pkg.sub.impl as impl\n"
                   "        except ImportError:\n            pass\n        from .sub import helper\n"
                   "        from . import sub\n        from ..outside import x\n",
    })
    graph = import_graph(root, "pkg")
    assert [e.target for e in graph["pkg"]] == ["pkg.sub"]
    assert [e.target for e in graph["pkg.sub"]] == ["pkg.sub.impl"]
    assert [e.target for e in graph["pkg.user"]] == ["pkg.sub.impl", "pkg.sub", "pkg.sub"]
    assert find_cycles(graph) == []
    # a package __init__ importing a module that imports the package's own names back is a cycle
    _write(root, {"sub/impl.py": "def helper():\n    from pkg.sub import other\n", "sub/other.py": ""})
    graph = import_graph(root, "pkg")
    assert [e.target for e in graph["pkg.sub.impl"]] == ["pkg.sub.other"]  # other is a submodule
    _write(root, {"sub/impl.py": "def helper():\n    from pkg.sub import not_a_module\n"})
    assert find_cycles(import_graph(root, "pkg")) == [
        "pkg.sub -> pkg.sub.impl (pkg/sub/__init__.py:1) -> pkg.sub (pkg/sub/impl.py:2)"]
