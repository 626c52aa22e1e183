"""gzip decisions (nginx gzip_* semantics) and the streaming encoder, with real zlib."""

from __future__ import annotations

import gzip
import os
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeproxy.config import Gzip
from edgeproxy.policies.gzip import GzipEncoder, GzipPolicy, accepts_gzip, media_type

POLICY = GzipPolicy(Gzip())
BIG = 20_000


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"gzip", True),
        (b"gzip, deflate, br", True),
        (b"br;q=1.0, gzip;q=0.8, *;q=0.1", True),
        (b"GZIP", True),
        (b"x-gzip", True),
        (b"*", True),
        (b"gzip;q=0", False),
        (b"gzip; q=0.000", False),
        (b"gzip;q=0, *;q=1", False),
        (b"*;q=0", False),
        (b"br, deflate", False),
        (b"identity", False),
        (b"gzipper", False),
        (b"", False),
        (b"gzip;q=oops", False),
    ],
)
def test_accept_encoding_is_parsed_with_q_values(header: bytes, expected: bool) -> None:
    assert accepts_gzip(header) is expected
    assert POLICY.accepts(header) is expected


def test_media_type_ignores_parameters_and_case() -> None:
    assert media_type(b"Application/JSON; charset=utf-8") == b"application/json"


@pytest.mark.parametrize(
    ("ctype", "cenc", "clen", "status", "method", "expected"),
    [
        (b"application/json; charset=utf-8", None, BIG, 200, b"GET", True),
        (b"application/json", None, None, 200, b"GET", True),  # chunked: unknown length
        (b"application/json", None, 10240, 200, b"POST", True),  # exactly the minimum
        (b"application/json", None, 10239, 200, b"GET", False),  # below gzip_min_length
        (b"image/png", None, BIG, 200, b"GET", False),  # type not listed
        (None, None, BIG, 200, b"GET", False),  # no type
        (b"text/css", b"br", BIG, 200, b"GET", False),  # already encoded
        (b"text/css", b"identity", BIG, 200, b"GET", True),
        (b"text/css", None, BIG, 200, b"HEAD", False),
        (b"text/css", None, BIG, 204, b"GET", False),
        (b"text/css", None, BIG, 304, b"GET", False),
        (b"text/css", None, BIG, 206, b"GET", False),
        (b"text/css", None, BIG, 101, b"GET", False),
        (b"text/css", None, BIG, 404, b"GET", True),
    ],
)
def test_should_compress_follows_type_size_encoding_status_and_method(
    ctype: bytes | None,
    cenc: bytes | None,
    clen: int | None,
    status: int,
    method: bytes,
    expected: bool,
) -> None:
    assert POLICY.should_compress(b"gzip", ctype, cenc, clen, status, method) is expected
    assert POLICY.vary(ctype, cenc, clen, status, method) is expected


def test_a_client_without_gzip_gets_vary_but_no_compression() -> None:
    args = (b"application/json", None, BIG, 200, b"GET")
    assert POLICY.vary(*args)
    assert not POLICY.should_compress(b"br", *args)
    assert not POLICY.should_compress(None, *args)


def test_wildcard_types_match_a_whole_family_or_everything() -> None:
    family = GzipPolicy(Gzip(types=["text/*"]))
    assert family.type_matches(b"text/html; charset=utf-8")
    assert not family.type_matches(b"application/json")
    anything = GzipPolicy(Gzip(types=["*"]))
    assert anything.type_matches(b"application/octet-stream")


def test_memo_tables_stay_bounded_under_many_distinct_header_values() -> None:
    pol = GzipPolicy(Gzip())
    for i in range(5000):
        pol.accepts(b"gzip;q=0.%d" % i)
        pol.type_matches(b"text/plain; x=%d" % i)
    assert len(pol._accept_memo) <= 512
    assert len(pol._type_memo) <= 512


def test_streamed_chunks_decompress_to_the_input_with_gzip_framing() -> None:
    data = os.urandom(3000).hex().encode() * 20
    chunks = [data[i : i + 4096] for i in range(0, len(data), 4096)]
    enc = GzipEncoder(level=6)
    out = b"".join(enc.feed(c) for c in chunks) + enc.finish()
    assert out[:2] == b"\x1f\x8b"
    assert gzip.decompress(out) == data
    assert len(out) < len(data)


def test_a_flushed_feed_is_decodable_before_the_stream_ends() -> None:
    enc = GzipEncoder()
    first = enc.feed(b"data: hello\n\n", flush=True)
    d = zlib.decompressobj(31)
    assert d.decompress(first) == b"data: hello\n\n"
    rest = enc.feed(b"data: bye\n\n") + enc.finish()
    assert d.decompress(rest) == b"data: bye\n\n"
    assert d.eof


@given(st.lists(st.binary(max_size=5000), max_size=30), st.integers(min_value=1, max_value=9))
def test_any_chunking_round_trips_through_the_encoder(chunks: list[bytes], level: int) -> None:
    enc = GzipEncoder(level)
    out = b"".join(enc.feed(c) for c in chunks) + enc.finish()
    assert gzip.decompress(out) == b"".join(chunks)
