"""File descriptors: the process limit, and how many of them client connections may take.

Every client connection, upstream connection, health check, listener, log file
and the control socket is a descriptor. A service often starts with the soft
`RLIMIT_NOFILE` of 1024 while its hard limit is far higher: edgeproxy raises
the soft limit to the hard one at start (nginx: `worker_rlimit_nofile`), and
caps client connections below it (HAProxy derives `maxconn` from `ulimit -n`
the same way), so that running out of descriptors refuses a visitor rather
than failing an upstream connection or a health check.
"""

from __future__ import annotations

import resource
from pathlib import Path

HELD_BACK_SHARE = 4
"""With `limits.max_connections: 0`, one descriptor in this many is held back."""
HELD_BACK_MIN = 32
"""... and never fewer than this many."""


def _nr_open() -> int:
    """The kernel's ceiling for a process's descriptor limit (fs.nr_open)."""
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        return 1048576


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _nr_open() if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass  # reported by the caller: the limit stays what it was
    return soft, nofile_limit()


def nofile_limit() -> int:
    """The soft RLIMIT_NOFILE now (the kernel's ceiling when it is unlimited)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return _nr_open() if soft == resource.RLIM_INFINITY else soft


def connection_budget(configured: int, limit: int) -> int:
    """How many client connections `limits.max_connections` allows under `limit` descriptors.

    0 (the default) and any value above it give the limit less a quarter (at
    least HELD_BACK_MIN) held back for upstreams, health checks, the control
    socket and files.
    """
    most = max(1, limit - max(limit // HELD_BACK_SHARE, HELD_BACK_MIN))
    return most if configured == 0 else min(configured, most)
