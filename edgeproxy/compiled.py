"""The hot path, compiled with mypyc: which modules, and whether this install runs them.

The modules in `HOT_PATH` are plain, strictly typed Python. `make` compiles
them with mypyc (`python setup.py build_ext --inplace`) into C extensions next
to their sources, which Python then imports instead of the `.py` files: the
same code with native classes and calls, about half the CPU instructions per
proxied request (`python -m bench.hotpath --instructions`). Without a build
(no C compiler, or `make pure`) the same modules run as Python.

A build records a hash of each source (`MANIFEST`); a compiled module whose
source changed since is stale — it would run the old code — so `edgeproxy
serve` refuses to start on one, and `make` rebuilds. `python -m
edgeproxy.compiled` prints the state (`--json` for scripts).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent

HOT_PATH = (
    "edgeproxy.proxy.client",
    "edgeproxy.proxy.context",
    "edgeproxy.proxy.exchange",
    "edgeproxy.proxy.framing",
    "edgeproxy.proxy.alpn",
    "edgeproxy.proxy.h2conn",
    "edgeproxy.proxy.h2guard",
    "edgeproxy.proxy.h2hpack",
    "edgeproxy.proxy.h2stream",
    "edgeproxy.proxy.h2wire",
    "edgeproxy.proxy.headers",
    "edgeproxy.proxy.responses",
    "edgeproxy.proxy.tunnel",
    "edgeproxy.proxy.upstream",
    "edgeproxy.routing.router",
    "edgeproxy.switching.choose",
    "edgeproxy.switching.decide",
    "edgeproxy.networks",
    "edgeproxy.observability.stats",
    "edgeproxy.observability.metrics",
    "edgeproxy.health.state",
    "edgeproxy.health.monitor",
    "edgeproxy.policies.compiled",
    "edgeproxy.policies.cors",
    "edgeproxy.policies.gzip",
    "edgeproxy.policies.ratelimit",
)
"""Modules compiled together (one mypyc group: calls between them are native)."""

GROUP = "edgeproxy.hotpath"
"""The group's shared library: edgeproxy/hotpath__mypyc.*.so."""

MANIFEST = PACKAGE_DIR / "hotpath-build.json"
"""Written by a build: {module: sha256 of the source it was compiled from}."""


def source_path(module: str, package_dir: Path = PACKAGE_DIR) -> Path:
    """The .py file of a hot path module, under `package_dir` (the edgeproxy package)."""
    parts = module.split(".")
    assert parts[0] == "edgeproxy", module
    return package_dir.joinpath(*parts[1:]).with_suffix(".py")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(package_dir: Path) -> Path:
    """Record the sources a build compiled (called by setup.py's build_ext)."""
    manifest = package_dir / MANIFEST.name
    hashes = {m: digest(source_path(m, package_dir)) for m in HOT_PATH}
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")
    tmp.replace(manifest)
    return manifest


@dataclass(frozen=True)
class HotPathState:
    compiled: list[str]
    """Modules that import as C extensions."""
    python: list[str]
    """Modules that import from their .py source."""
    stale: list[str]
    """Compiled modules whose source changed after the build (or with no record of it)."""

    @property
    def summary(self) -> str:
        if self.stale:
            return (
                f"compiled hot path is stale: {', '.join(self.stale)} changed after the build; "
                "run `make compile` (or `make pure` to run the sources)"
            )
        if not self.compiled:
            return "hot path runs as Python (not compiled: `make compile` builds it)"
        if self.python:
            return f"hot path partly compiled: {', '.join(self.python)} run as Python"
        return f"hot path compiled with mypyc ({len(self.compiled)} modules)"


def classify(
    origins: dict[str, str | None], recorded: dict[str, str], current: Callable[[str], str]
) -> HotPathState:
    """Sort modules by where they import from; `current(module)` hashes its source now."""
    compiled, python, stale = [], [], []
    for module, origin in origins.items():
        if origin is None or origin.endswith(".py"):
            python.append(module)
            continue
        compiled.append(module)
        if recorded.get(module) != current(module):
            stale.append(module)
    return HotPathState(compiled, python, stale)


def state(manifest: Path | None = None) -> HotPathState:
    """What a fresh import of each hot path module loads (found, not imported)."""
    try:
        recorded = json.loads((manifest or MANIFEST).read_text())
    except (OSError, ValueError):
        recorded = {}
    origins = {}
    for module in HOT_PATH:
        spec = importlib.util.find_spec(module)
        origins[module] = spec.origin if spec is not None else None
    return classify(origins, recorded, lambda m: digest(source_path(m)))


def main() -> int:
    st = state()
    if "--json" in sys.argv[1:]:
        print(json.dumps({"compiled": st.compiled, "python": st.python, "stale": st.stale}))
    else:
        print(st.summary)
    return 1 if st.stale else 0


if __name__ == "__main__":
    sys.exit(main())
