"""No import runs back up a layer.

The layers, from DESIGN.md's packages and docs/architecture.md's map, lowest first; a module
may import its own layer and the layers below it, never one above:

1. `edgeproxy/` — the daemon, the ground floor: it imports none of the packages above it.
   Inside it:
   - `errors`, `config`: the floor (config imports errors, nothing else of edgeproxy);
   - `switching/`: the switch state (pure) and the board; it never imports the data plane
     (`proxy/`) or the control plane (`control/`), which both sit on it;
   - `proxy/`, `routing/`, `policies/`, `tls/`, `health/`, `observability/`, `control/`,
     then the wiring (`server`, `app`, `cli`).
2. `switchctl/`, `certs/` — the operator's tools (the CLI, the deploy, the demo; certificate
   tooling). They use edgeproxy's config and errors and each other (`certs`' deploy hook
   calls the control client, `switchctl setup` makes certificates), never bench or tests.
3. `bench/`, `tests/` — may import everything (bench uses tests' docker fixtures); no rule.

Imports are read from the sources (ast), wherever they stand: at the top, inside a
function, or under `if TYPE_CHECKING:` (an import cycle for the type checker is a cycle too).
An import by a string (`importlib.import_module`) is not seen.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ("edgeproxy", "switchctl", "certs", "bench")


@dataclass(frozen=True)
class Rule:
    importer: str
    """A package or module (dotted) whose modules the rule binds."""
    forbidden: tuple[str, ...]
    """Packages or modules it must not import."""
    allowed: tuple[str, ...] = ()
    """Exceptions inside `forbidden` (the layer's own floor)."""
    why: str = ""


RULES = (
    Rule(
        "edgeproxy",
        ("switchctl", "certs", "bench", "tests"),
        why="the daemon is the ground floor: the tools, the benches and the tests sit on it",
    ),
    Rule("switchctl", ("bench", "tests"), why="the operator's tools ship without them"),
    Rule("certs", ("bench", "tests"), why="the operator's tools ship without them"),
    Rule(
        "edgeproxy.switching",
        ("edgeproxy.control", "edgeproxy.proxy"),
        why="the data plane and the control plane both sit on the switch",
    ),
    Rule(
        "edgeproxy.config",
        ("edgeproxy",),
        allowed=("edgeproxy.config", "edgeproxy.errors"),
        why="config is the floor: everything reads it",
    ),
    Rule(
        "edgeproxy.errors",
        ("edgeproxy",),
        allowed=("edgeproxy.errors",),
        why="errors are the floor: everything raises them",
    ),
)

KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()
"""Imports allowed against the layers (none: issue 15 moved the state store into
switching/; the test below fails when an entry is no longer needed)."""


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(root: Path, path: Path) -> Iterator[tuple[int, str]]:
    """(line, name) for every import in `path`, relative ones made absolute; `from A import b`
    yields `A.b` (b may be a module; either way it is inside A)."""
    module = module_name(root, path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                parts = package.split(".")
                target = ".".join([*parts[: len(parts) - node.level + 1], target]).rstrip(".")
            for alias in node.names:
                yield node.lineno, f"{target}.{alias.name}"


@dataclass(frozen=True)
class Violation:
    where: str
    """path:line"""
    importer: str
    imported: str
    rule: Rule

    def __str__(self) -> str:
        return f"{self.where}: {self.importer} imports {self.imported} ({self.rule.why})"


def violations(root: Path) -> Iterator[Violation]:
    """Each import statement that breaks a rule, once per rule."""
    for top in CHECKED:
        for path in sorted((root / top).rglob("*.py")):
            importer = module_name(root, path)
            rules = [r for r in RULES if within(importer, r.importer)]
            reported: set[tuple[int, Rule]] = set()
            for line, imported in imports_of(root, path):
                for rule in rules:
                    if (line, rule) in reported:
                        continue
                    if not any(within(imported, f) for f in rule.forbidden):
                        continue
                    if any(within(imported, a) for a in rule.allowed):
                        continue
                    reported.add((line, rule))
                    where = f"{path.relative_to(root)}:{line}"
                    yield Violation(where, importer, imported, rule)


def known(v: Violation, importer: str, imported: str) -> bool:
    return v.importer == importer and within(v.imported, imported)


def test_no_import_runs_back_up_a_layer() -> None:
    found = [
        str(v) for v in violations(ROOT) if not any(known(v, i, m) for i, m in KNOWN_EXCEPTIONS)
    ]
    assert found == []


def test_every_known_exception_to_the_layers_is_still_needed() -> None:
    found = list(violations(ROOT))
    stale = {(i, m) for i, m in KNOWN_EXCEPTIONS if not any(known(v, i, m) for v in found)}
    assert stale == set(), "no longer imported: remove them from KNOWN_EXCEPTIONS"


def test_the_layer_check_sees_imports_at_the_top_in_functions_relative_and_for_the_type_checker(
    tmp_path: Path,
) -> None:
    files = {
        "edgeproxy/__init__.py": "",
        "edgeproxy/config.py": "from edgeproxy.errors import ConfigError\nfrom . import proxy\n",
        "edgeproxy/switching/__init__.py": "",
        "edgeproxy/switching/board.py": (
            "from __future__ import annotations\n"
            "from typing import TYPE_CHECKING\n"
            "from edgeproxy.switching import state\n"
            "if TYPE_CHECKING:\n"
            "    from edgeproxy.proxy.context import ProxyContext\n"
            "def save() -> None:\n"
            "    from ..control import store\n"
        ),
        "edgeproxy/demo.py": "import switchctl.client\nfrom certs.selfsigned import make_ca\n",
        "switchctl/__init__.py": "from edgeproxy.config import Config\nimport tests.conftest\n",
        "certs/__init__.py": "from switchctl.client import ControlClient\n",
        "bench/__init__.py": "import tests.docker_fixtures\nimport switchctl\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = sorted((v.where, v.imported) for v in violations(tmp_path))
    assert found == [
        ("edgeproxy/config.py:2", "edgeproxy.proxy"),
        ("edgeproxy/demo.py:1", "switchctl.client"),
        ("edgeproxy/demo.py:2", "certs.selfsigned.make_ca"),
        ("edgeproxy/switching/board.py:5", "edgeproxy.proxy.context.ProxyContext"),
        ("edgeproxy/switching/board.py:7", "edgeproxy.control.store"),
        ("switchctl/__init__.py:2", "tests.conftest"),
    ]
