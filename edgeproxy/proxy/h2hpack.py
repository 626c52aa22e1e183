"""HPACK encoding of HTTP/2 response heads without the dynamic table, cached per field.

The `hpack` library's `Encoder` (what the `h2` library used) costs per field a
search of the static and dynamic tables, a Huffman coding of the literals and
an insertion into the dynamic table, all pure Python (a fifth of an HTTP/2
request's CPU, measured with cProfile under h2load). Response heads repeat
field for field (`server`, `content-type`, the same `date` for a second, the
security headers), so `StaticEncoder` encodes every field on its own, using
only the static table (RFC 7541 Appendix A) and literals *without indexing*
(§6.2.2), as nginx's encoder does. Such an encoding depends on no connection
state, so the bytes of a field are computed once and reused (a bounded cache
shared by all connections), and a header block is a join of cached pieces.
`encode_head` does it straight from the HTTP/1.1 head the exchange built,
its cache keyed by the line itself; `encode` takes a field list.

Fields the caller marks never-indexed (`hpack.NeverIndexedHeaderTuple`, or
named in `encode_head`'s `never_index`: the request id, Set-Cookie) are sent as never-indexed literals (§6.2.3), not
Huffman-coded and never cached. Changes of the client's
SETTINGS_HEADER_TABLE_SIZE are signalled at the start of the next block
(§4.2, §6.3) as a dynamic table is still ours to size, though it stays empty.

What is given up: a repeated field costs its literal bytes on every response
instead of one index byte (response heads are larger on the wire, as they are
from nginx).

Request heads are decoded by `Decoder`, a full RFC 7541 decoder with its
dynamic table, compiled with the hot path: an indexed field (what a browser's
or h2load's request heads are made of after the first) costs a byte read, a
bounds check and an append of the table's own tuple; Huffman literals are
decoded a byte at a time through a state table generated on first use from the
code table (256 states, the tree's internal nodes). Any error is an
`HPACKDecodeError` (a COMPRESSION_ERROR, RFC 9113 §4.3) except a header list
over the limit, `HeaderListTooLarge`, raised once the whole block has been
processed so that the dynamic table stays in step with the peer's.
"""

from __future__ import annotations

from typing import Any, Final, cast

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
_line_cache: dict[bytes, bytes] = {}
"""`StaticEncoder.encode_head`'s: a head line (or a status code) to its encoding
(b"" for a line left out)."""


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
    """An HTTP/2 connection's response-head encoder (`H2Wire.encoder`): `encode_head`
    for the heads the exchange builds, `encode` for a field list (local answers);
    `header_table_size` is the client's SETTINGS_HEADER_TABLE_SIZE, set by the wire."""

    __slots__ = ("size_changes", "table_size")

    def __init__(self) -> None:
        self.table_size = DEFAULT_TABLE_SIZE
        self.size_changes: list[int] = []

    @property
    def header_table_size(self) -> int:
        return self.table_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        # The client's SETTINGS_HEADER_TABLE_SIZE (the wire sets it on a change).
        if value != self.table_size:
            self.size_changes.append(value)
            self.table_size = value

    def _start_block(self) -> list[bytes]:
        parts: list[bytes] = []
        if self.size_changes:
            # §4.2: the smallest size since the last block, then the final one.
            smallest = min(self.size_changes)
            if smallest < self.table_size:
                parts.append(integer(smallest, 5, 0x20))
            parts.append(integer(self.table_size, 5, 0x20))
            self.size_changes = []
        return parts

    def encode_head(
        self, data: bytes, end: int, skip: frozenset[bytes], never_index: frozenset[bytes]
    ) -> bytes:
        """The header block of an HTTP/1.1 response head edgeproxy built itself
        (`data[:end]`: status line, then `name: value` lines): `:status`, then each
        field with its name lowercased and its value stripped, in order; fields named
        in `skip` (hop-by-hop) left out, those in `never_index` sent as never-indexed
        literals. Each line's encoding is cached by the line itself, so a repeated
        field costs one lookup: no split into name and value, no tuple per field."""
        parts = self._start_block()
        cache = _line_cache
        status = data[9:12]
        block = cache.get(status)
        if block is None:
            block = encode_field(b":status", status, never_indexed=False)
            cache[status] = block
        parts.append(block)
        pos = data.find(b"\r\n", 0, end)
        while pos != -1:
            start = pos + 2
            pos = data.find(b"\r\n", start, end)
            line = data[start:end] if pos == -1 else data[start:pos]
            block = cache.get(line)
            if block is None:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name in never_index:
                    parts.append(encode_field(name, value.strip(), never_indexed=True))
                    continue  # never cached: a value new each time, or a secret
                block = (
                    b""
                    if not name or name in skip
                    else encode_field(name, value.strip(), never_indexed=False)
                )
                if len(cache) >= CACHE_LIMIT:
                    cache.clear()
                cache[line] = block
            if block:
                parts.append(block)
        return b"".join(parts)

    def encode(self, headers: list[Any]) -> bytes:
        """The header block of `headers` ((name, value) byte tuples, pseudo-headers first)."""
        parts = self._start_block()
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


