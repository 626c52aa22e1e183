"""How a body is framed: response modes towards the client, and chunked framing both ways."""

from typing import Final

LENGTH: Final = 0
"""Content-Length from the upstream, passed through."""
CHUNKED: Final = 1
"""Chunked from the upstream, re-framed chunk by chunk."""
RECHUNK: Final = 2
"""No length from the upstream (or gzip): we frame it chunked."""
UNTIL_CLOSE: Final = 3
"""HTTP/1.0 client or read-until-close upstream: the body ends with the connection."""
NOBODY: Final = 4
"""HEAD, 204, 304, 101."""


def chunk(data: bytes) -> bytes:
    """`data` as one chunk of a chunked body (RFC 9112 §7.1): the one place it is framed."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK: Final = b"0\r\n\r\n"
"""The end of a chunked body (no trailers)."""
