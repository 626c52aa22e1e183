"""HPACK encoding of HTTP/2 response heads without the dynamic table, cached per field.

The `h2` library encodes each response head with `hpack.Encoder`: per field a
search of the static and dynamic tables, a Huffman coding of the literals and
an insertion into the dynamic table, all pure Python (a fifth of an HTTP/2
request's CPU, measured with cProfile under h2load). Response heads repeat
field for field (`server`, `content-type`, the same `date` for a second, the
security headers), so `StaticEncoder` encodes every field on its own, using
only the static table (RFC 7541 Appendix A) and literals *without indexing*
(§6.2.2), as nginx's encoder does. Such an encoding depends on no connection
state, so the bytes of a field are computed once and reused (a bounded cache
shared by all connections), and a header block is a join of cached pieces.

Fields the caller marks never-indexed (`hpack.NeverIndexedHeaderTuple`: the
request id, Set-Cookie) are sent as never-indexed literals (§6.2.3), not
Huffman-coded and never cached. Changes of the client's
SETTINGS_HEADER_TABLE_SIZE are signalled at the start of the next block
(§4.2, §6.3) as a dynamic table is still ours to size, though it stays empty.

What is given up: a repeated field costs its literal bytes on every response
instead of one index byte (response heads are larger on the wire, as they are
from nginx). Request heads are still decoded by the library's decoder, with
its dynamic table.
"""

from __future__ import annotations

from typing import Any, Final

from hpack import NeverIndexedHeaderTuple
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable

DEFAULT_TABLE_SIZE: Final = 4096
CACHE_LIMIT: Final = 2048
"""Encoded fields kept; the cache is emptied when full (values that never repeat,
such as Content-Length or ETag of many files, would otherwise grow it)."""

_HUFFMAN: Final = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


def _static_tables() -> tuple[dict[tuple[bytes, bytes], int], dict[bytes, int]]:
    fields: dict[tuple[bytes, bytes], int] = {}
    names: dict[bytes, int] = {}
    for i, (name, value) in enumerate(HeaderTable.STATIC_TABLE, 1):
        fields.setdefault((name, value), i)
        names.setdefault(name, i)
    return fields, names


STATIC_FIELDS, STATIC_NAMES = _static_tables()

_cache: dict[tuple[bytes, bytes], bytes] = {}


def integer(value: int, prefix_bits: int, first: int) -> bytes:
    """An integer with an N-bit prefix (RFC 7541 §5.1); `first` holds the pattern bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def string(data: bytes, huffman: bool) -> bytes:
    """A string literal (§5.2): Huffman-coded when asked and shorter."""
    if huffman and data:
        coded = _HUFFMAN.encode(data)
        if len(coded) < len(data):
            return integer(len(coded), 7, 0x80) + coded
    return integer(len(data), 7, 0) + data


def encode_field(name: bytes, value: bytes, *, never_indexed: bool) -> bytes:
    """One field: a static table index (§6.1), else a literal without indexing
    (§6.2.2) or never indexed (§6.2.3), its name indexed when the static table has it."""
    if not never_indexed:
        index = STATIC_FIELDS.get((name, value), 0)
        if index:
            return integer(index, 7, 0x80)
    first = 0x10 if never_indexed else 0x00
    huffman = not never_indexed
    index = STATIC_NAMES.get(name, 0)
    if index:
        return integer(index, 4, first) + string(value, huffman)
    return bytes((first,)) + string(name, huffman) + string(value, huffman)


class StaticEncoder:
    """Stands in for the `h2` connection's `hpack.Encoder` (its `encode()` and
    `header_table_size`, the two things the library uses)."""

    __slots__ = ("size_changes", "table_size")

    def __init__(self) -> None:
        self.table_size = DEFAULT_TABLE_SIZE
        self.size_changes: list[int] = []

    @property
    def header_table_size(self) -> int:
        return self.table_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        # The client's SETTINGS_HEADER_TABLE_SIZE (the library sets it on a change).
        if value != self.table_size:
            self.size_changes.append(value)
            self.table_size = value

    def encode(self, headers: list[Any]) -> bytes:
        """The header block of `headers` ((name, value) byte tuples, pseudo-headers first)."""
        parts: list[bytes] = []
        if self.size_changes:
            # §4.2: the smallest size since the last block, then the final one.
            smallest = min(self.size_changes)
            if smallest < self.table_size:
                parts.append(integer(smallest, 5, 0x20))
            parts.append(integer(self.table_size, 5, 0x20))
            self.size_changes = []
        cache = _cache
        for header in headers:
            name: bytes = header[0]
            value: bytes = header[1]
            if isinstance(header, NeverIndexedHeaderTuple):
                parts.append(encode_field(name, value, never_indexed=True))
                continue
            key = (name, value)
            block = cache.get(key)
            if block is None:
                block = encode_field(name, value, never_indexed=False)
                if len(cache) >= CACHE_LIMIT:
                    cache.clear()
                cache[key] = block
            parts.append(block)
        return b"".join(parts)
