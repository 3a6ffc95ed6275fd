"""The package's import graph: no circles, no import from a lower layer to a higher one.

Every ``import`` statement under ``src/biodatacentric`` is read with :mod:`ast` -- at module
level and inside functions alike (an import inside a function is still a dependency), except
those under ``if TYPE_CHECKING:``. Layers, lowest first::

    foundation (_version, _io, _params, _validation, _utils, metrics, utils)
    -> nn -> data -> engine (base, _train, parallel, ngff)
    -> stages (pretrain, assess, segment, hunt, monitor)
    -> application (demo, cli, integrations, the package root)

A module may import its own layer or lower ones; the stages may use each other (a hunter
uses a segmenter) but not in a circle. No library module imports test code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "biodatacentric"
PKG = "biodatacentric"

LAYERS = {
    "foundation": 0, "nn": 1, "data": 2, "engine": 3, "stages": 4, "application": 5,
}
_FIRST_PART = {
    "_version": "foundation", "_io": "foundation", "_params": "foundation", "_validation": "foundation",
    "_utils": "foundation", "metrics": "foundation", "utils": "foundation",
    "nn": "nn", "data": "data",
    "base": "engine", "_train": "engine", "parallel": "engine", "ngff": "engine",
    "pretrain": "stages", "assess": "stages", "segment": "stages", "hunt": "stages", "monitor": "stages",
    "demo": "application", "cli": "application", "rank": "application", "plan": "application",
    "_runs": "application", "__main__": "application", "integrations": "application",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([PKG, *parts])


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "application"          # the package root re-exports everything
    return _FIRST_PART[parts[1]]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


# The one exception: an estimator may offer a thin convenience method that imports an
# integration (``biodatacentric.integrations``, wrappers of optional third-party packages such
# as napari or bioimage.io) inside the method. Such a lazy import is not an edge of the graph.
OPTIONAL_LAYER = f"{PKG}.integrations"


def _imports(path: Path, lazy_optional: bool = False) -> list[tuple[str, int]]:
    """(absolute module imported, line) for every import of one file (without function-level
    imports of :data:`OPTIONAL_LAYER` unless ``lazy_optional``)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: list[tuple[str, int]] = []

    def visit(node: ast.AST, in_function: bool = False) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub, in_function)
                continue
            start = len(out)
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[:len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                out.append((target, child.lineno))
                # "from . import x" / "from .pkg import mod" may name submodules
                for a in child.names:
                    candidate = f"{target}.{a.name}"
                    if _exists(candidate):
                        out.append((candidate, child.lineno))
            if inner and not lazy_optional:
                out[start:] = [(t, n) for t, n in out[start:] if not t.startswith(OPTIONAL_LAYER)]
            visit(child, inner)

    visit(tree)
    return out


def _exists(module: str) -> bool:
    if not module.startswith(PKG):
        return False
    rel = Path(*module.split(".")[1:]) if "." in module else Path()
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


def _graph() -> tuple[dict[str, set[str]], dict[tuple[str, str], str]]:
    graph: dict[str, set[str]] = {}
    where: dict[tuple[str, str], str] = {}
    for path in sorted(SRC.rglob("*.py")):
        src = _module_name(path)
        graph.setdefault(src, set())
        for target, line in _imports(path):
            if target in (PKG, src) or not target.startswith(PKG + ".") or not _exists(target):
                continue
            graph[src].add(target)
            where.setdefault((src, target), f"{path.relative_to(SRC.parent)}:{line}")
    return graph, where


def test_every_module_has_a_layer():
    graph, _ = _graph()
    assert len(graph) > 40
    unknown = sorted(m for m in graph if "." in m and m.split(".")[1] not in _FIRST_PART)
    assert not unknown, f"give these modules a layer in tests/test_layers.py: {unknown}"


def test_no_import_from_a_lower_layer_to_a_higher_one():
    graph, where = _graph()
    bad = []
    for src, targets in graph.items():
        for target in targets:
            if target.startswith(src + ".") and src.count(".") == 0:
                continue
            if LAYERS[_layer(src)] < LAYERS[_layer(target)]:
                bad.append(f"{where[(src, target)]}: {src} ({_layer(src)}) imports {target} ({_layer(target)})")
    assert not bad, "\n".join(sorted(bad))


def _strip_packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Edges between modules; a package ``__init__`` that re-exports its submodules is not a
    circle with them, so an edge from a submodule to its own package is dropped."""
    out = {}
    for src, targets in graph.items():
        out[src] = {t for t in targets if not src.startswith(t + ".")}
    return out


def test_no_import_circles():
    graph, where = _graph()
    graph = _strip_packages(graph)
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            dfs(node)
    shown = [" -> ".join(c) + "  (" + ", ".join(where[(a, b)] for a, b in zip(c, c[1:])) + ")" for c in cycles]
    assert not cycles, "import circles:\n" + "\n".join(shown)


@pytest.mark.parametrize("forbidden", ["tests", "conftest", "estimator_cases", f"{PKG}._testing", "pytest"])
def test_library_never_imports_test_code(forbidden):
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        for target, line in _imports(path):
            if target == forbidden or target.startswith(forbidden + "."):
                bad.append(f"{path.relative_to(SRC.parent)}:{line} imports {target}")
    assert not bad, "\n".join(bad)
    assert not (SRC / "_testing.py").exists()


def test_the_graph_reader_sees_function_level_and_relative_imports(tmp_path):
    """The checks above cannot pass vacuously: the reader finds a known edge of each kind."""
    graph, _ = _graph()
    assert f"{PKG}.data.readers" in graph[f"{PKG}.data.patches"]          # module level, relative
    assert f"{PKG}.nn" in graph[f"{PKG}.base"]                            # inside a function
    assert f"{PKG}._version" in graph[f"{PKG}.base"]


# imports that may sit inside a function: optional dependencies (and matplotlib, only needed
# to draw); everything else is imported at the top of the module, so the graph above is the
# real one
_REQUIRED = {"torch", "numpy", "scipy", "sklearn", "skimage", "tifffile", "einops", "tqdm"}


def test_function_level_imports_only_for_optional_dependencies():
    import sys

    bad = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and node.level:
                    if (node.module or "").split(".")[0] == OPTIONAL_LAYER.split(".")[1]:
                        continue          # a lazy import of an integration (see OPTIONAL_LAYER)
                    bad.append(f"{path.relative_to(SRC.parent)}:{node.lineno} (package-internal)")
                elif isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                    for name in names:
                        top = name.split(".")[0]
                        if top in _REQUIRED or top in sys.stdlib_module_names or top == PKG:
                            bad.append(f"{path.relative_to(SRC.parent)}:{node.lineno} ({name})")
    assert not bad, "move these imports to the top of their module:\n" + "\n".join(sorted(set(bad)))
