"""Compiles the hot path with mypyc when asked (EDGEPROXY_COMPILE=1); see edgeproxy/compiled.py.

`make compile` runs `EDGEPROXY_COMPILE=1 python setup.py build_ext --inplace`
with the virtual environment's mypy (it type-checks against the installed
dependencies). Without EDGEPROXY_COMPILE=1, `pip install` builds the pure
Python package and everything else comes from pyproject.toml.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # PEP 517 builds don't put the source tree on sys.path

from edgeproxy.compiled import GROUP, HOT_PATH, source_path, write_manifest  # noqa: E402


class BuildExtWithManifest(build_ext):
    """build_ext that records which sources the extensions were compiled from."""

    def run(self) -> None:
        super().run()
        out = ROOT if self.inplace else Path(self.build_lib)
        write_manifest(out / "edgeproxy")


options: dict[str, Any] = {}
if os.environ.get("EDGEPROXY_COMPILE") == "1":
    from mypyc.build import mypycify

    paths = [str(source_path(m).relative_to(ROOT)) for m in HOT_PATH]
    options = {
        "ext_modules": mypycify(paths, group_name=GROUP, opt_level="3"),
        "cmdclass": {"build_ext": BuildExtWithManifest},
    }

setup(**options)
