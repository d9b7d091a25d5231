"""Values already in wire form (`Encoded`, `encode_value`) and runs of FETCH responses made
of them (`FetchBatch`): the framing check against a plain reference, and byte-for-byte
agreement with the tree writer and with one `FetchResponse` per row."""

from __future__ import annotations

import datetime
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansmail import SERVER, LocalProtocolError
from sansmail.imap import (
    Atom,
    Connection,
    Encoded,
    Fetch,
    FetchBatch,
    FetchResponse,
    Literal,
    Login,
    ResponseCode,
    Search,
    Tagged,
    UntaggedStatus,
    Value,
    decode_tree,
    encode_datetime,
    encode_number,
    encode_tree,
    encode_value,
    format_datetime,
)
from sansmail.imap._writers import write_response, write_value

atoms = st.from_regex(r'[^\x00-\x20\x7f(){"]+', fullmatch=True).filter(str.isascii).map(Atom)
leaves = st.one_of(
    st.none(),
    st.integers(min_value=0, max_value=2**63 - 1),
    st.binary(max_size=40),
    st.text(max_size=20),
    atoms,
    st.binary(max_size=20).map(Literal),
)
trees = st.recursive(
    leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.tuples(inner, inner)),
    max_leaves=25,
)


def framed(data: bytes) -> bool:
    """The reference: read `data` as a server writes values, one octet at a time."""
    pos = 0
    line = 0  # where the text outside the last literal starts
    while pos < len(data):
        octet = data[pos]
        if octet in (0x00, 0x0D, 0x0A) or octet >= 0x80:
            # Only the CR of a literal head "{n}" CRLF (or "~{n}" CRLF) may be here, the
            # head wholly outside the literal before it.
            head = re.search(rb"~?\{([0-9]+)\}\Z", data[line:pos])
            if head is None or data[pos : pos + 2] != b"\r\n" or len(head[1]) > 19:
                return False
            pos += 2 + int(head[1])
            if pos > len(data):
                return False
            line = pos
            continue
        pos += 1
    return True


# -- Encoded -------------------------------------------------------------------------------


@settings(deadline=None, max_examples=300)
@given(trees)
def test_encode_value_is_the_writers_portable_output(tree: Value) -> None:
    encoded = encode_value(tree)
    out = bytearray()
    write_value(out, tree, utf8=False)
    assert type(encoded) is Encoded
    assert encoded == bytes(out)
    assert framed(encoded)
    # Spliced into a response it writes as the tree would, in either kind of session.
    for utf8 in (False, True):
        response = FetchResponse(number=1, items=(("X", encoded),))
        assert write_response(response, utf8=utf8) == b"* 1 FETCH (X " + encoded + b")\r\n"


@settings(deadline=None, max_examples=500)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=6),
            st.sampled_from([b"\r\n", b"\r", b"\n", b"\0", b"\xc3\xa9", b"{", b"}", b"~"]),
            st.integers(0, 12).map(lambda n: b"{%d}\r\n" % n),
            st.integers(0, 12).map(lambda n: b"~{%d}\r\n" % n),
        ),
        max_size=10,
    ).map(b"".join)
)
def test_encoded_accepts_exactly_what_is_framed(data: bytes) -> None:
    if framed(data):
        assert Encoded(data) == data
    else:
        with pytest.raises(ValueError, match="not framed"):
            Encoded(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b'("a" NIL 12 ("b"))',
        b"{3}\r\nabc",
        b"(NIL {2}\r\n\r\n NIL)",
        b"{4}\r\n\xc3\xa9\0x",
        b"~{1}\r\n\0",
        b'"a{2}" {2}\r\nxy',
    ],
)
def test_framed_fragments(data: bytes) -> None:
    assert Encoded(data) == data
    assert repr(Encoded(data)).startswith("Encoded(b")


@pytest.mark.parametrize(
    "data",
    [
        b"a\r\nb",
        b"a\nb",
        b"a\rb",
        b"a\0b",
        b'"caf\xc3\xa9"',
        b"{3}\r\nab",
        b"{3}\r\nabcd\r\n",
        b"{x}\r\nabc",
        b"{3} \r\nabc",
        b"{3}\r\rabc",
        b"{99999999999999999999}\r\n",
    ],
)
def test_unframed_octets_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="not framed"):
        Encoded(data)


def test_encoded_takes_bytes_only_and_round_trips_through_the_tree_cache() -> None:
    with pytest.raises(TypeError):
        Encoded("text")  # type: ignore[arg-type]
    tree: Value = [Encoded(b'("x")'), b"y"]
    assert decode_tree(encode_tree(tree)) == tree
    assert type(decode_tree(encode_tree(tree))[0]) is Encoded  # type: ignore[index]
    with pytest.raises(ValueError, match="tree"):
        decode_tree(b'[{"e":"a\\r\\nb"}]')


@given(
    st.datetimes(
        min_value=datetime.datetime(1000, 1, 1), max_value=datetime.datetime(9999, 12, 31)
    ),
    st.integers(-23 * 60 - 59, 23 * 60 + 59),
)
def test_dates_as_format_datetime_writes_them(moment: datetime.datetime, minutes: int) -> None:
    aware = moment.replace(tzinfo=datetime.timezone(datetime.timedelta(minutes=minutes)))
    encoded = encode_datetime(aware)
    assert type(encoded) is Encoded
    assert encoded == b'"' + format_datetime(aware).encode("ascii") + b'"'
    assert Encoded(encoded) == encoded