# --- Decoding (request heads) ---

MAX_INTEGER: Final = 1 << 32
"""The largest integer a block may carry (§5.1 leaves the limit to implementations)."""
MAX_CONTINUATION_BYTES: Final = 5
"""Continuation bytes after an integer's prefix: 5 x 7 bits cover MAX_INTEGER."""
ENTRY_OVERHEAD: Final = 32
"""Bytes counted per field on top of its name and value, in the table (§4.1) and in a header list (RFC 9113 §6.5.2)."""
STATIC_COUNT: Final = 61
FIRST_DYNAMIC: Final = STATIC_COUNT + 1


class HPACKDecodeError(Exception):
    """A header block that cannot be decoded: a COMPRESSION_ERROR (RFC 9113 §4.3)."""


class HeaderListTooLarge(HPACKDecodeError):
    """The decoded header list is over SETTINGS_MAX_HEADER_LIST_SIZE (names +
    values + 32 per field). Raised after the whole block was processed: the
    dynamic table is in step with the peer's and the connection may go on."""


def _huffman_tables() -> tuple[bytes, bytes]:
    """The byte-at-a-time Huffman decoding tables (§5.2, Appendix B).

    States are the internal nodes of the code tree (0 is the root). For a state
    s and an input byte b, the 4 bytes at (s << 10) | (b << 2) of the first
    table are: the next state, the count of symbols completed on the way (0, 1,
    2, or 3 for "the EOS symbol was completed"), and those symbols. The second
    table says, per state, whether a string may end there: 0 yes (the bits
    since the last symbol are at most 7 1s), 1 padding that is not all 1s, 2
    padding longer than 7 bits.
    """
    # The tree: children[2 * node + bit] is an internal node >= 0 or -1 - symbol.
    children: list[int] = [0, 0]
    depth: list[int] = [0]
    all_ones: list[bool] = [True]
    for symbol in range(257):
        code: int = REQUEST_CODES[symbol]
        length: int = REQUEST_CODES_LENGTH[symbol]
        node = 0
        for i in range(length - 1, -1, -1):
            bit = (code >> i) & 1
            slot = 2 * node + bit
            if i == 0:
                children[slot] = -1 - symbol
            else:
                child = children[slot]
                if child <= 0:  # 0 is the root, never a child: an empty slot
                    child = len(depth)
                    children[slot] = child
                    children.extend((0, 0))
                    depth.append(depth[node] + 1)
                    all_ones.append(all_ones[node] and bit == 1)
                node = child
    states = len(depth)
    table = bytearray(states * 1024)
    for state in range(states):
        for byte in range(256):
            node = state
            count = 0
            symbols = [0, 0]
            for i in range(7, -1, -1):
                child = children[2 * node + ((byte >> i) & 1)]
                if child < 0:
                    symbol = -1 - child
                    if symbol == 256:
                        count = 3
                        break
                    symbols[count] = symbol
                    count += 1
                    node = 0
                else:
                    node = child
            at = (state << 10) | (byte << 2)
            table[at] = node if count != 3 else 0
            table[at + 1] = count
            table[at + 2] = symbols[0]
            table[at + 3] = symbols[1]
    ends = bytearray(states)
    for state in range(states):
        if not all_ones[state]:
            ends[state] = 1
        elif depth[state] > 7:
            ends[state] = 2
    return bytes(table), bytes(ends)


