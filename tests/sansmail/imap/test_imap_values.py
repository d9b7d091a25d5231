"""Value trees and their cache encoding, mailbox name encodings, and sequence sets."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansmail.imap import (
    MAX_NUMBER,
    Atom,
    Literal,
    MailboxNameError,
    SequenceSet,
    Value,
    decode_mailbox,
    decode_tree,
    encode_mailbox,
    encode_tree,
)

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


def _types(value: Value) -> object:
    if isinstance(value, list | tuple):
        return (type(value), [_types(v) for v in value])
    return type(value)


@settings(deadline=None, max_examples=300)
@given(trees)
def test_tree_encoding_round_trips_exactly(tree: Value) -> None:
    encoded = encode_tree(tree)
    assert isinstance(encoded, bytes)
    decoded = decode_tree(encoded)
    assert decoded == tree
    assert _types(decoded) == _types(tree)  # Atom vs str, Literal vs bytes, list vs tuple


def test_tree_encoding_examples() -> None:
    envelope: Value = [
        b"Wed, 17 Jul 1996 02:23:25 -0700 (PDT)",
        b"IMAP4rev1 WG mtg summary and minutes",
        [[b"Terry Gray", None, b"gray", b"cac.washington.edu"]],
        None,
    ]
    assert decode_tree(encode_tree(envelope)) == envelope
    assert encode_tree(None) == b"null"
    assert decode_tree(encode_tree((Atom("\\Seen"), "é", b"\xff"))) == (
        Atom("\\Seen"),
        "é",
        b"\xff",
    )


@pytest.mark.parametrize(
    "junk",
    [b"", b"{", b'{"x": 1}', b'{"b": "\\u0100"}', b"-1", b"true", b"1.5", b'{"a": "a b"}', b"\xff"],
)
def test_decode_tree_refuses_what_it_did_not_write(junk: bytes) -> None:
    with pytest.raises(ValueError, match="tree"):
        decode_tree(junk)


def test_encode_tree_refuses_non_values() -> None:
    for bad in [True, -1, 1.5, {"a": 1}, object()]:
        with pytest.raises((TypeError, ValueError)):
            encode_tree(bad)  # type: ignore[arg-type]


def test_atoms_refuse_framing_characters() -> None:
    for bad in ["", "a b", "a(b", "x)", "{5}", 'q"', "a\r\n", "é"]:
        with pytest.raises(ValueError, match="atom"):
            Atom(bad)
    assert Atom("\\Seen") == "\\Seen"
    assert repr(Atom("x")) == "Atom('x')"
    assert repr(Literal(b"x")) == "Literal(b'x')"


# --- mailbox names -------------------------------------------------------------------------


def test_modified_utf7_rfc3501_example() -> None:
    # RFC 3501 §5.1.3.
    assert (
        encode_mailbox("~peter/mail/台北/日本語", utf8=False) == b"~peter/mail/&U,BTFw-/&ZeVnLIqe-"
    )
    assert (
        decode_mailbox(b"~peter/mail/&U,BTFw-/&ZeVnLIqe-", utf8=False) == "~peter/mail/台北/日本語"
    )
    assert encode_mailbox("&", utf8=False) == b"&-"
    assert encode_mailbox("😀", utf8=False) == b"&2D3eAA-"  # a surrogate pair
    assert decode_mailbox(b"&2D3eAA-", utf8=False) == "😀"


@pytest.mark.parametrize(
    "bad",
    [
        b"&",
        b"a&b",
        b"&Jjo",
        b"&AGE-",  # "a" must be written directly
        b"&U,BTFw-&ZeVnLIqe-",  # two adjacent runs
        b"&U,B-",  # padding bits set
        b"&2D3-",  # a lone surrogate
        b"&*-",
        "Entwürfe".encode(),
    ],
)
def test_modified_utf7_refuses_non_canonical_forms(bad: bytes) -> None:
    with pytest.raises(MailboxNameError):
        decode_mailbox(bad, utf8=False)


@settings(deadline=None, max_examples=300)
@given(st.text(st.characters(blacklist_categories=["Cs"]), max_size=30))
def test_mailbox_names_round_trip_in_both_encodings(name: str) -> None:
    for utf8 in (False, True):
        encoded = encode_mailbox(name, utf8=utf8)
        assert decode_mailbox(encoded, utf8=utf8) == name
    assert encode_mailbox(name, utf8=False).isascii()


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=30))
def test_mailbox_decoding_is_canonical(data: bytes) -> None:
    # Whatever is accepted encodes back to exactly the same octets.
    try:
        name = decode_mailbox(data, utf8=False)
    except MailboxNameError:
        return
    assert encode_mailbox(name, utf8=False) == data


# --- sequence sets -------------------------------------------------------------------------


def test_sequence_set_parse_and_text() -> None:
    s = SequenceSet.parse("1:4,7,9:*,*,3:1")
    assert s.ranges == ((1, 4), (7, 7), (9, None), (None, None), (3, 1))
    assert str(s) == "1:4,7,9:*,*,3:1"
    assert SequenceSet.parse(b"$") == SequenceSet(saved=True)
    assert str(SequenceSet(saved=True)) == "$"
    assert str(SequenceSet.of(5, 1, 2, 3, 9, 10)) == "1:3,5,9:10"
    for bad in ["", "0", "1:0", "1,,2", "4294967296", "a", "1:2:3", "$,1", "-1", " 1"]:
        with pytest.raises(ValueError, match="sequence"):
            SequenceSet.parse(bad)
    assert SequenceSet.parse(str(MAX_NUMBER)).ranges == ((MAX_NUMBER, MAX_NUMBER),)


def test_sequence_set_resolve() -> None:
    s = SequenceSet.parse("9:*,1:4,3:1,7")
    assert s.resolve(12) == (range(1, 5), range(7, 8), range(9, 13))
    assert SequenceSet.parse("5:*").resolve(3) == (range(3, 6),)  # "*" is 3: 3:5
    assert SequenceSet.parse("*").resolve(0) == ()
    assert SequenceSet.parse("1:*").resolve(0) == ()
    assert SequenceSet.parse("2,3").resolve(0) == (range(2, 4),)
    assert SequenceSet.parse("1:3").contains(2, 10)
    assert not SequenceSet.parse("1:3").contains(4, 10)
    assert SequenceSet.parse("*").contains(10, 10)
    with pytest.raises(ValueError, match="application"):
        SequenceSet(saved=True).resolve(3)


def test_sequence_set_validation() -> None:
    for bad in [
        {"ranges": ()},
        {"ranges": ((0, 1),)},
        {"ranges": ((1,),)},
        {"ranges": ((1, MAX_NUMBER + 1),)},
        {"ranges": ((1, 2),), "saved": True},
        {"ranges": [(1, 2)]},
    ]:
        with pytest.raises((ValueError, TypeError)):
            SequenceSet(**bad)  # type: ignore[arg-type]


bounds = st.one_of(st.none(), st.integers(min_value=1, max_value=MAX_NUMBER))
sets = st.lists(st.tuples(bounds, bounds), min_size=1, max_size=6).map(
    lambda pairs: SequenceSet(ranges=tuple(pairs))
)


@settings(deadline=None, max_examples=300)
@given(sets)
def test_sequence_set_text_round_trips(s: SequenceSet) -> None:
    assert SequenceSet.parse(str(s)) == s


@settings(deadline=None, max_examples=200)
@given(
    st.lists(
        st.tuples(st.integers(1, 60), st.one_of(st.none(), st.integers(1, 60))),
        min_size=1,
        max_size=6,
    ),
    st.integers(0, 50),
)
def test_resolve_matches_a_naive_model(pairs: list[tuple[int, int | None]], largest: int) -> None:
    s = SequenceSet(ranges=tuple(pairs))
    expected: set[int] = set()
    for start, end in pairs:
        if end is None and largest == 0:
            continue
        high = largest if end is None else end
        expected |= set(range(min(start, high), max(start, high) + 1))
    resolved = s.resolve(largest)
    got = [n for span in resolved for n in span]
    assert got == sorted(expected)
    # Merged: no two ranges touch.
    for a, b in itertools.pairwise(resolved):
        assert a.stop < b.start