def test_a_date_needs_a_zone() -> None:
    with pytest.raises(ValueError, match="zone"):
        encode_datetime(datetime.datetime(2025, 6, 1))


def test_numbers() -> None:
    assert encode_number(0) == b"0"
    assert type(encode_number(2**63 - 1)) is Encoded
    for bad in (-1, 2**63, True, 1.0):
        with pytest.raises(LocalProtocolError):
            encode_number(bad)  # type: ignore[arg-type]


def test_an_encoded_value_in_a_response_code_is_held_to_the_code_rules() -> None:
    ok = Tagged(
        tag="a", status="OK", code=ResponseCode(name="X", data=(Encoded(b"(1 2)"),)), text="t"
    )
    assert write_response(ok, utf8=False) == b"a OK [X (1 2)] t\r\n"
    bad = Tagged(
        tag="a", status="OK", code=ResponseCode(name="X", data=(Encoded(b"{1}\r\nx"),)), text="t"
    )
    with pytest.raises(LocalProtocolError):
        write_response(bad, utf8=False)


# -- FetchBatch ----------------------------------------------------------------------------

_names = st.lists(
    st.sampled_from(["UID", "FLAGS", "ENVELOPE", "RFC822.SIZE", "BODY[]", "BODY[HEADER]<0>"]),
    min_size=1,
    max_size=4,
    unique=True,
)


@settings(deadline=None, max_examples=200)
@given(data=st.data(), names=_names, count=st.integers(0, 6))
def test_a_batch_writes_what_a_response_per_row_would(
    data: st.DataObject, names: list[str], count: int
) -> None:
    kinds = [data.draw(st.sampled_from(["int", "tree"])) for _ in names]
    rows = []
    for n in range(count):
        row: list[object] = [data.draw(st.integers(1, 2**32 - 1)) if n else 1]
        for kind in kinds:
            if kind == "int":
                row.append(data.draw(st.integers(0, 2**63 - 1)))
            else:
                row.append(encode_value(data.draw(trees)))
        rows.append(tuple(row))
    batch = FetchBatch(names=tuple(names), rows=tuple(rows))
    expected = b"".join(
        write_response(
            FetchResponse(number=row[0], items=tuple(zip(names, row[1:], strict=True))), utf8=False
        )
        for row in rows
    )
    for utf8 in (False, True):
        assert write_response(batch, utf8=utf8) == expected


@pytest.mark.parametrize(
    ("names", "rows", "error"),
    [
        ((), (), ValueError),
        (("flags",), (), ValueError),
        (("FLAGS",), ((1,),), ValueError),
        (("FLAGS",), ((0, Encoded(b"()")),), ValueError),
        (("FLAGS",), ((True, Encoded(b"()")),), TypeError),
        (("FLAGS",), ((1, b"()"),), TypeError),  # plain bytes would be quoted: not here
        (("FLAGS",), ((1, "()"),), TypeError),
        (("UID",), ((1, 5), (2, Encoded(b"6"))), TypeError),  # kinds differ between rows
        (("UID",), ((1, Encoded(b"6")), (2, 5)), TypeError),
        (("UID",), ((1, -5),), TypeError),
        (("UID",), ((1, 2**63),), TypeError),
        (("UID",), [(1, 5)], TypeError),
        (("UID",), ([1, 5],), ValueError),
    ],
)
def test_a_batch_is_checked_when_it_is_made(
    names: tuple[str, ...], rows: object, error: type[Exception]
) -> None:
    with pytest.raises(error):
        FetchBatch(names=names, rows=rows)  # type: ignore[arg-type]


def test_the_core_sends_a_batch_while_a_fetch_or_a_search_is_answered() -> None:
    conn = Connection(SERVER)
    conn.send(UntaggedStatus(status="OK", text="ready"))
    conn.receive_data(b"a LOGIN u p\r\nb SELECT INBOX\r\nc FETCH 1:2 (UID FLAGS)\r\n")
    assert isinstance(conn.next_event(), Login)
    conn.send(Tagged(tag="a", status="OK", text="in"))
    conn.next_event()
    conn.send(Tagged(tag="b", status="OK", text="selected"))
    assert isinstance(conn.next_event(), Fetch)
    batch = FetchBatch(
        names=("UID", "FLAGS"),
        rows=((1, 4, Encoded(b"(\\Seen)")), (2, 9, Encoded(b"()"))),
    )
    assert conn.send(batch) == (
        b"* 1 FETCH (UID 4 FLAGS (\\Seen))\r\n* 2 FETCH (UID 9 FLAGS ())\r\n"
    )
    assert conn.send(Tagged(tag="c", status="OK", text="done")) == b"c OK done\r\n"
    conn.receive_data(b"d SEARCH ALL\r\n")
    assert isinstance(conn.next_event(), Search)
    assert conn.send(FetchBatch(names=("UID",), rows=())) == b""