_HUFFMAN_TABLES: Final[list[bytes]] = []
"""Built on the first Huffman-coded string, not at import: about 40 ms (compiled) that
would delay the first answer after a (re)start, HTTP/1.1 included."""


def huffman_tables() -> list[bytes]:
    """[steps, ends] of `_huffman_tables()`, built once."""
    if not _HUFFMAN_TABLES:
        _HUFFMAN_TABLES.extend(_huffman_tables())
    return _HUFFMAN_TABLES


def huffman_decode(data: bytes, start: int, stop: int) -> bytes:
    """The Huffman-coded string data[start:stop] decoded (§5.2)."""
    tables = huffman_tables()
    steps = tables[0]
    out: list[int] = []  # a native append in mypyc (bytearray.append is a method call)
    state = 0
    for i in range(start, stop):
        at = (state << 10) | (data[i] << 2)
        count = steps[at + 1]
        if count:
            if count == 3:
                raise HPACKDecodeError("the EOS symbol inside a Huffman-coded string")
            out.append(steps[at + 2])
            if count == 2:
                out.append(steps[at + 3])
        state = steps[at]
    flaw = tables[1][state]
    if flaw == 1:
        raise HPACKDecodeError("Huffman padding that is not the EOS code's 1 bits")
    if flaw == 2:
        raise HPACKDecodeError("Huffman padding longer than 7 bits")
    return bytes(out)


