"""Field grammars: Content-Type and parameters (RFC 2045 §5.1), RFC 2231 continuations,
Content-Disposition, Content-Language, unfolding, and RFC 2047 decoding for SEARCH."""

from __future__ import annotations

import base64

import pytest

from sansmail.mime import decoded_header
from sansmail.mime._fields import (
    content_type,
    decode_base64,
    decode_qp,
    disposition,
    languages,
    mime_token,
    unfold,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"text/plain", (b"text", b"plain", ())),
        (b"TEXT/Plain; Charset=UTF-8", (b"TEXT", b"Plain", ((b"Charset", b"UTF-8"),))),
        (b' text / html ; charset = "utf-8" ', (b"text", b"html", ((b"charset", b"utf-8"),))),
        (
            b"text/plain (comment); a=1 (more); b=2",
            (b"text", b"plain", ((b"a", b"1"), (b"b", b"2"))),
        ),
        (b'a/b; q="x\\"y\\\\z"', (b"a", b"b", ((b"q", b'x"y\\z'),))),
        (b'a/b; q="unterminated', (b"a", b"b", ((b"q", b"unterminated"),))),
        # lenient values: missing quotes around spaces, and ``name==?utf-8?...`` (Cyrus)
        (b"a/b; name=my file.pdf; x=1", (b"a", b"b", ((b"name", b"my file.pdf"), (b"x", b"1")))),
        (b"a/b; name==?utf-8?q?x?=", (b"a", b"b", ((b"name", b"=?utf-8?q?x?="),))),
        # broken parameters are skipped, the others still count
        (b"a/b; junk; =x; c=d;; e", (b"a", b"b", ((b"c", b"d"),))),
        (b"a/b; c=d x=y", (b"a", b"b", ((b"c", b"d x=y"),))),
        # RFC 2045 §5.2: a broken type is no type (the caller falls back to text/plain)
        (b"text", None),
        (b"text/", None),
        (b"/plain", None),
        (b"", None),
        (b"text/plain garbage", None),
        (b"te xt/plain", None),
        (b"t\xc3\xa9xt/plain", (b"t\xc3\xa9xt", b"plain", ())),  # 8-bit tolerated
    ],
)
def test_content_type(value: bytes, expected: object) -> None:
    assert content_type(value) == expected


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        # RFC 2231 §3: plain continuations join into the plain name
        (b'; n*0="ab"; n*1="cd"', ((b"n", b"abcd"),)),
        # out of order: sorted by number, placed where section 0 was
        (b"; x=1; u*1=b; u*0=a; y=2", ((b"x", b"1"), (b"u", b"ab"), (b"y", b"2"))),
        # extended sections stay encoded under "name*" (Dovecot, Cyrus)
        (b"; f*0*=utf-8''%E2%82; f*1*=%AC", ((b"f*", b"utf-8''%E2%82%AC"),)),
        # a plain section after an extended one is percent-encoded into it
        (b"; f*0*=utf-8'en'a; f*1=\" b%\"", ((b"f*", b"utf-8'en'a%20b%25"),)),
        # a plain section 0 with an extended later one gets the empty charset/language
        (b"; f*0=a; f*1*=%41", ((b"f*", b"''a%41"),)),
        # single extended parameter: as it is
        (b"; title*=us-ascii'en'This%20is", ((b"title*", b"us-ascii'en'This%20is"),)),
        # a gap or a duplicate leaves the sections alone
        (b"; f*0=a; f*2=c", ((b"f*0", b"a"), (b"f*2", b"c"))),
        (b"; f*0=a; f*0=b", ((b"f*0", b"a"), (b"f*0", b"b"))),
        # case of the name: sections match case-insensitively, the first spelling stays
        (b"; Name*0=a; NAME*1=b", ((b"Name", b"ab"),)),
        # absurd section numbers are not sections
        (b"; f*99999999999999999999=a", ((b"f*99999999999999999999", b"a"),)),
    ],
)
def test_rfc2231(params: bytes, expected: object) -> None:
    parsed = content_type(b"a/b" + params)
    assert parsed is not None
    assert parsed[2] == expected


