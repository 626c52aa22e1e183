"""Header names are case-insensitive: every spelling is classified like the lowercase one.

The request and response tables (edgeproxy/proxy/headers.py) hold each known
name lowercase and in its usual spelling, and lower-case a name only when its
spelling as received misses. These properties feed real `ClientConnection` /
`UpstreamConnection` objects (in-memory transports) the same exchange with
names in random letter case and compare what leaves with the lowercase run.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from edgeproxy.proxy.context import ProxyContext
from edgeproxy.proxy.headers import (
    COMMON_REQUEST_HEADERS,
    COMMON_RESPONSE_HEADERS,
    HEADER_CODES,
    RESPONSE_CODES,
    canonical,
)
from tests.in_memory import connect_in_memory
from tests.proxy_fixtures import in_memory_config

REQUEST_HEADERS = [
    (b"host", b"a.test"),
    (b"user-agent", b"ua/1"),
    (b"accept", b"*/*"),
    (b"content-length", b"2"),
    (b"x-forwarded-for", b"198.51.100.9"),
    (b"x-forwarded-port", b"1"),
    (b"x-forwarded-host", b"evil.test"),
    (b"keep-alive", b"timeout=5"),
    (b"x-request-id", b"rid-1"),
    (b"x-edgeproxy-color", b"green"),
    (b"x-custom", b"kept"),
]
RESPONSE_HEADERS = [
    (b"server", b"upstream"),
    (b"date", b"Thu, 01 Jan 2026 00:00:00 GMT"),
    (b"content-type", b"text/plain"),
    (b"etag", b'"v1"'),
    (b"x-request-id", b"rid-1"),
    (b"connection", b"keep-alive"),
    (b"keep-alive", b"timeout=5"),
    (b"x-custom", b"kept"),
]


def spell(name: bytes, upper: list[bool]) -> bytes:
    return bytes(
        c - 32 if 97 <= c <= 122 and upper[i % len(upper)] else c for i, c in enumerate(name)
    )


def exchange(request_names: list[bytes], response_names: list[bytes], framing: bytes) -> Any:
    """(head sent upstream, response head sent to the client) with these name spellings."""
    req = b"POST /x HTTP/1.1\r\n" + b"".join(
        n + b": " + v + b"\r\n" for n, (_, v) in zip(request_names, REQUEST_HEADERS, strict=True)
    )
    resp_head = b"HTTP/1.1 200 OK\r\n" + b"".join(
        n + b": " + v + b"\r\n" for n, (_, v) in zip(response_names, RESPONSE_HEADERS, strict=True)
    )
    body = b"5\r\nhello\r\n0\r\n\r\n" if framing.lower().startswith(b"transfer") else b"hello"
    out: dict[str, Any] = {}

    async def go() -> None:
        client, ct, up, ut = connect_in_memory(
            ProxyContext(in_memory_config()), app="shop", color="blue"
        )
        client.data_received(req + b"\r\nok")
        up.data_received(resp_head + framing + b"\r\n\r\n" + body)
        client.flush()
        out["up"] = b"".join(ut.written)
        out["client"] = b"".join(ct.written)

    asyncio.run(go())
    # The generated request id and the date differ per run: mask them.
    client = re.sub(rb"(?m)^date: .*$", b"date: -", out["client"])
    return out["up"], client


def normalized(head: bytes) -> bytes:
    """Names lower-cased (their spelling is passed through as received, values untouched)."""
    return b"\r\n".join(
        (line.split(b":", 1)[0].lower() + b":" + line.split(b":", 1)[1]) if b":" in line else line
        for line in head.split(b"\r\n")
    )


upper_st = st.lists(st.booleans(), min_size=1, max_size=7)


@settings(max_examples=60, deadline=None)
@given(
    request_case=st.lists(upper_st, min_size=len(REQUEST_HEADERS), max_size=len(REQUEST_HEADERS)),
    response_case=st.lists(
        upper_st, min_size=len(RESPONSE_HEADERS), max_size=len(RESPONSE_HEADERS)
    ),
    chunked=st.booleans(),
    framing_case=upper_st,
)
def test_every_spelling_of_a_header_name_is_handled_like_the_lowercase_one(
    request_case: list[list[bool]],
    response_case: list[list[bool]],
    chunked: bool,
    framing_case: list[bool],
) -> None:
    framing_name = b"transfer-encoding" if chunked else b"content-length"
    framing = spell(framing_name, framing_case) + (b": chunked" if chunked else b": 5")
    lower = exchange(
        [n for n, _ in REQUEST_HEADERS],
        [n for n, _ in RESPONSE_HEADERS],
        framing_name + (b": chunked" if chunked else b": 5"),
    )
    mixed = exchange(
        [spell(n, u) for (n, _), u in zip(REQUEST_HEADERS, request_case, strict=True)],
        [spell(n, u) for (n, _), u in zip(RESPONSE_HEADERS, response_case, strict=True)],
        framing,
    )
    assert normalized(mixed[0]) == normalized(lower[0])
    assert normalized(mixed[1]) == normalized(lower[1])


def test_the_lowercase_run_drops_hop_by_hop_and_spoofable_headers_and_keeps_the_rest() -> None:
    up, client = exchange(
        [n for n, _ in REQUEST_HEADERS], [n for n, _ in RESPONSE_HEADERS], b"content-length: 5"
    )
    assert b"x-forwarded-host: a.test\r\n" in up and b"evil.test" not in up
    assert b"keep-alive" not in up and b"green" not in up
    assert b"user-agent: ua/1\r\nx-custom: kept" not in up  # not adjacent: accept in between
    assert b"user-agent: ua/1\r\naccept: */*\r\n" in up
    assert b"x-request-id: rid-1\r\n" in up
    assert client.startswith(b'HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\netag: "v1"\r\n')
    assert b"server: upstream" not in client and b"timeout=5" not in client
    assert client.count(b"x-request-id") == 1 and b"x-custom: kept\r\n" in client
    assert client.endswith(b"\r\n\r\nhello")


def test_each_known_name_is_also_listed_in_its_usual_spelling() -> None:
    ctx = ProxyContext(in_memory_config())
    for name in [*HEADER_CODES, *COMMON_REQUEST_HEADERS]:
        assert ctx.header_codes[canonical(name)] == ctx.header_codes[name]
    for name in [*RESPONSE_CODES, *COMMON_RESPONSE_HEADERS]:
        assert ctx.response_codes[canonical(name)] == ctx.response_codes[name]
    assert canonical(b"user-agent") == b"User-Agent" and canonical(b"etag") == b"ETag"
