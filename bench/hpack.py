"""HPACK request-head decoding: the `hpack` library's `Decoder` (what the `h2`
library uses) against edgeproxy's `Decoder` (edgeproxy/proxy/h2hpack.py,
compiled with the hot path after `make compile`). No sockets: one process,
nanoseconds of wall time per decoded block, the best of several repeats.

    .venv/bin/python -m bench.hpack [--repeats 7] [--blocks 20000]

Two heads, each encoded by the library's `Encoder` (Huffman on, incremental
indexing, as browsers and h2load send them):
- h2load: h2load's request head, second block onward: every field indexed (1 byte each).
- chromium: a Chromium navigation request, first block on a new connection:
  Huffman-coded literals, each added to the dynamic table.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import hpack

from edgeproxy.proxy import h2hpack
from edgeproxy.proxy.h2hpack import Decoder

Fields = list[tuple[bytes, bytes]]

H2LOAD: Fields = [
    (b":method", b"GET"),
    (b":path", b"/"),
    (b":scheme", b"https"),
    (b":authority", b"127.0.0.1:8443"),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"user-agent", b"h2load nghttp2/1.52.0"),
]
CHROMIUM: Fields = [
    (b":method", b"GET"),
    (b":authority", b"shop.example.com"),
    (b":scheme", b"https"),
    (b":path", b"/products/blue-shirt?variant=2&utm_source=newsletter"),
    (b"sec-ch-ua", b'"Chromium";v="120", "Not?A_Brand";v="24"'),
    (b"sec-ch-ua-mobile", b"?0"),
    (b"sec-ch-ua-platform", b'"Linux"'),
    (b"upgrade-insecure-requests", b"1"),
    (
        b"user-agent",
        b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        b"Chrome/120.0.0.0 Safari/537.36",
    ),
    (
        b"accept",
        b"text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
        b"image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7",
    ),
    (b"sec-fetch-site", b"none"),
    (b"sec-fetch-mode", b"navigate"),
    (b"sec-fetch-user", b"?1"),
    (b"sec-fetch-dest", b"document"),
    (b"accept-encoding", b"gzip, deflate, br"),
    (b"accept-language", b"en-US,en;q=0.9"),
    (b"cookie", b"_ga=GA1.1.123456789.1700000000; session=abcdef0123456789abcdef0123456789"),
]


def library(block: bytes, fields: Fields, warm: bytes | None) -> Callable[[], object]:
    dec = hpack.Decoder()
    if warm is not None:
        dec.decode(warm, raw=True)
    assert [
        (bytes(n), bytes(v)) for n, v in hpack.Decoder().decode(warm or block, raw=True)
    ] == fields
    return lambda: dec.decode(block, raw=True)


def ours(block: bytes, fields: Fields, warm: bytes | None) -> Callable[[], object]:
    dec = Decoder(65536)
    if warm is not None:
        dec.decode(warm)
    assert Decoder(65536).decode(warm or block) == fields
    return lambda: dec.decode(block)


Maker = Callable[[bytes, Fields, "bytes | None"], Callable[[], object]]


def per_decode(
    make: Maker, case: tuple[bytes, Fields, bytes | None], blocks: int, repeats: int
) -> float:
    """Best ns per decode over `repeats` runs of `blocks` decodes, each on its own decoder
    (a fresh one for a first block: decoders are made before the clock starts)."""
    best = float("inf")
    for _ in range(repeats):
        calls = [make(*case) for _ in range(blocks)]
        start = time.perf_counter_ns()
        for call in calls:
            call()
        best = min(best, (time.perf_counter_ns() - start) / blocks)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--blocks", type=int, default=20000)
    args = parser.parse_args()
    enc = hpack.Encoder()
    h2load_first = enc.encode(H2LOAD)
    h2load_next = enc.encode(H2LOAD)
    chromium_first = hpack.Encoder().encode(CHROMIUM)
    cases = [
        ("h2load, 2nd block on", h2load_next, H2LOAD, h2load_first),
        ("chromium, 1st block", chromium_first, CHROMIUM, None),
    ]
    compiled = h2hpack.__file__.endswith(".so")
    print(
        f"edgeproxy.proxy.h2hpack: {'compiled' if compiled else 'PURE PYTHON'} ({h2hpack.__file__})"
    )
    print("| head | fields | block bytes | hpack.Decoder ns | edgeproxy Decoder ns | ratio |")
    print("|---|---|---|---|---|---|")
    for name, block, fields, warm in cases:
        slow = per_decode(library, (block, fields, warm), args.blocks, args.repeats)
        fast = per_decode(ours, (block, fields, warm), args.blocks, args.repeats)
        print(
            f"| {name} | {len(fields)} | {len(block)} | {slow:,.0f} | {fast:,.0f} | {slow / fast:.1f}x |"
        )


if __name__ == "__main__":
    main()
