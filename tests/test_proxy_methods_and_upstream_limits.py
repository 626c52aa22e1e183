"""TRACE, unknown methods, an upstream's header flood, PUT on a stale pooled connection.

Real sockets: edgeproxy on port 0; the aiohttp backend of `proxy_fixtures`, or
`RawBackend`, a backend on raw sockets for what a well-behaved server never
does (thousands of header fields, closing a keep-alive connection just as it
is reused).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from tests.proxy_fixtures import Edge, raw_request, site


@dataclass
class Seen:
    conn: int
    """Which accepted connection (0 = the first)."""
    head: bytes
    body: bytes


@dataclass
class RawBackend:
    """Answers `respond(seen)` to each request; closes without answering when `stale(conn, n)`."""

    respond: Callable[[Seen], bytes]
    stale: Callable[[int, int], bool] = lambda conn, n: False
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    _sock: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()

    def _accept(self) -> None:
        assert self._sock is not None
        index = 0
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn, index), daemon=True).start()
            index += 1

    def _serve(self, conn: socket.socket, index: int) -> None:
        buf = b""
        n = 0
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    got = conn.recv(65536)
                    if not got:
                        return
                    buf += got
                head, buf = buf.split(b"\r\n\r\n", 1)
                if self.stale(index, n):
                    return  # like Node closing an idle keep-alive socket as it is reused
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buf) < length:
                    got = conn.recv(65536)
                    if not got:
                        return
                    buf += got
                seen = Seen(index, head, buf[:length])
                buf = buf[length:]
                self.seen.append(seen)
                conn.sendall(self.respond(seen))
                n += 1


@pytest.fixture
def raw_backend() -> Iterator[Callable[..., RawBackend]]:
    started: list[RawBackend] = []

    def start(
        respond: Callable[[Seen], bytes], stale: Callable[[int, int], bool] = lambda c, n: False
    ) -> RawBackend:
        b = RawBackend(respond, stale)
        b.start()
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


def ok(seen: Seen) -> bytes:
    body = seen.head.split(b" ", 1)[0] + b" " + seen.body
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def one_app(edge: Callable[..., Edge], url: str, **extra: object) -> Edge:
    # No health checks: their probes would be connections and requests of their own.
    return edge(
        {
            "apps": {
                "shop": {"colors": {"blue": {"upstreams": [url]}}, "health": {"enabled": False}}
            },
            "sites": [site("shop")],
            **extra,
        }
    )


# -- TRACE and unknown methods ---------------------------------------------------


def test_trace_is_answered_405_with_allow_and_never_forwarded(backend, edge):
    b = backend("blue")
    e = one_app(edge, b.url)
    out = raw_request(
        e.http_port,
        b"TRACE / HTTP/1.1\r\nHost: a.test\r\nCookie: secret=1\r\nConnection: close\r\n\r\n",
    )
    assert out.startswith(b"HTTP/1.1 405 "), out[:100]
    assert b"\r\nallow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n" in out
    assert b"secret" not in out
    assert b.seen == []


def test_trace_reaches_the_upstream_on_a_route_that_allows_it(backend, edge):
    b = backend("blue")
    e = edge(
        {
            "apps": {"shop": {"colors": {"blue": {"upstreams": [b.url]}}}},
            "sites": [site("shop", allow_trace=True)],
        }
    )
    out = raw_request(
        e.http_port, b"TRACE /t HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
    )
    assert out.startswith(b"HTTP/1.1 200 "), out[:100]
    assert [(r.method, r.path) for r in b.seen] == [("TRACE", "/t")]


@pytest.mark.parametrize("method", [b"FOO", b"get", b"BREW"])
def test_an_unknown_method_is_answered_501_and_never_forwarded(backend, edge, method):
    b = backend("blue")
    e = one_app(edge, b.url)
    out = raw_request(e.http_port, method + b" / HTTP/1.1\r\nHost: a.test\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 501 "), out[:100]
    assert b"connection: close" in out.lower()
    assert b.seen == []


# -- an upstream's header flood ---------------------------------------------------------


def flood(n: int) -> Callable[[Seen], bytes]:
    def respond(seen: Seen) -> bytes:
        fields = b"".join(b"X-F%d: v\r\n" % i for i in range(n))
        return b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 2\r\n\r\nok"

    return respond


def test_an_upstream_response_with_thousands_of_header_fields_is_a_502(raw_backend, edge, caplog):
    up = raw_backend(flood(5000))
    e = one_app(edge, up.url)
    with caplog.at_level(logging.WARNING, logger="edgeproxy.upstream"):
        out = raw_request(
            e.http_port, b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
        )
    assert out.startswith(b"HTTP/1.1 502 "), out[:100]
    assert b"x-f1:" not in out.lower()
    assert any("more than 100 header fields" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("fields", "status"), [(19, b"200"), (20, b"502")])
def test_the_upstream_header_limit_is_limits_max_headers(raw_backend, edge, fields, status):
    # `fields` X-F headers plus Content-Length: 20 fields pass a limit of 20, 21 do not.
    up = raw_backend(flood(fields))
    e = one_app(edge, up.url, limits={"max_headers": 20})
    out = raw_request(e.http_port, b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
    assert out[9:12] == status, out[:100]


# -- retrying on a stale pooled connection --------------------------------------------------


def stale_second_request(conn: int, n: int) -> bool:
    """The first connection serves one request, then closes as the next one arrives."""
    return conn == 0 and n == 1


def warm_pool(port: int) -> None:
    out = raw_request(port, b"GET /warm HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 ")
    time.sleep(0.05)  # the upstream connection is back in the pool


def test_a_put_on_a_stale_pooled_connection_is_retried_when_no_body_byte_was_sent(
    raw_backend, edge
):
    up = raw_backend(ok, stale_second_request)
    e = one_app(edge, up.url)
    warm_pool(e.http_port)
    with socket.create_connection(("127.0.0.1", e.http_port), timeout=5) as s:
        s.sendall(
            b"PUT /item HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
        )
        time.sleep(0.5)  # the reused connection fails before any body byte leaves
        s.sendall(b"hello")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    assert out.startswith(b"HTTP/1.1 200 "), out[:200]
    assert out.endswith(b"PUT hello")
    assert [(x.conn, x.body) for x in up.seen] == [(0, b""), (1, b"hello")]


def test_a_put_whose_body_went_out_on_a_stale_connection_is_not_retried(raw_backend, edge):
    up = raw_backend(ok, stale_second_request)
    e = one_app(edge, up.url)
    warm_pool(e.http_port)
    out = raw_request(
        e.http_port,
        b"PUT /item HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    assert out.startswith(b"HTTP/1.1 502 "), out[:200]
    assert [x.conn for x in up.seen] == [0]