def decode_integer(block: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """The integer with an N-bit prefix at block[pos] (§5.1) and the position after it."""
    end = len(block)
    if pos >= end:
        raise HPACKDecodeError("the block ends where an integer was due")
    mask = (1 << prefix_bits) - 1
    value = block[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        if pos >= end:
            raise HPACKDecodeError("the block ends inside an integer")
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift >= 7 * MAX_CONTINUATION_BYTES:
            raise HPACKDecodeError(
                f"an integer of more than {MAX_CONTINUATION_BYTES} continuation bytes"
            )
    if value > MAX_INTEGER:
        raise HPACKDecodeError(f"integer {value} over the {MAX_INTEGER} allowed")
    return value, pos


def decode_string(block: bytes, pos: int) -> tuple[bytes, int]:
    """The string literal at block[pos] (§5.2) and the position after it."""
    if pos >= len(block):
        raise HPACKDecodeError("the block ends where a string was due")
    huffman = block[pos] & 0x80
    length, pos = decode_integer(block, pos, 7)
    stop = pos + length
    if stop > len(block):
        raise HPACKDecodeError(
            f"a string of {length} bytes with {len(block) - pos} left in the block"
        )
    if huffman:
        return huffman_decode(block, pos, stop), stop
    return block[pos:stop], stop


Field = tuple[bytes, ...]
"""A (name, value) pair. Typed as a variable-length tuple, which mypyc keeps as
a Python object: a `tuple[bytes, bytes]` local is unboxed into a C struct and
boxed again (a new tuple) when appended to the result."""
Fields = list[tuple[bytes, bytes]]

_EMPTY: Final[Field] = (b"", b"")
STATIC_ENTRIES: Final[list[Field]] = [_EMPTY, *HeaderTable.STATIC_TABLE]
"""Index 0 (never valid, a placeholder) and the static table (Appendix A)."""


class Decoder:
    """An HPACK decoder (RFC 7541) for one connection's request heads.

    `max_header_list_size` (our SETTINGS_MAX_HEADER_LIST_SIZE) and
    `max_table_size` (our SETTINGS_HEADER_TABLE_SIZE, the most a table size
    update may ask for) are plain attributes the caller may change between
    blocks. Lowering `max_table_size` below the current size (on the ACK of
    the SETTINGS that lowered it) obliges the peer's next block to start with
    a size update (§4.2), which is checked.
    """

    def __init__(self, max_header_list_size: int, max_table_size: int = DEFAULT_TABLE_SIZE) -> None:
        self.max_header_list_size = max_header_list_size
        self.max_table_size = max_table_size
        self.table_size = max_table_size
        """The dynamic table's current maximum (§4.2), as the last size update set it."""
        self.size = 0
        """The dynamic table's size: the sum of its entries' sizes (§4.1)."""
        self.table: list[Field] = list(STATIC_ENTRIES)
        """Index 0, the static table, then the dynamic table newest first (index 62 on)."""

    def dynamic_entries(self) -> Fields:
        """The dynamic table, newest first."""
        return cast(Fields, self.table[FIRST_DYNAMIC:])

    def decode(self, block: bytes) -> Fields:
        """The fields of a header block, in order, as (name, value) bytes.

        Raises HPACKDecodeError (the decoder is then unusable: end the
        connection) or HeaderListTooLarge (the block was processed, so the
        decoder stays usable).
        """
        end = len(block)
        pos = 0
        # Dynamic table size updates (§6.3), only at the start of a block (§4.2).
        while pos < end and block[pos] & 0xE0 == 0x20:
            size, pos = decode_integer(block, pos, 5)
            if size > self.max_table_size:
                raise HPACKDecodeError(
                    f"table size update {size} over the {self.max_table_size} allowed"
                )
            self.table_size = size
            self._evict(0)
        if self.table_size > self.max_table_size:
            raise HPACKDecodeError(
                f"no table size update to at most {self.max_table_size} at the start of the block"
            )
        table = self.table
        fields: list[Field] = []
        budget = self.max_header_list_size
        total = 0
        while pos < end:
            byte = block[pos]
            if byte & 0x80:  # indexed field (§6.1)
                index = byte & 0x7F
                pos += 1
                if index == 0x7F:
                    index, pos = decode_integer(block, pos - 1, 7)
                elif index == 0:
                    raise HPACKDecodeError("index 0 in an indexed field")
                if index >= len(table):
                    raise self._past_the_tables(index)
                entry = table[index]
            else:
                if byte & 0x40:  # literal with incremental indexing (§6.2.1)
                    index, pos = decode_integer(block, pos, 6)
                elif byte & 0x20:
                    raise HPACKDecodeError("a table size update after a field")
                else:  # without indexing (§6.2.2) or never indexed (§6.2.3)
                    index, pos = decode_integer(block, pos, 4)
                if index:
                    if index >= len(table):
                        raise self._past_the_tables(index)
                    name = table[index][0]
                else:
                    name, pos = decode_string(block, pos)
                value, pos = decode_string(block, pos)
                entry = (name, value)
                if byte & 0x40:
                    self._add(entry)
            total += len(entry[0]) + len(entry[1]) + ENTRY_OVERHEAD
            if total <= budget:
                fields.append(entry)
        if total > budget:
            raise HeaderListTooLarge(f"a header list of {total} bytes over the {budget} allowed")
        return cast(Fields, fields)

    def _past_the_tables(self, index: int) -> HPACKDecodeError:
        dynamic = len(self.table) - FIRST_DYNAMIC
        return HPACKDecodeError(
            f"index {index} is past the tables ({STATIC_COUNT} static + {dynamic} dynamic entries)"
        )

    def _evict(self, room: int) -> None:
        """Drop the oldest entries until `room` more bytes fit in the table (§4.4)."""
        table = self.table
        limit = self.table_size - room
        while self.size > limit and len(table) > FIRST_DYNAMIC:
            old = table.pop()
            self.size -= len(old[0]) + len(old[1]) + ENTRY_OVERHEAD

    def _add(self, entry: Field) -> None:
        """A new entry in the dynamic table (§4.4): one larger than the table empties it."""
        size = len(entry[0]) + len(entry[1]) + ENTRY_OVERHEAD
        if size > self.table_size:
            del self.table[FIRST_DYNAMIC:]
            self.size = 0
            return
        self._evict(size)
        self.table.insert(FIRST_DYNAMIC, entry)
        self.size += size
