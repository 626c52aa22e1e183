"""Response compression, like nginx `gzip on; gzip_min_length …; gzip_types …;
gzip_vary on; gzip_proxied any`.

`GzipPolicy.should_compress(...)` decides per response from the request's
`Accept-Encoding` and the response head; `GzipPolicy.vary(...)` says whether
`Vary: Accept-Encoding` belongs on the response (gzip_vary: whenever the type
and size make it compressible, whether or not this client accepts gzip).
`GzipEncoder` streams: each upstream chunk in, compressed bytes out, nothing
buffered beyond zlib's own window.

Both lookups that parse header values (Accept-Encoding, Content-Type) are
memoised in small bounded dicts: clients send a handful of distinct values.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from edgeproxy.config import Gzip

# Statuses whose body we never touch: no body (204, 304), a byte range of the
# identity encoding (206), interim responses (1xx).
_NEVER = frozenset({204, 206, 304})
_MEMO_MAX = 512


def accepts_gzip(accept_encoding: bytes) -> bool:
    """True when `Accept-Encoding` allows gzip (q-values honoured; `*` counts; q=0 refuses)."""
    if not accept_encoding:
        return False
    gzip_q: float | None = None
    star_q: float | None = None
    for item in accept_encoding.split(b","):
        coding, _, params = item.partition(b";")
        coding = coding.strip().lower()
        if coding not in (b"gzip", b"x-gzip", b"*"):
            continue
        q = 1.0
        for param in params.split(b";"):
            name, _, value = param.partition(b"=")
            if name.strip().lower() == b"q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        if coding == b"*":
            star_q = q
        else:
            gzip_q = q if gzip_q is None else max(gzip_q, q)
    if gzip_q is not None:
        return gzip_q > 0
    return star_q is not None and star_q > 0


def media_type(content_type: bytes) -> bytes:
    """`Application/JSON; charset=utf-8` → `application/json`."""
    return content_type.partition(b";")[0].strip().lower()


class _Memo(dict[bytes, bool]):
    """A bounded memo: a hit is one C-level dict lookup, a miss computes and stores."""

    __slots__ = ("_compute",)

    def __init__(self, compute: Callable[[bytes], bool]) -> None:
        super().__init__()
        self._compute = compute

    def __missing__(self, key: bytes) -> bool:
        value = self._compute(key)
        if len(self) >= _MEMO_MAX:
            self.clear()
        self[key] = value
        return value


class GzipEncoder:
    """A gzip stream (RFC 1952 framing via zlib's wbits=31): `feed` chunks, then `finish`."""

    __slots__ = ("_z",)

    def __init__(self, level: int = 5) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31)

    def feed(self, chunk: bytes, flush: bool = False) -> bytes:
        """Compressed bytes for `chunk` (often b"" until zlib has a block's worth).

        `flush=True` emits everything fed so far (Z_SYNC_FLUSH), for streamed
        responses where latency matters more than ratio.
        """
        out = self._z.compress(chunk)
        if flush:
            out += self._z.flush(zlib.Z_SYNC_FLUSH)
        return out

    def finish(self) -> bytes:
        """The rest of the stream and the gzip trailer; call once, after the last chunk."""
        return self._z.flush(zlib.Z_FINISH)


class GzipPolicy:
    """A route's compiled gzip settings."""

    __slots__ = (
        "_accept_memo",
        "_any_type",
        "_prefixes",
        "_type_memo",
        "_types",
        "level",
        "min_length",
    )

    def __init__(self, cfg: Gzip) -> None:
        self.level = cfg.level
        self.min_length = cfg.min_length
        types = [t.strip().lower().encode() for t in cfg.types]
        self._any_type = b"*" in types or b"*/*" in types
        self._types = frozenset(t for t in types if not t.endswith(b"/*"))
        self._prefixes = tuple(t[:-1] for t in types if t.endswith(b"/*") and t != b"*/*")
        self._accept_memo = _Memo(accepts_gzip)
        self._type_memo = _Memo(self._type_ok)

    def accepts(self, accept_encoding: bytes | None) -> bool:
        return self._accept_memo[accept_encoding] if accept_encoding else False

    def type_matches(self, content_type: bytes | None) -> bool:
        return self._type_memo[content_type] if content_type else False

    def _type_ok(self, content_type: bytes) -> bool:
        mt = media_type(content_type)
        return self._any_type or mt in self._types or mt.startswith(self._prefixes)

    def vary(
        self,
        content_type: bytes | None,
        content_encoding: bytes | None,
        content_length: int | None,
        status: int,
        method: bytes,
    ) -> bool:
        """True when the response is compressible apart from what the client accepts."""
        return (
            status >= 200
            and status not in _NEVER
            and method != b"HEAD"
            and (not content_encoding or content_encoding.strip().lower() == b"identity")
            and (content_length is None or content_length >= self.min_length)
            and self.type_matches(content_type)
        )

    def should_compress(
        self,
        accept_encoding: bytes | None,
        content_type: bytes | None,
        content_encoding: bytes | None,
        content_length: int | None,
        status: int,
        method: bytes,
    ) -> bool:
        """Compress this response? `content_length` None means unknown (chunked)."""
        return self.vary(
            content_type, content_encoding, content_length, status, method
        ) and self.accepts(accept_encoding)

    def encoder(self) -> GzipEncoder:
        return GzipEncoder(self.level)
