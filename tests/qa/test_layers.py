"""The package's layers and the absence of import cycles, read from the import statements.

Layers (CONVENTIONS.md "Architecture"): core imports nothing above it;
submit imports only core; daemon imports only core; admin may import
anything.  The top-level package (pysendmail/__init__.py) imports nothing.

What counts:
- Layers: every ``import``/``from ... import`` naming a pysendmail module,
  at module level, inside functions and under ``if TYPE_CHECKING:`` alike:
  a lazy import is still a dependency (it only moves the cost), and a type
  named from a higher layer still ties the lower one to it.  One exception
  is written out below (ALLOWED), with its reason.
- Cycles: module-level imports and imports inside functions (a lazy
  import only hides a cycle from the interpreter: the two modules still
  need each other, which is what the admin/cli <-> sibling commands
  cycle was); imports under ``if TYPE_CHECKING:`` are left out (never
  executed), and so are the ALLOWED edges (each would otherwise be
  reported twice).

Each failure names the offending import as file:line and the statement.
"""

from __future__ import annotations

import ast
import pathlib
from dataclasses import dataclass

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "pysendmail"

# Which layers each layer may import (its own always).
MAY_IMPORT = {
    "core": {"core"},
    "submit": {"core", "submit"},
    "daemon": {"core", "daemon"},
    "admin": {"core", "submit", "daemon", "admin"},
    "": set(),  # pysendmail/__init__.py
}

# (importing module, imported module): why it is allowed.
ALLOWED = {
    ("pysendmail.submit.main", "pysendmail.admin.cli"):
        "sendmail's entry point hands its non-submission modes (-bp, -bi, -bv, -q, -bd, and argv[0] "
        "mailq/newaliases) to the pysendmail command, as Postfix's sendmail hands -bp to postqueue; "
        "lazily, inside dispatch(), so submission never loads admin",
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the pysendmail module imported (a submodule when one is named)
    path: pathlib.Path
    line: int
    text: str
    top_level: bool  # executed at import time (module level, not under TYPE_CHECKING)
    type_only: bool  # under TYPE_CHECKING: never executed

    def where(self) -> str:
        return f"{self.path.relative_to(PACKAGE.parent)}:{self.line}: {self.text}"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, path: pathlib.Path, known: set[str]) -> list[Import]:
    source = path.read_text()
    tree = ast.parse(source, str(path))
    lines = source.splitlines()
    is_package = path.name == "__init__.py"
    out: list[Import] = []

    def add(target: str, node: ast.stmt, top_level: bool, type_only: bool) -> None:
        if target == "pysendmail" or target.startswith("pysendmail."):
            text = lines[node.lineno - 1].strip()
            out.append(Import(module, target, path, node.lineno, text, top_level, type_only))

    def visit(node: ast.AST, top_level: bool, type_only: bool = False) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, child, top_level, type_only)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[:len(base) - (child.level - 1)]
                    source_module = ".".join(base + ([child.module] if child.module else []))
                else:
                    source_module = child.module or ""
                for alias in child.names:
                    # "from pysendmail.core import config" imports the submodule.
                    candidate = f"{source_module}.{alias.name}"
                    add(candidate if candidate in known else source_module, child, top_level, type_only)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False, type_only)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), False, True)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), top_level, type_only)
            else:
                visit(child, top_level, type_only)

    visit(tree, True)
    return out


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _all_imports() -> list[Import]:
    modules = _modules()
    known = set(modules)
    return [imp for name, path in modules.items() for imp in _imports(name, path, known)]


def layer_violations(imports: list[Import]) -> list[str]:
    out = []
    for imp in imports:
        if imp.target == "pysendmail" and imp.module != "pysendmail":
            continue  # __version__: the top-level package is below every layer
        if _layer(imp.target) in MAY_IMPORT[_layer(imp.module)] | {_layer(imp.module)}:
            continue
        if (imp.module, imp.target) in ALLOWED:
            continue
        out.append(f"{imp.where()}  ({_layer(imp.module) or 'pysendmail'} may not import "
                   f"{_layer(imp.target) or 'pysendmail'})")
    return out


