"""The response-head HPACK encoder (edgeproxy/proxy/h2hpack.py) against the `hpack` decoder."""

from __future__ import annotations

import hpack
import pytest
from hpack import NeverIndexedHeaderTuple

from edgeproxy.proxy.h2hpack import StaticEncoder, integer

HEAD = [
    (b":status", b"200"),  # in the static table, name and value
    (b"content-type", b"text/html; charset=utf-8"),  # static name, literal value
    (b"x-frame-options", b"DENY"),  # a name the static table lacks
    (b"x-long", b"v" * 300),  # a length over the 7-bit prefix
    NeverIndexedHeaderTuple(b"x-request-id", b"0123456789abcdef"),
    NeverIndexedHeaderTuple(b"set-cookie", b"sid=secret"),
]


def decoded(block: bytes, decoder: hpack.Decoder) -> list[tuple[bytes, bytes]]:
    return [(bytes(n), bytes(v)) for n, v in decoder.decode(block, raw=True)]


def test_a_block_decodes_to_the_fields_it_was_given_and_leaves_the_dynamic_table_empty() -> None:
    enc, dec = StaticEncoder(), hpack.Decoder()
    for _ in range(3):  # the second and third come from the cache
        assert decoded(enc.encode(HEAD), dec) == [(bytes(n), bytes(v)) for n, v in HEAD]
    assert len(dec.header_table.dynamic_entries) == 0


def test_never_indexed_fields_stay_never_indexed_for_the_next_hop() -> None:
    dec = hpack.Decoder()
    fields = dec.decode(StaticEncoder().encode(HEAD), raw=True)
    marked = {bytes(f[0]) for f in fields if isinstance(f, NeverIndexedHeaderTuple)}
    assert marked == {b"x-request-id", b"set-cookie"}


def test_a_smaller_header_table_size_is_signalled_before_the_next_block() -> None:
    enc, dec = StaticEncoder(), hpack.Decoder()
    dec.decode(enc.encode(HEAD))
    enc.header_table_size = 0
    enc.header_table_size = 1024
    block = enc.encode(HEAD)
    # §4.2: the smallest size in between (0), then the final one (1024).
    assert block.startswith(integer(0, 5, 0x20) + integer(1024, 5, 0x20))
    dec.max_allowed_table_size = 1024
    assert decoded(block, dec)[0] == (b":status", b"200")
    assert not enc.encode(HEAD).startswith(integer(1024, 5, 0x20))


@pytest.mark.parametrize(("value", "bits"), [(0, 5), (30, 5), (31, 5), (1337, 5), (16383, 7)])
def test_integers_follow_rfc_7541_5_1(value: int, bits: int) -> None:
    assert integer(value, bits, 0) == bytes(hpack.hpack.encode_integer(value, bits))


HTTP1_HEAD = (
    b"HTTP/1.1 404 Not Found\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"Connection: keep-alive\r\n"  # hop-by-hop: not sent over HTTP/2
    b"X-Request-Id:  0123456789abcdef \r\n"
    b"Set-Cookie: sid=secret\r\n"
    b"x-long: " + b"v" * 300 + b"\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"\r\n"
    b"body bytes"
)
NEVER = frozenset({b"x-request-id", b"set-cookie"})
HOP = frozenset({b"connection", b"keep-alive"})


def test_a_response_head_encoded_from_its_http1_lines_is_the_block_of_its_fields() -> None:
    enc, dec = StaticEncoder(), hpack.Decoder()
    end = HTTP1_HEAD.find(b"\r\n\r\n")
    for _ in range(3):  # the second and third come from the line cache
        fields = dec.decode(enc.encode_head(HTTP1_HEAD, end, HOP, NEVER), raw=True)
        assert [(bytes(n), bytes(v)) for n, v in fields] == [
            (b":status", b"404"),
            (b"content-type", b"text/html; charset=utf-8"),
            (b"x-request-id", b"0123456789abcdef"),
            (b"set-cookie", b"sid=secret"),
            (b"x-long", b"v" * 300),
        ]
        marked = {bytes(f[0]) for f in fields if isinstance(f, NeverIndexedHeaderTuple)}
        assert marked == {b"x-request-id", b"set-cookie"}
    assert len(dec.header_table.dynamic_entries) == 0


def test_a_table_size_change_is_signalled_before_a_head_encoded_from_http1_lines() -> None:
    enc, dec = StaticEncoder(), hpack.Decoder()
    enc.header_table_size = 0
    dec.max_allowed_table_size = 0
    block = enc.encode_head(HTTP1_HEAD, HTTP1_HEAD.find(b"\r\n\r\n"), HOP, NEVER)
    assert block[0] == 0x20  # a dynamic table size update to 0 first (RFC 7541 §6.3)
    assert dict(dec.decode(block))[":status"] == "404"
