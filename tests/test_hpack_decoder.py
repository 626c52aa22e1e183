"""The request-head HPACK decoder (edgeproxy/proxy/h2hpack.py `Decoder`): RFC 7541's
examples, a round trip against the `hpack` library's encoder, and malformed blocks."""

from __future__ import annotations

import re
import tracemalloc

import hpack
import pytest
from hpack import NeverIndexedHeaderTuple
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeproxy.proxy.h2hpack import (
    Decoder,
    HeaderListTooLarge,
    HPACKDecodeError,
    huffman_decode,
    integer,
)

Fields = list[tuple[bytes, bytes]]
LIMIT = 65536
HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
DATE1 = b"Mon, 21 Oct 2013 20:13:21 GMT"
DATE2 = b"Mon, 21 Oct 2013 20:13:22 GMT"
COOKIE = b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
LOCATION = b"https://www.example.com"


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", "").replace("\n", ""))


@pytest.mark.parametrize(
    ("block", "field", "table"),
    [
        # C.2.1 literal with indexing, C.2.2 without indexing, C.2.3 never indexed, C.2.4 indexed
        (
            "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
            (b"custom-key", b"custom-header"),
            [(b"custom-key", b"custom-header")],
        ),
        ("040c 2f73 616d 706c 652f 7061 7468", (b":path", b"/sample/path"), []),
        ("1008 7061 7373 776f 7264 0673 6563 7265 74", (b"password", b"secret"), []),
        ("82", (b":method", b"GET"), []),
    ],
)
def test_each_field_representation_of_rfc_7541_c_2_decodes_to_its_field(
    block: str, field: tuple[bytes, bytes], table: Fields
) -> None:
    dec = Decoder(LIMIT)
    assert dec.decode(h(block)) == [field]
    assert dec.dynamic_entries() == table


REQUESTS: list[tuple[Fields, Fields, int]] = [
    (
        [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":path", b"/"),
            (b":authority", b"www.example.com"),
        ],
        [(b":authority", b"www.example.com")],
        57,
    ),
    (
        [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":path", b"/"),
            (b":authority", b"www.example.com"),
            (b"cache-control", b"no-cache"),
        ],
        [(b"cache-control", b"no-cache"), (b":authority", b"www.example.com")],
        110,
    ),
    (
        [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":path", b"/index.html"),
            (b":authority", b"www.example.com"),
            (b"custom-key", b"custom-value"),
        ],
        [
            (b"custom-key", b"custom-value"),
            (b"cache-control", b"no-cache"),
            (b":authority", b"www.example.com"),
        ],
        164,
    ),
]
RESPONSES: list[tuple[Fields, Fields, int]] = [
    (
        [
            (b":status", b"302"),
            (b"cache-control", b"private"),
            (b"date", DATE1),
            (b"location", LOCATION),
        ],
        [
            (b"location", LOCATION),
            (b"date", DATE1),
            (b"cache-control", b"private"),
            (b":status", b"302"),
        ],
        222,
    ),
    (
        [
            (b":status", b"307"),
            (b"cache-control", b"private"),
            (b"date", DATE1),
            (b"location", LOCATION),
        ],
        [
            (b":status", b"307"),
            (b"location", LOCATION),
            (b"date", DATE1),
            (b"cache-control", b"private"),
        ],
        222,
    ),
    (
        [
            (b":status", b"200"),
            (b"cache-control", b"private"),
            (b"date", DATE2),
            (b"location", LOCATION),
            (b"content-encoding", b"gzip"),
            (b"set-cookie", COOKIE),
        ],
        [(b"set-cookie", COOKIE), (b"content-encoding", b"gzip"), (b"date", DATE2)],
        215,
    ),
]
RFC_SEQUENCES = {
    "C.3 requests": (
        4096,
        REQUESTS,
        [
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ],
    ),
    "C.4 requests with Huffman": (
        4096,
        REQUESTS,
        [
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ],
    ),
    "C.5 responses with eviction": (
        256,
        RESPONSES,
        [
            """4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
            2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
            6c65 2e63 6f6d""",
            "4803 3330 37c1 c0bf",
            """88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
            54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
            5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
            3d31""",
        ],
    ),
    "C.6 responses with Huffman and eviction": (
        256,
        RESPONSES,
        [
            """4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
            2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3""",
            "4883 640e ffc1 c0bf",
            """88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
            77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
            9587 3160 65c0 03ed 4ee5 b106 3d50 07""",
        ],
    ),
}


