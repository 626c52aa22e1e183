"""Which color serves a request. Pure and on the hot path (one call per request).

Order: tester override → sticky canary cookie → weighted choice by a stable hash.

Every visitor has a bucket in 0..9999 (a hash of its client key, or the bucket
carried in its sticky cookie). The candidate takes the buckets below
`weight * 100`, so raising the weight only moves visitors from the active color
to the candidate, never back. The cookie value is `COLOR.BUCKET`: it keeps a
visitor's bucket when its address changes, and is honoured only while its
color still receives traffic.
"""

from __future__ import annotations

from zlib import crc32

from edgeproxy.switching.state import AppState

BUCKETS = 10_000
_PER_PERCENT = BUCKETS // 100


def bucket_of(client_key: bytes) -> int:
    """A stable bucket in 0..9999 for a client (its address, or any stable key).

    crc32 then a Fibonacci multiply spreads similar addresses evenly; it costs
    half of blake2b's time, and a client gains nothing by picking its bucket.
    """
    return (((crc32(client_key) * 0x9E3779B1) & 0xFFFFFFFF) * BUCKETS) >> 32


def cookie_value(color: str, bucket: int) -> str:
    return f"{color}.{bucket}"


def parse_cookie(value: str) -> tuple[str, int] | None:
    """`green.4271` → ("green", 4271); anything else → None."""
    color, sep, digits = value.rpartition(".")
    if not sep or not color or not digits.isdigit() or len(digits) > 4:
        return None
    return color, int(digits)


def choose(
    state: AppState,
    *,
    override: str | None,
    sticky: str | None,
    client_key: bytes,
    keep: bool = True,
) -> tuple[str, str | None]:
    """Return (color, sticky cookie value to set or None).

    `override` is a color a tester asked for; the caller has already decided
    that this client may override. A draining color is never chosen.
    `client_key` is what the app's `canary_key` names (address, header value, or
    random bytes per request); `keep=False` (per-request keys) sets no cookie.
    """
    draining = state.draining
    if override is not None and override in state.colors and override not in draining:
        return override, None
    candidate = state.candidate
    # Fast path: no canary running (the common case) costs two attribute reads.
    if candidate is None or state.weight == 0:
        return state.active, None
    threshold = state.weight * _PER_PERCENT
    if sticky is not None:
        parsed = parse_cookie(sticky)
        if parsed is not None and (parsed[0] == state.active or parsed[0] == candidate):
            color, bucket = parsed
            chosen = candidate if bucket < threshold else state.active
            return chosen, (None if chosen == color else cookie_value(chosen, bucket))
    bucket = bucket_of(client_key)
    chosen = candidate if bucket < threshold else state.active
    return chosen, (cookie_value(chosen, bucket) if keep else None)
