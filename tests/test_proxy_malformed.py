"""Ambiguous or malformed requests are rejected with the right status, never forwarded."""

from __future__ import annotations

import contextlib
import socket
import time

import pytest

from tests.proxy_fixtures import raw_request, site

H = b"Host: a.test\r\n"

# (name, raw request, expected status)
CORPUS = [
    (
        "cl_and_te",
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "te_and_cl",
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "duplicate_cl_same",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        400,
    ),
    (
        "duplicate_cl_different",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    ),
    ("cl_list", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3, 3\r\n\r\nabc", 400),
    ("cl_non_numeric", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3a\r\n\r\nabc", 400),
    ("cl_negative", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -3\r\n\r\nabc", 400),
    ("cl_plus", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +3\r\n\r\nabc", 400),
    (
        "te_gzip_chunked",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    (
        "te_chunked_gzip",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "te_xchunked",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    (
        "te_space_before_colon",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "te_twice",
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "te_obs_fold",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "te_on_http10",
        b"POST / HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("obs_fold", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n", 400),
    ("nul_in_value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400),
    ("cr_in_value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\rb\r\n\r\n", 400),
    ("ctl_in_value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x07b\r\n\r\n", 400),
    ("space_in_name", b"GET / HTTP/1.1\r\n" + H + b"X A: 1\r\n\r\n", 400),
    ("bare_lf", b"GET / HTTP/1.1\n" + H.replace(b"\r\n", b"\n") + b"\n", 400),
    (
        "bad_chunk_size",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk_size_overflow",
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    ("missing_host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two_hosts", b"GET / HTTP/1.1\r\n" + H + H + b"\r\n", 400),
    ("bogus_target", b"GET foo HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("asterisk_target", b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("fragment_target", b"GET /a#b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("bad_version", b"GET / HTTP/1.2\r\n" + H + b"\r\n", 400),
    ("connect", b"CONNECT a.test:443 HTTP/1.1\r\n" + H + b"\r\n", 405),
    (
        "unknown_expect",
        b"POST / HTTP/1.1\r\n" + H + b"Expect: something\r\nContent-Length: 0\r\n\r\n",
        417,
    ),
]


@pytest.fixture
def proxied(backend, edge):
    b = backend("blue")
    e = edge(
        {"apps": {"shop": {"colors": {"blue": {"upstreams": [b.url]}}}}, "sites": [site("shop")]}
    )
    return e, b


@pytest.mark.parametrize(("name", "raw", "status"), CORPUS, ids=[c[0] for c in CORPUS])
def test_a_malformed_request_is_rejected_and_never_reaches_the_upstream(proxied, name, raw, status):
    e, b = proxied
    out = raw_request(e.http_port, raw)
    assert out.startswith(b"HTTP/1.1 %d " % status), out[:200]
    assert b"connection: close" in out.lower()
    assert b.seen == []


def test_a_smuggled_request_after_a_rejected_one_is_not_processed(proxied):
    e, b = proxied
    smuggle = b"GET /smuggled HTTP/1.1\r\n" + H + b"\r\n"
    raw = (
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        + smuggle
    )
    out = raw_request(e.http_port, raw)
    assert out.count(b"HTTP/1.1") == 1
    assert b.seen == []


def test_a_valid_request_before_a_malformed_one_is_answered_first(proxied):
    e, b = proxied
    raw = b"GET /first HTTP/1.1\r\n" + H + b"\r\n" + b"GET / HTTP/1.1\r\n" + H + b"X: a\x00\r\n\r\n"
    out = raw_request(e.http_port, raw)
    assert out.startswith(b"HTTP/1.1 200")
    assert b"HTTP/1.1 400" in out
    assert [r.path for r in b.seen] == ["/first"]


def test_an_over_long_request_line_gets_414_and_large_headers_get_431(backend, edge):
    b = backend("blue")
    e = edge(
        {
            "limits": {"max_request_line": 1024, "max_header_bytes": 4096},
            "apps": {"shop": {"colors": {"blue": {"upstreams": [b.url]}}}},
            "sites": [site("shop")],
        }
    )
    out = raw_request(e.http_port, b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n" + H + b"\r\n")
    assert out.startswith(b"HTTP/1.1 414")
    out = raw_request(
        e.http_port, b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"b" * 5000 + b"\r\n\r\n"
    )
    assert out.startswith(b"HTTP/1.1 431")
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(150))
    out = raw_request(e.http_port, b"GET / HTTP/1.1\r\n" + H + many + b"\r\n")
    assert out.startswith(b"HTTP/1.1 431")
    assert b.seen == []


def limited_edge(backend, edge):
    b = backend("blue")
    e = edge(
        {
            "limits": {"max_header_bytes": 4096},
            "apps": {"shop": {"colors": {"blue": {"upstreams": [b.url]}}}},
            "sites": [site("shop")],
        }
    )
    return b, e


def test_one_header_trickled_without_end_gets_431_before_it_completes(backend, edge):
    # httptools buffers a header value until its line ends: without a per-read
    # bound one connection could make the proxy hold any amount of memory.
    b, e = limited_edge(backend, edge)
    with socket.create_connection(("127.0.0.1", e.http_port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\n" + H + b"X-Endless: ")
        with contextlib.suppress(OSError):  # the proxy may close while we still send
            for _ in range(64):
                s.sendall(b"a" * 1024)
                time.sleep(0.002)
        assert s.recv(100).startswith(b"HTTP/1.1 431")
    assert b.seen == []


@pytest.mark.parametrize(("size", "status"), [(4096, 200), (4097, 431)])
def test_the_header_limit_is_exact_for_a_head_arriving_in_small_pieces(backend, edge, size, status):
    _, e = limited_edge(backend, edge)
    # The limit counts the target and each header's name + value + 4: 1 + 14 + 9 + pad.
    head = b"GET / HTTP/1.1\r\n" + H + b"X-Pad: " + b"p" * (size - 24) + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", e.http_port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError):
            for i in range(0, len(head), 300):
                s.sendall(head[i : i + 300])
                time.sleep(0.002)
        assert s.recv(100).startswith(b"HTTP/1.1 %d" % status)


def test_a_small_head_in_one_read_with_a_large_body_is_not_a_431(backend, edge):
    _, e = limited_edge(backend, edge)
    body = b"x" * 200_000
    out = raw_request(
        e.http_port,
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        + body,
    )
    assert out.startswith(b"HTTP/1.1 200")


def test_a_pipelined_head_after_a_large_body_in_the_same_read_is_not_a_431(backend, edge):
    b, e = limited_edge(backend, edge)
    body = b"x" * 100_000
    first = b"POST / HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % len(body) + body
    second = (
        b"GET /second HTTP/1.1\r\n"
        + H
        + b"X-Pad: "
        + b"p" * 3000
        + b"\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", e.http_port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(first + second[:50])  # the second head starts in the body's last read
        time.sleep(0.05)
        s.sendall(second[50:])
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    assert out.count(b"HTTP/1.1 200") == 2
    assert b.seen[-1].path == "/second"


def test_a_body_over_the_route_limit_gets_413_by_length_or_while_streaming(backend, edge):
    b = backend("blue")
    e = edge(
        {
            "apps": {"shop": {"colors": {"blue": {"upstreams": [b.url]}}}},
            "sites": [site("shop", max_body="1k")],
        }
    )
    out = raw_request(
        e.http_port, b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 2000\r\n\r\n" + b"x" * 2000
    )
    assert out.startswith(b"HTTP/1.1 413")
    assert b.seen == []
    chunked = b"".join(b"200\r\n" + b"y" * 512 + b"\r\n" for _ in range(4)) + b"0\r\n\r\n"
    out = raw_request(
        e.http_port,
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n" + chunked,
    )
    assert b"413" in out.split(b"\r\n")[0]
    # Within the limit still works.
    out = raw_request(
        e.http_port,
        b"POST /echo HTTP/1.1\r\n"
        + H
        + b"Content-Length: 10\r\nConnection: close\r\n\r\n"
        + b"z" * 10,
    )
    assert out.startswith(b"HTTP/1.1 200")
    assert out.endswith(b"z" * 10)


def test_a_request_head_that_trickles_in_too_slowly_gets_408(backend, edge):
    import socket
    import time

    b = backend("blue")
    e = edge(
        {
            "timeouts": {"send": 0.5},
            "apps": {"shop": {"colors": {"blue": {"upstreams": [b.url]}}}},
            "sites": [site("shop")],
        }
    )
    with socket.create_connection(("127.0.0.1", e.http_port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\n")
        out = b""
        for _ in range(
            20
        ):  # a header line every 0.1 s keeps the socket busy, not the head complete
            s.sendall(b"X-Slow: 1\r\n")
            time.sleep(0.1)
            try:
                s.settimeout(0.01)
                out += s.recv(4096)
            except (TimeoutError, BlockingIOError):
                pass
            except ConnectionError:
                break
            if out:
                break
    assert out.startswith(b"HTTP/1.1 408")
    assert b.seen == []