@pytest.mark.parametrize("name", RFC_SEQUENCES)
def test_the_example_blocks_of_rfc_7541_appendix_c_decode_to_their_fields_and_tables(
    name: str,
) -> None:
    table_size, expected, blocks = RFC_SEQUENCES[name]
    dec = Decoder(LIMIT, table_size)
    for block, (fields, table, size) in zip(blocks, expected, strict=True):
        assert dec.decode(h(block)) == fields
        assert dec.dynamic_entries() == table
        assert dec.size == size


def test_a_repeated_head_of_indexed_fields_returns_the_tables_own_tuples() -> None:
    dec = Decoder(LIMIT)
    dec.decode(h(RFC_SEQUENCES["C.3 requests"][2][0]))
    fields = dec.decode(h("8286 84be"))
    assert fields[0] is Decoder(LIMIT).decode(h("82"))[0]  # the static table's, not a copy
    assert fields[3] is dec.dynamic_entries()[0]


NAMES = st.one_of(
    st.sampled_from(
        [n for n, _ in HeaderTable.STATIC_TABLE] + [b"x-request-id", b"x-forwarded-for"]
    ),
    st.binary(min_size=1, max_size=20),
)
FIELD = st.tuples(NAMES, st.binary(max_size=120), st.booleans())
BLOCK = st.tuples(
    st.lists(FIELD, max_size=12),
    st.one_of(st.none(), st.integers(min_value=0, max_value=4096)),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(BLOCK, min_size=1, max_size=8))
def test_blocks_of_the_hpack_librarys_encoder_decode_to_the_fields_it_was_given(
    blocks: list[tuple[list[tuple[bytes, bytes, bool]], int | None, bool]],
) -> None:
    enc, dec = hpack.Encoder(), Decoder(1 << 30)
    for fields, table_size, huffman in blocks:
        if table_size is not None:
            enc.header_table_size = table_size
        headers = [NeverIndexedHeaderTuple(n, v) if never else (n, v) for n, v, never in fields]
        assert dec.decode(enc.encode(headers, huffman=huffman)) == [(n, v) for n, v, _ in fields]
        assert dec.dynamic_entries() == list(enc.header_table.dynamic_entries)
        assert dec.size == enc.header_table._current_size


@given(st.binary(max_size=64))
def test_any_bytes_huffman_coded_by_the_library_decode_to_themselves(data: bytes) -> None:
    coded = HUFFMAN.encode(data)
    assert huffman_decode(b"x" + coded + b"y", 1, len(coded) + 1) == data


def literal(name: bytes, value: bytes, first: int = 0x40) -> bytes:
    """A literal field with a new name (the representation given by `first`), raw strings."""
    return bytes((first,)) + integer(len(name), 7, 0) + name + integer(len(value), 7, 0) + value


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("80", "index 0"),
        ("bf", "index 63 is past the tables (61 static + 0 dynamic entries)"),
        ("ff 80", "the block ends inside an integer"),
        ("ff ff ff ff ff ff 01", "more than 5 continuation bytes"),
        ("ff ff ff ff ff 7f", "over the 4294967296 allowed"),
        ("7f 80", "the block ends inside an integer"),
        ("44", "the block ends where a string was due"),
        ("44 05 61 62", "a string of 5 bytes with 2 left in the block"),
        ("40 01 61", "the block ends where a string was due"),
        # "a" is 00011 (5 bits): 3 bits of padding that are not 1s
        ("44 81 18", "padding that is not the EOS code's 1 bits"),
        # "a" then 11 1-bits of padding
        ("44 82 1f ff", "padding longer than 7 bits"),
        ("44 81 ff", "padding longer than 7 bits"),
        # the EOS symbol (30 1-bits) then 2 bits of padding
        ("44 84 ff ff ff ff", "the EOS symbol inside a Huffman-coded string"),
        # "a" then the EOS symbol
        ("44 85 1f ff ff ff ff", "the EOS symbol inside a Huffman-coded string"),
        ("3f e2 1f", "table size update 4097 over the 4096 allowed"),
        ("82 20", "a table size update after a field"),
    ],
)
def test_a_malformed_block_is_a_decoding_error_that_says_what_was_wrong(
    block: str, message: str
) -> None:
    with pytest.raises(HPACKDecodeError, match=re.escape(message)) as caught:
        Decoder(LIMIT).decode(h(block))
    assert not isinstance(caught.value, HeaderListTooLarge)


