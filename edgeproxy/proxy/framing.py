"""How a response body is framed towards the client (shared by exchange and headers)."""

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
