"""No import circle inside the package.

Every ``import`` and ``from ... import`` statement of every module under ``mechwidgets/`` is read
with :mod:`ast`, wherever it stands: at the top, inside a function (a lazy import still ties
the two modules together), inside ``try``. Only imports under ``if TYPE_CHECKING:`` are left
out: they never run. An edge goes to the module named (``from .x import y`` → ``x``; ``from . import
widgets`` → the ``widgets`` package when it is a module, else the package that holds the name);
the parent packages Python initialises on the way are not edges of their own (every submodule
would otherwise be in a circle with its package's ``__init__``).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "mechwidgets"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def module_names() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    out: dict[str, Path] = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in ``tree`` but those under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module → the modules of the package it imports."""
    modules = module_names()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        here = name if is_package else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base_parts = here.split(".")
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules:  # `import a.b.c` where c is a name
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of ``graph`` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_sees_lazy_imports() -> None:
    """The reader finds imports inside functions (the kind of edge a circle hides in)."""
    graph = import_graph()
    assert "mechwidgets.widgets._base" in graph["mechwidgets.widgets.attention"]
    assert "mechwidgets._export" in graph["mechwidgets.__main__"]  # imported inside main()
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " → ".join(cycle or [])


def test_analysis_all_lists_every_headless_entry_point():
    """Every public function or class of an analysis module that takes a model first (what a
    user calls headless) is exported by ``mechwidgets.analysis`` itself, and each name there is
    one object (one public name per concept)."""
    import importlib
    import inspect
    import pkgutil

    import mechwidgets.analysis as analysis

    missing = []
    for info in pkgutil.walk_packages(analysis.__path__, "mechwidgets.analysis."):
        module = importlib.import_module(info.name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            target = obj.__init__ if inspect.isclass(obj) else obj
            if not callable(target) or name.startswith("_"):
                continue
            try:
                params = list(inspect.signature(target).parameters)
            except (TypeError, ValueError):
                continue
            params = [p for p in params if p != "self"]
            if params[:1] == ["model"] and name not in analysis.__all__:
                missing.append(f"{info.name}.{name}")
    assert not missing, missing
    assert len(set(analysis.__all__)) == len(analysis.__all__)