def import_cycles(imports: list[Import]) -> list[list[Import]]:
    """Every strongly connected component of the import graph (no TYPE_CHECKING, no ALLOWED edge), as one cycle."""
    edges: dict[str, dict[str, Import]] = {}
    for imp in imports:
        if not imp.type_only and imp.target != imp.module and (imp.module, imp.target) not in ALLOWED:
            edges.setdefault(imp.module, {}).setdefault(imp.target, imp)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan; the package is small enough for recursion
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
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
                components.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    cycles = []
    for component in components:
        # One cycle through the component, by breadth-first search back to its first module.
        members = set(component)
        start = component[0]
        paths: dict[str, list[Import]] = {start: []}
        queue = [start]
        cycle: list[Import] = []
        while queue and not cycle:
            v = queue.pop(0)
            for w, imp in sorted(edges.get(v, {}).items()):
                if w not in members:
                    continue
                if w == start:
                    cycle = paths[v] + [imp]
                    break
                if w not in paths:
                    paths[w] = paths[v] + [imp]
                    queue.append(w)
        cycles.append(cycle)
    return cycles


def test_every_import_respects_the_layers() -> None:
    violations = layer_violations(_all_imports())
    assert not violations, "imports that climb the layers:\n" + "\n".join(violations)


def test_no_import_cycle_even_through_imports_inside_functions() -> None:
    cycles = import_cycles(_all_imports())
    shown = ["\n".join("  " + imp.where() for imp in cycle) for cycle in cycles]
    assert not cycles, "import cycles (each line imports the module of the next):\n" + "\n\n".join(shown)


def test_every_allowed_exception_is_still_used() -> None:
    # An exception nobody needs any more must go, or it would let a new violation in.
    used = {(imp.module, imp.target) for imp in _all_imports()}
    assert set(ALLOWED) <= used, f"unused exceptions in ALLOWED: {set(ALLOWED) - used}"


# The checker itself, on small trees: a rule that cannot fail checks nothing.
@pytest.fixture
def tree(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    root = tmp_path / "pysendmail"
    for package in ("", "core", "submit", "daemon", "admin"):
        (root / package).mkdir(parents=True, exist_ok=True)
        (root / package / "__init__.py").write_text("")
    monkeypatch.setitem(globals(), "PACKAGE", root)
    return root


def test_checker_names_a_core_module_that_imports_daemon(tree: pathlib.Path) -> None:
    (tree / "daemon" / "qmgr.py").write_text("")
    (tree / "core" / "queue.py").write_text("import os\n\ndef f():\n    from pysendmail.daemon import qmgr\n")
    violations = layer_violations(_all_imports())
    assert violations == ["pysendmail/core/queue.py:4: from pysendmail.daemon import qmgr  (core may not import daemon)"]


def test_checker_counts_type_checking_imports_as_layer_dependencies(tree: pathlib.Path) -> None:
    (tree / "submit" / "main.py").write_text("")
    (tree / "daemon" / "run.py").write_text(
        "TYPE_CHECKING = False\nif TYPE_CHECKING:\n    from pysendmail.submit.main import x\n")
    assert layer_violations(_all_imports()) == [
        "pysendmail/daemon/run.py:3: from pysendmail.submit.main import x  (daemon may not import submit)"]


def test_checker_finds_a_cycle_and_names_each_import(tree: pathlib.Path) -> None:
    (tree / "daemon" / "a.py").write_text("from pysendmail.daemon.b import B\n")
    (tree / "daemon" / "b.py").write_text("import os\nfrom pysendmail.daemon import a\n")
    (tree / "daemon" / "c.py").write_text("from pysendmail.daemon import a\n")  # into the cycle, not part of it
    cycles = import_cycles(_all_imports())
    assert [[imp.where() for imp in cycle] for cycle in cycles] == [[
        "pysendmail/daemon/a.py:1: from pysendmail.daemon.b import B",
        "pysendmail/daemon/b.py:2: from pysendmail.daemon import a",
    ]]


def test_checker_finds_a_cycle_closed_by_an_import_inside_a_function(tree: pathlib.Path) -> None:
    (tree / "admin" / "cli.py").write_text("from pysendmail.admin import routecmd\n")
    (tree / "admin" / "routecmd.py").write_text("def _spool():\n    from pysendmail.admin.cli import drop\n")
    cycles = import_cycles(_all_imports())
    assert [[imp.where() for imp in cycle] for cycle in cycles] == [[
        "pysendmail/admin/cli.py:1: from pysendmail.admin import routecmd",
        "pysendmail/admin/routecmd.py:2: from pysendmail.admin.cli import drop",
    ]]


def test_checker_ignores_a_cycle_closed_only_under_type_checking(tree: pathlib.Path) -> None:
    (tree / "daemon" / "a.py").write_text("from pysendmail.daemon.b import B\n")
    (tree / "daemon" / "b.py").write_text(
        "TYPE_CHECKING = False\nif TYPE_CHECKING:\n    from pysendmail.daemon.a import A\n"
        "def f() -> None:\n    if TYPE_CHECKING:\n        from pysendmail.daemon import a\n")
    assert import_cycles(_all_imports()) == []
