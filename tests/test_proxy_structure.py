"""The data plane's shape, checked on its sources (issue 15).

- Only `proxy/exchange.py` assigns an `Exchange`'s fields: the client side, the
  upstream side, the tracker and the observers read them or call its methods.
- `proxy/` has no import circle, neither at run time nor for the type checker
  (imports under `if TYPE_CHECKING:` count).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "edgeproxy"
PROXY = SOURCES / "proxy"

EXCHANGE_NAMES = frozenset({"ex", "exchange", "cur", "nxt", "late"})
"""What the code calls an exchange when no annotation says so."""

PENDING: frozenset[tuple[str, str]] = frozenset()
"""Assignments known to be on their way out (none left: the switch decision,
`switching/decide.py`, returns the cookie to set and the exchange assigns it)."""


def exchange_fields(exchange_py: Path) -> set[str]:
    """The names in `Exchange.__slots__` (read from the source: a compiled class has none)."""
    for node in ast.walk(ast.parse(exchange_py.read_text())):
        if isinstance(node, ast.ClassDef) and node.name == "Exchange":
            for stmt in node.body:
                if (
                    isinstance(stmt, ast.Assign)
                    and isinstance(stmt.targets[0], ast.Name)
                    and stmt.targets[0].id == "__slots__"
                ):
                    return set(ast.literal_eval(stmt.value))
    raise AssertionError(f"no Exchange.__slots__ in {exchange_py}")


def _exchange_names(tree: ast.AST) -> set[str]:
    """Names annotated as an Exchange in this file, plus the usual names for one."""
    names = set(EXCHANGE_NAMES)
    for node in ast.walk(tree):
        annotation: ast.expr | None = None
        name = ""
        if isinstance(node, ast.arg):
            annotation, name = node.annotation, node.arg
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            annotation, name = node.annotation, node.target.id
        if annotation is not None and "Exchange" in ast.unparse(annotation).split("[")[0]:
            names.add(name)
    return names


def _is_exchange(value: ast.expr, names: set[str]) -> bool:
    """`ex`, `self.exchange`, `conn.cur`, `self.queue[0]`-like expressions naming an exchange."""
    if isinstance(value, ast.Name):
        return value.id in names
    if isinstance(value, ast.Attribute):
        return value.attr in EXCHANGE_NAMES
    if isinstance(value, ast.Subscript):
        return isinstance(value.value, ast.Attribute) and value.value.attr == "queue"
    return False


def exchange_assignments(root: Path, fields: set[str]) -> set[tuple[str, str]]:
    """(file, field) for each assignment to an Exchange field outside proxy/exchange.py."""
    found: set[tuple[str, str]] = set()
    for path in sorted(root.rglob("*.py")):
        if path.name == "exchange.py" and path.parent.name == "proxy":
            continue
        tree = ast.parse(path.read_text(), str(path))
        names = _exchange_names(tree)
        for node in ast.walk(tree):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            for target in targets:
                for t in target.elts if isinstance(target, ast.Tuple) else [target]:
                    if (
                        isinstance(t, ast.Attribute)
                        and t.attr in fields
                        and _is_exchange(t.value, names)
                    ):
                        found.add((path.relative_to(root.parent).as_posix(), t.attr))
    return found


def proxy_imports(proxy: Path) -> dict[str, set[str]]:
    """Module name → the proxy modules it imports (run time and type checking alike)."""
    graph: dict[str, set[str]] = {}
    for path in proxy.glob("*.py"):
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module is not None:
                if node.module == "edgeproxy.proxy":
                    deps.update(alias.name for alias in node.names)
                elif node.module.startswith("edgeproxy.proxy."):
                    deps.add(node.module.removeprefix("edgeproxy.proxy."))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("edgeproxy.proxy."):
                        deps.add(alias.name.removeprefix("edgeproxy.proxy."))
        graph[path.stem] = deps - {path.stem}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path that returns to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle is not None:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle is not None:
                return cycle
    return None


def test_no_file_outside_proxy_exchange_py_assigns_an_exchange_field() -> None:
    fields = exchange_fields(PROXY / "exchange.py")
    assert {"status", "resp_phase", "req_phase", "keep_alive"} <= fields
    found = exchange_assignments(SOURCES, fields)
    assert found - PENDING == set(), "assign these in proxy/exchange.py, through a method"
    assert PENDING - found == set(), "no longer assigned there: remove it from PENDING"


def test_the_scan_sees_an_assignment_to_an_exchange_field(tmp_path: Path) -> None:
    pkg = tmp_path / "edgeproxy"
    pkg.mkdir()
    (pkg / "observer.py").write_text(
        "def observe(ex):\n    ex.status = 500\n"
        "def other(e: 'Exchange') -> None:\n    e.keep_alive, x = False, 1\n"
        "def queue(client):\n    client.queue[0].error = 'x'\n"
        "def fine(err):\n    err.headers = []\n"
    )
    fields = exchange_fields(PROXY / "exchange.py")
    assert exchange_assignments(pkg, fields) == {
        ("edgeproxy/observer.py", "status"),
        ("edgeproxy/observer.py", "keep_alive"),
        ("edgeproxy/observer.py", "error"),
    }


def test_proxy_has_no_import_circle_at_run_time_or_for_the_type_checker() -> None:
    graph = proxy_imports(PROXY)
    assert {"client", "context", "exchange", "headers", "upstream"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_circle_check_finds_a_circle_through_a_type_checking_import(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("from edgeproxy.proxy import b\n")
    (tmp_path / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from edgeproxy.proxy.c import C\n"
    )
    (tmp_path / "c.py").write_text("from edgeproxy.proxy.a import A\n")
    assert find_cycle(proxy_imports(tmp_path)) == ["a", "b", "c", "a"]
