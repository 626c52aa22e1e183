"""Give freed heap memory back to the operating system.

glibc's malloc keeps memory freed in the middle of its heap: under TLS
connection churn (every handshake allocates and frees OpenSSL and uvloop
buffers) edgeproxy's RSS rose about 1.2 MiB per 10 s with a flat count of
Python objects, and stayed flat with `malloc_trim(0)` every 10 s (each call
took 0.2-1 ms). Where there is no glibc (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable
from typing import Final

TRIM_INTERVAL = 10.0
"""Seconds between trims."""


def heap_trimmer() -> Callable[[], bool] | None:
    """`malloc_trim(0)` as a callable returning whether memory was released; None without glibc."""
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int

    def trim() -> bool:
        return bool(fn(0))

    return trim


GC_YOUNG_THRESHOLD: Final = 20_000
"""Container allocations (net of frees) between two collections of the youngest generation."""


def settle_gc() -> None:
    """Once serving: fewer, cheaper runs of the cyclic garbage collector.

    Python collects its youngest generation every 700 net allocations of
    container objects; a proxied request allocates dozens (exchange, heads,
    records), and each collection walks every young object still alive (the
    requests in flight): 5 % of an HTTP/2 request's CPU under h2load (perf).
    Every 20,000 instead: the walks are ~30 times rarer, and cyclic garbage
    (a stream and its exchange) waits at most that many allocations. What is
    alive at start-up (modules, config, tables) is frozen out of the older
    generations' walks (`gc.freeze`): it lives as long as the process.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
