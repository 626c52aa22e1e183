"""The switching package sits below the control plane and the data plane."""

from __future__ import annotations

import subprocess
import sys


def test_importing_every_switching_module_loads_nothing_of_control_or_proxy() -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        "import edgeproxy.switching as pkg\n"
        "names = [m.name for m in pkgutil.iter_modules(pkg.__path__)]\n"
        "for name in names: importlib.import_module('edgeproxy.switching.' + name)\n"
        "print(len(names), sorted(m for m in sys.modules\n"
        "    if m.startswith(('edgeproxy.control', 'edgeproxy.proxy'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    count, loaded = out.split(" ", 1)
    assert int(count) >= 5  # board, choose, decide, state, store
    assert loaded.strip() == "[]"
