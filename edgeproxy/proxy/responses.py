"""Responses edgeproxy writes itself: errors, redirects, ACME files, preflights.

Each is one pre-joined bytes object, built from a status, a short plain body
and extra headers: one buffer leaves in one send(), one TLS record (writes are
coalesced for the same reason; docs/architecture.md, hot-path notes).
"""

from __future__ import annotations

from email.utils import formatdate
from http import HTTPStatus
from time import time as wall_clock
from typing import Final

Header = tuple[bytes, bytes]

_REASONS: Final[dict[int, bytes]] = {s.value: s.phrase.encode() for s in HTTPStatus}
_REASONS[421] = b"Misdirected Request"
_REASONS[499] = b"Client Closed Request"


def reason(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


class _DateCache:
    """The Date header value and the second it was formatted for. A native object
    held in a Final: compiled, reading it takes no module dict lookup."""

    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = b""


_DATE: Final = _DateCache()


def http_date() -> bytes:
    """The Date header value, formatted at most once per second (hot path)."""
    cache = _DATE
    now = int(wall_clock())
    if cache.second != now:
        cache.value = formatdate(now, usegmt=True).encode()
        cache.second = now
    return cache.value


ERROR_BODIES: Final[dict[int, bytes]] = {
    400: b"400 Bad Request: the request is malformed or ambiguous\n",
    403: b"403 Forbidden\n",
    404: b"404 Not Found: no site or route matches this request\n",
    405: b"405 Method Not Allowed\n",
    408: b"408 Request Timeout: the request was not completed in time\n",
    413: b"413 Content Too Large: the request body exceeds this route's limit\n",
    414: b"414 URI Too Long\n",
    417: b"417 Expectation Failed\n",
    421: b"421 Misdirected Request: this host is not served on this TLS connection\n",
    429: b"429 Too Many Requests: slow down and retry later\n",
    431: b"431 Request Header Fields Too Large\n",
    501: b"501 Not Implemented: unsupported request method or Transfer-Encoding\n",
    502: b"502 Bad Gateway: the upstream server is unreachable or answered badly\n",
    503: b"503 Service Unavailable: no upstream can take this request right now\n",
    504: b"504 Gateway Timeout: the upstream server did not answer in time\n",
    505: b"505 HTTP Version Not Supported\n",
}


def build_response(
    status: int,
    body: bytes | None = None,
    headers: list[Header] | tuple[Header, ...] = (),
    *,
    close: bool = False,
    content_type: bytes = b"text/plain; charset=utf-8",
    head_only: bool = False,
) -> bytes:
    """A complete HTTP/1.1 response as one buffer."""
    if body is None:
        body = ERROR_BODIES.get(status, b"%d %s\n" % (status, reason(status)))
    parts = [
        b"HTTP/1.1 %d %s\r\n" % (status, reason(status)),
        b"date: " + http_date() + b"\r\n",
        b"server: edgeproxy\r\n",
    ]
    if body or status not in (204, 304):
        parts.append(b"content-type: " + content_type + b"\r\n")
        parts.append(b"content-length: %d\r\n" % len(body))
    for name, value in headers:
        parts.append(name + b": " + value + b"\r\n")
    if close:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)


def redirect(location: bytes, headers: list[Header] | tuple[Header, ...] = ()) -> bytes:
    body = b"301 Moved Permanently: " + location + b"\n"
    return build_response(301, body, [(b"location", location), *headers])