def test_an_index_past_the_dynamic_table_is_an_error_after_eviction() -> None:
    dec = Decoder(LIMIT, 256)
    for block in RFC_SEQUENCES["C.5 responses with eviction"][2]:
        dec.decode(h(block))
    assert dec.decode(h("c0")) == [(b"date", DATE2)]  # 62, 63, 64 are left
    with pytest.raises(HPACKDecodeError, match="index 65 is past the tables"):
        dec.decode(h("c1"))


def test_table_size_updates_at_the_start_of_a_block_evict_entries_and_an_update_to_zero_empties_the_table() -> (
    None
):
    dec = Decoder(LIMIT)
    dec.decode(literal(b"a", b"1") + literal(b"b", b"2"))
    assert dec.size == 68
    assert dec.decode(integer(40, 5, 0x20) + h("be")) == [(b"b", b"2")]
    assert dec.dynamic_entries() == [(b"b", b"2")]
    assert dec.decode(integer(0, 5, 0x20) + integer(4096, 5, 0x20)) == []
    assert dec.dynamic_entries() == [] and dec.size == 0


def test_a_peer_that_ignores_a_lowered_table_size_is_a_decoding_error() -> None:
    dec = Decoder(LIMIT)
    dec.decode(literal(b"a", b"1"))
    dec.max_table_size = 1024  # our SETTINGS_HEADER_TABLE_SIZE, acknowledged
    with pytest.raises(HPACKDecodeError, match="no table size update to at most 1024"):
        dec.decode(h("82"))
    dec = Decoder(LIMIT)
    dec.max_table_size = 1024
    assert dec.decode(integer(1024, 5, 0x20) + h("82")) == [(b":method", b"GET")]


def test_an_entry_larger_than_the_table_empties_it() -> None:
    dec = Decoder(LIMIT, 256)
    dec.decode(literal(b"a", b"1"))
    assert dec.decode(literal(b"big", b"v" * 300)) == [(b"big", b"v" * 300)]
    assert dec.dynamic_entries() == [] and dec.size == 0


def test_a_header_list_over_the_limit_is_its_own_error_and_leaves_the_table_in_step() -> None:
    dec = Decoder(100)
    # 2 fields of 42 + 38 bytes fit; the third (36) goes over 100 and is still added to the table.
    block = h("82 84") + literal(b"x", b"yyy")
    with pytest.raises(HeaderListTooLarge, match="a header list of 116 bytes over the 100 allowed"):
        dec.decode(block)
    assert dec.decode(h("be")) == [(b"x", b"yyy")]


def test_a_block_referencing_a_large_entry_many_times_is_refused_without_building_the_list() -> (
    None
):
    dec = Decoder(LIMIT)
    dec.decode(literal(b"x", b"v" * 4000))
    bomb = h("be") * 10_000  # 40 MB of fields in 10 kB
    tracemalloc.start()
    try:
        with pytest.raises(HeaderListTooLarge, match="of 40330000 bytes over the 65536 allowed"):
            dec.decode(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000  # 10,000 references would be 80 kB of list
    assert dec.decode(h("be")) == [(b"x", b"v" * 4000)]


def test_the_header_list_limit_can_change_between_blocks() -> None:
    dec = Decoder(LIMIT)
    dec.max_header_list_size = 50
    with pytest.raises(HeaderListTooLarge):
        dec.decode(h("82 84"))
    assert dec.decode(h("82")) == [(b":method", b"GET")]
