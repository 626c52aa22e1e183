"""Freed heap memory goes back to the operating system."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from edgeproxy.memory import heap_trimmer


def test_the_trimmer_returns_memory_freed_in_the_middle_of_the_heap() -> None:
    # 4 KiB objects are malloc'd by glibc (not pymalloc); keeping every 64th
    # alive pins the heap so freeing the rest cannot shrink it from the top.
    script = textwrap.dedent(
        """
        import re
        from edgeproxy.memory import heap_trimmer

        def rss_mib():
            status = open("/proc/self/status").read()
            return int(re.search(r"VmRSS:\\s+(\\d+)", status).group(1)) / 1024

        blocks = [bytes(4096) for _ in range(40_000)]
        keep = blocks[::64]
        del blocks
        before = rss_mib()
        heap_trimmer()()
        print(round(before - rss_mib(), 1), len(keep))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    released, kept = out.split()
    assert kept == "625"
    assert float(released) > 50  # of the ~156 MiB freed


def test_the_trimmer_is_available_on_this_glibc_system() -> None:
    trim = heap_trimmer()
    assert trim is not None
    assert isinstance(trim(), bool)