def test_disposition() -> None:
    assert disposition(b"attachment") == (b"attachment", ())
    assert disposition(b' INLINE ; filename="a b.txt"') == (b"INLINE", ((b"filename", b"a b.txt"),))
    assert disposition(b"") is None
    assert disposition(b"attachment junk") is None


def test_languages() -> None:
    assert languages(b"en") == (b"en",)
    assert languages(b" en-GB ,fr, ,de") == (b"en-GB", b"fr", b"de")
    assert languages(b"") is None
    assert languages(b"(only a comment)") is None


def test_mime_token() -> None:
    assert mime_token(b" base64 ") == b"base64"
    assert mime_token(b"(c) Quoted-Printable (c)") == b"Quoted-Printable"
    assert mime_token(b"") is None
    assert mime_token(b"?invalid") is None
    assert mime_token(b"7bit 8bit") is None


def test_unfold() -> None:
    raw = b"Subject:  a\r\n b\r\n\tc \r\n"
    assert unfold(raw, 8, len(raw) - 2) == b"a b\tc "
    raw = b"Subject:\n x\n"
    assert unfold(raw, 8, len(raw) - 1) == b"x"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"plain text", "plain text"),
        (b"=?UTF-8?B?R3LDvMOfZQ==?=", "Grüße"),
        (b"=?iso-8859-1?q?caf=E9_au_lait?=", "café au lait"),
        # blanks between adjacent encoded words vanish (RFC 2047 §6.2), others stay
        (b"=?utf-8?q?a?= =?utf-8?q?b?=", "ab"),
        (b"=?utf-8?q?a?=\r\n =?utf-8?q?b?= c", "ab c"),
        (b"x =?utf-8?q?a?= y", "x a y"),
        # a character split across two words of one charset survives
        (
            b"=?utf-8?b?"
            + base64.b64encode("é".encode()[:1])
            + b"?= =?utf-8?b?"
            + base64.b64encode("é".encode()[1:])
            + b"?=",
            "é",
        ),
        # RFC 2231 §5 language suffix
        (b"=?us-ascii*en?q?hi?=", "hi"),
        # unknown charset, raw 8-bit, broken words: never an exception
        (b"=?x-unknown?q?abc?=", "abc"),
        ("Ünïcode".encode(), "Ünïcode"),
        (b"latin \xe9", "latin é"),
        (b"=?utf-8?b?####?=", ""),
        (b"=?utf-8?q?=ZZ?=", "=ZZ"),
        (b"=?utf-8?x?abc?=", "=?utf-8?x?abc?="),
    ],
)
def test_decoded_header(value: bytes, expected: str) -> None:
    assert decoded_header(value) == expected


def test_decode_base64_is_lenient() -> None:
    data = b"hello, world! " * 5
    encoded = base64.encodebytes(data)
    assert decode_base64(encoded) == data
    assert decode_base64(encoded.replace(b"\n", b"\r\n")) == data
    assert decode_base64(b"aGVsbG8") == b"hello"  # padding missing
    assert decode_base64(b"aGVs*bG8=\r\n") == b"hello"  # junk octet
    assert decode_base64(b"aGk=aGk=") == b"hihi"  # two padded blocks glued together
    assert decode_base64(b"aGVsbG8gA") == b"hello "  # a dangling sixth bit dropped
    assert decode_base64(b"") == b""


def test_decode_qp() -> None:
    assert decode_qp(b"caf=E9 =\r\nau lait=\r\n") == b"caf\xe9 au lait"
    assert decode_qp(b"trailing   \r\nblanks\t\r\n") == b"trailing\r\nblanks\r\n"
    assert decode_qp(b"bad =ZZ escape") == b"bad =ZZ escape"
