"""`make demo ONCE=1` runs the whole walkthrough (`switchctl/demo.py`) on a fresh checkout and
reports zero failures."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_make_demo_once_walks_blue_to_green_with_no_failed_request():
    proc = subprocess.run(
        ["make", "-C", str(ROOT), "demo", "ONCE=1"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "answered: blue" in out
    assert "'green': 50" in out
    assert "failed: 0" in out
