"""The import rules a contributor relies on (docs/architecture.md), checked on the source:

- no import cycle anywhere in proxy/, counting imports inside functions (only `if TYPE_CHECKING:`
  blocks are left out: they never run);
- the two protocol packages never import each other, and core/ and pool/ import neither (not
  even for type checking);
- nothing imports daemon.py except cli.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROXY = Path(__file__).resolve().parents[2] / "proxy"


def _module(path: Path) -> str:
    parts = list(path.relative_to(PROXY.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module(p): p for p in PROXY.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str) -> tuple[set[str], set[str]]:
    """(runtime imports, TYPE_CHECKING-only imports) of module `name`, as module names in
    proxy/ (`from pkg import sub` counts as importing pkg.sub when that is a module)."""
    path = MODULES[name]
    is_pkg = path.name == "__init__.py"
    runtime: set[str] = set()
    typing_only: set[str] = set()

    def visit(node: ast.AST, into: set[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.body:
                    visit_stmt(stmt, typing_only)
                for stmt in child.orelse:
                    visit_stmt(stmt, into)
                continue
            visit_stmt(child, into)

    def visit_stmt(node: ast.AST, into: set[str]) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "proxy":
                    into.add(_existing(alias.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                if node.level > 1:
                    base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "proxy":
                return
            into.add(_existing(target))
            for alias in node.names:
                if f"{target}.{alias.name}" in MODULES:
                    into.add(f"{target}.{alias.name}")
        visit(node, into)

    visit(ast.parse(path.read_text()), runtime)
    runtime.discard(name)
    typing_only -= runtime
    return runtime, typing_only


def _existing(target: str) -> str:
    while target not in MODULES and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


GRAPH = {name: _imports(name) for name in MODULES}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
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

    for v in edges:
        if v not in index:
            strong(v)
    return found


def test_the_walk_sees_the_imports() -> None:
    assert len(MODULES) > 30
    runtime, _ = GRAPH["proxy.postgres.client"]
    assert "proxy.postgres.codec" in runtime
    assert "proxy.postgres.login" in runtime
    _, typing_only = GRAPH["proxy.core.server"]
    assert "proxy.core.session" in typing_only


def test_no_import_cycle() -> None:
    cycles = _cycles({name: runtime for name, (runtime, _) in GRAPH.items()})
    assert not cycles, f"import cycles in proxy/: {cycles}"


def test_cycle_detection_works() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize(("package", "forbidden"), [
    ("proxy.postgres", ("proxy.mysql",)),
    ("proxy.mysql", ("proxy.postgres",)),
    ("proxy.core", ("proxy.postgres", "proxy.mysql")),
    ("proxy.pool", ("proxy.postgres", "proxy.mysql")),
])
def test_packages_stay_independent(package: str, forbidden: tuple[str, ...]) -> None:
    bad = []
    for name, (runtime, typing_only) in GRAPH.items():
        if name == package or name.startswith(package + "."):
            for target in runtime | typing_only:
                if target.startswith(forbidden):
                    bad.append(f"{name} -> {target}")
    assert not bad, bad


def test_only_the_cli_imports_the_daemon() -> None:
    importers = sorted(name for name, (runtime, typing_only) in GRAPH.items()
                       if "proxy.daemon" in runtime | typing_only)
    assert importers == ["proxy.cli"]
