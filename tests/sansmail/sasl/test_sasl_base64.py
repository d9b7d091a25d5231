"""Strict base64: the canonical RFC 4648 encoding and nothing else."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansmail.sasl import SASLError, decode_base64_strict, encode_base64
from sansmail.sasl._b64 import decode_base64_text

ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

# RFC 4648 §10 test vectors.
VECTORS = [
    (b"", b""),
    (b"f", b"Zg=="),
    (b"fo", b"Zm8="),
    (b"foo", b"Zm9v"),
    (b"foob", b"Zm9vYg=="),
    (b"fooba", b"Zm9vYmE="),
    (b"foobar", b"Zm9vYmFy"),
]


@pytest.mark.parametrize(("raw", "encoded"), VECTORS)
def test_rfc4648_vectors(raw: bytes, encoded: bytes) -> None:
    assert encode_base64(raw) == encoded
    assert decode_base64_strict(encoded) == raw


@pytest.mark.parametrize(
    "bad",
    [
        b"Zg",  # padding missing
        b"Zg=",  # padding short
        b"Zm9vY",  # not a whole quantum
        b"Zh==",  # padding bits set (canonical is Zg==)
        b"Zm9=",  # padding bits set (canonical is Zm8=)
        b"Zm9v\r\n",  # line break
        b" Zm9v",
        b"Zm9v YmFy",
        b"Zm9v\tYmFy",
        b"Zm-v",  # URL-safe alphabet
        b"Zm_v",
        b"Zg==Zg==",  # padding in the middle
        b"=",
        b"====",
        b"Zg===",
        b"Z===",
        b"Zm9v\x00",
        "Zm9vYmFy\u00e9".encode(),
        b"*",  # the protocols' cancel token is theirs to handle
    ],
)
def test_rejects_non_canonical_input(bad: bytes) -> None:
    with pytest.raises(SASLError):
        decode_base64_strict(bad)


def test_text_variant_rejects_non_ascii() -> None:
    assert decode_base64_text("Zm9v") == b"foo"
    with pytest.raises(SASLError):
        decode_base64_text("Zm9\u00e9")


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=200))
def test_round_trip(raw: bytes) -> None:
    encoded = encode_base64(raw)
    assert encoded == base64.b64encode(raw)
    assert decode_base64_strict(encoded) == raw


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=60))
def test_anything_accepted_is_the_canonical_encoding(data: bytes) -> None:
    # Uniqueness: if a string decodes, it is exactly the encoding of what it decodes to.
    try:
        decoded = decode_base64_strict(data)
    except SASLError:
        return
    assert encode_base64(decoded) == data


@settings(deadline=None, max_examples=300)
@given(st.lists(st.sampled_from([*ALPHABET, ord("=")]), max_size=40).map(bytes))
def test_alphabet_soup_only_decodes_when_canonical(data: bytes) -> None:
    try:
        decoded = decode_base64_strict(data)
    except SASLError:
        return
    assert encode_base64(decoded) == data


@settings(deadline=None, max_examples=300)
@given(
    raw=st.binary(min_size=1, max_size=60),
    junk=st.sampled_from([b" ", b"\r\n", b"\n", b"\t", b"-", b"_", b"!", b"\x00", b"\xff", b"."]),
    where=st.integers(min_value=0),
)
def test_any_foreign_byte_is_rejected(raw: bytes, junk: bytes, where: int) -> None:
    encoded = encode_base64(raw)
    at = where % (len(encoded) + 1)
    with pytest.raises(SASLError):
        decode_base64_strict(encoded[:at] + junk + encoded[at:])


@settings(deadline=None, max_examples=300)
@given(raw=st.binary(min_size=1, max_size=60), bits=st.integers(min_value=1, max_value=15))
def test_set_padding_bits_are_rejected(raw: bytes, bits: int) -> None:
    encoded = encode_base64(raw)
    padding = encoded.count(b"=")
    if not padding:
        return  # no unused bits to set
    # The last data character carries 2 (one "=") or 4 (two "=") unused low bits.
    unused = 2 if padding == 1 else 4
    last = len(encoded) - padding - 1
    value = ALPHABET.index(encoded[last]) | (bits % (1 << unused) or 1)
    tweaked = encoded[:last] + ALPHABET[value : value + 1] + encoded[last + 1 :]
    assert tweaked != encoded
    with pytest.raises(SASLError):
        decode_base64_strict(tweaked)


@settings(deadline=None, max_examples=200)
@given(raw=st.binary(min_size=1, max_size=60))
def test_stripped_padding_is_rejected(raw: bytes) -> None:
    encoded = encode_base64(raw)
    if encoded.endswith(b"="):
        with pytest.raises(SASLError):
            decode_base64_strict(encoded.rstrip(b"="))
