"""How a response body is framed towards the client (shared by exchange and headers)."""

LENGTH = 0
"""Content-Length from the upstream, passed through."""
CHUNKED = 1
"""Chunked from the upstream, re-framed chunk by chunk."""
RECHUNK = 2
"""No length from the upstream (or gzip): we frame it chunked."""
UNTIL_CLOSE = 3
"""HTTP/1.0 client or read-until-close upstream: the body ends with the connection."""
NOBODY = 4
"""HEAD, 204, 304, 101."""
