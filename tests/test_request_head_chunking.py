"""However a request stream is cut into reads, the head-size limit gives the same answer.

The size of a request head is checked per read with an upper bound and exactly
only when that bound passes the limit (edgeproxy/proxy/client.py). These
properties feed real `ClientConnection`/`UpstreamConnection` objects through
in-memory transports, split at arbitrary points, with a keep-alive request and
its body before the one under test.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from edgeproxy.proxy.context import ProxyContext
from edgeproxy.proxy.exchange import REQ_DONE
from tests.in_memory import connect_in_memory
from tests.proxy_fixtures import in_memory_config

LIMIT = 4096
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def head_of_size(size: int, path: bytes = b"/") -> bytes:
    """A GET whose counted size (target + name + value + 4 per header) is exactly `size`."""
    fixed = len(path) + (4 + 6 + 4) + (5 + 4)  # target, Host: a.test, X-Pad: + pad
    return b"GET %b HTTP/1.1\r\nHost: a.test\r\nX-Pad: %b\r\n\r\n" % (path, b"p" * (size - fixed))


def feed(stream: bytes, cuts: list[int]) -> tuple[list[bytes], bytes]:
    """Feed `stream` in reads cut at `cuts`; answer each request that reached the upstream."""
    out: dict[str, Any] = {}

    async def go() -> None:
        client, ct, up, ut = connect_in_memory(
            ProxyContext(in_memory_config(limits={"max_header_bytes": LIMIT}))
        )
        edges = [0, *sorted(set(cuts)), len(stream)]
        for a, b in itertools.pairwise(edges):
            if a < b and not ct.closed:
                client.data_received(stream[a:b])
            # Answer each request once it has wholly reached the upstream, in order.
            while (
                client.queue and client.queue[0].req_phase == REQ_DONE and client.queue[0].upstream
            ):
                up.data_received(OK)
        client.flush()
        out["upstream"] = [w for w in ut.written]
        out["client"] = b"".join(ct.written)

    asyncio.run(go())
    return out["upstream"], out["client"]


cuts_st = st.lists(st.integers(min_value=1, max_value=200_000), max_size=12)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(min_value=30, max_value=LIMIT), body=st.integers(0, 70_000), cuts=cuts_st)
def test_a_head_within_the_limit_is_forwarded_however_the_stream_is_cut(
    size: int, body: int, cuts: list[int]
) -> None:
    first = b"POST /first HTTP/1.1\r\nHost: a.test\r\nContent-Length: %d\r\n\r\n" % body
    stream = first + b"b" * body + head_of_size(size, b"/second")
    upstream, client = feed(stream, [c % len(stream) for c in cuts])
    assert client.count(b"HTTP/1.1 200 OK") == 2, client[:200]
    assert b"GET /second HTTP/1.1" in b"".join(upstream)


@settings(max_examples=60, deadline=None)
@given(
    over=st.integers(min_value=1, max_value=3 * LIMIT), body=st.integers(0, 70_000), cuts=cuts_st
)
def test_a_head_over_the_limit_gets_431_however_the_stream_is_cut(
    over: int, body: int, cuts: list[int]
) -> None:
    first = b"POST /first HTTP/1.1\r\nHost: a.test\r\nContent-Length: %d\r\n\r\n" % body
    stream = first + b"b" * body + head_of_size(LIMIT + over, b"/second")
    upstream, client = feed(stream, [c % len(stream) for c in cuts])
    assert client.startswith(b"HTTP/1.1 200 OK"), client[:200]
    assert b"HTTP/1.1 431" in client
    assert b"/second" not in b"".join(upstream)


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=40_000), max_size=8))
def test_an_endless_header_is_refused_within_one_read_of_the_limit(cuts: list[int]) -> None:
    stream = b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Endless: " + b"e" * 40_000
    _, client = feed(stream, [c % len(stream) for c in cuts])
    assert client.startswith(b"HTTP/1.1 431"), client[:200]
