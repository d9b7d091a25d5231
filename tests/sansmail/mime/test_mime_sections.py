"""FETCH content: BODY[section] (RFC 9051 §6.4.5), partial, BINARY (RFC 3516), and the
header access SEARCH uses."""

from __future__ import annotations

import base64

import pytest
from mime_helpers import corpus, crlf

from sansmail.mime import (
    SectionSpec,
    UnknownEncoding,
    binary,
    binary_size,
    find_part,
    header_fields,
    parse,
    partial,
    section,
)

# RFC 9051 §6.4.5's example shape: a multipart/mixed whose part 3 is message/rfc822 with a
# multipart inside it, and whose part 4 is a multipart/mixed holding an image and another
# message/rfc822 with a multipart/alternative inside.
NESTED = crlf(
    "From: a@example.com\n"
    "Subject: sections\n"
    "MIME-Version: 1.0\n"
    "Content-Type: multipart/mixed; boundary=top\n"
    "\n"
    "--top\n"
    "Content-Type: text/plain\n"
    "\n"
    "part 1\n"
    "--top\n"
    "Content-Type: application/octet-stream\n"
    "Content-Transfer-Encoding: base64\n"
    "\n"
    "AAEC/w==\n"
    "--top\n"
    "Content-Type: message/rfc822\n"
    "\n"
    "Subject: three\n"
    "X-Other: 3\n"
    " folded\n"
    "Content-Type: multipart/alternative; boundary=three\n"
    "\n"
    "--three\n"
    "Content-Type: text/plain\n"
    "\n"
    "3.1 text\n"
    "--three\n"
    "Content-Type: text/html\n"
    "Content-Transfer-Encoding: quoted-printable\n"
    "\n"
    "<p>3.2 caf=C3=A9</p>\n"
    "--three--\n"
    "--top\n"
    "Content-Type: multipart/mixed; boundary=four\n"
    "\n"
    "--four\n"
    "Content-Type: image/gif\n"
    "Content-Transfer-Encoding: x-uuencode\n"
    "\n"
    "begin 644 x\n"
    "--four\n"
    "Content-Type: message/rfc822\n"
    "\n"
    "Subject: four two\n"
    "\n"
    "4.2 body, not multipart\n"
    "--four--\n"
    "--top--\n"
)
ROOT = parse(NESTED)


def _section(parts: tuple[int, ...] = (), text: str | None = None, *fields: str) -> bytes | None:
    return section(NESTED, ROOT, SectionSpec(parts=parts, text=text, fields=fields))


def test_whole_message_header_and_text() -> None:
    assert _section() == NESTED
    header = _section(text="HEADER")
    assert header is not None
    assert header.startswith(b"From: a@example.com\r\n")
    assert header.endswith(b"boundary=top\r\n\r\n")
    text = _section(text="TEXT")
    assert text is not None
    assert header + text == NESTED


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ((1,), b"part 1"),
        ((2,), b"AAEC/w=="),
        ((3, 1), b"3.1 text"),
        ((3, 2), b"<p>3.2 caf=C3=A9</p>"),
        ((4, 1), b"begin 644 x"),
        ((4, 2, 1), b"4.2 body, not multipart"),  # part 1 of a single-part message: its body
        ((1, 1), b"part 1"),  # a non-multipart part has part 1, itself (as Dovecot does)
    ],
)
def test_part_contents(parts: tuple[int, ...], expected: bytes) -> None:
    assert _section(parts) == expected


def test_message_rfc822_part_is_the_whole_inner_message() -> None:
    whole = _section((3,))
    assert whole is not None
    assert whole.startswith(b"Subject: three\r\n")
    assert whole.endswith(b"--three--")  # the CRLF after it belongs to --top
    header = _section((3,), "HEADER")
    text = _section((3,), "TEXT")
    assert header is not None
    assert text is not None
    assert header + text == whole
    assert header.endswith(b"boundary=three\r\n\r\n")
    assert _section((4, 2), "TEXT") == b"4.2 body, not multipart"


def test_mime_headers() -> None:
    assert _section((2,), "MIME") == (
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    )
    assert _section((3,), "MIME") == b"Content-Type: message/rfc822\r\n\r\n"
    assert _section((3, 2), "MIME") == (
        b"Content-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    )


def test_header_fields() -> None:
    assert _section((), "HEADER.FIELDS", "subject", "X-None") == b"Subject: sections\r\n\r\n"
    assert _section((3,), "HEADER.FIELDS", "X-OTHER") == b"X-Other: 3\r\n folded\r\n\r\n"
    assert _section((3,), "HEADER.FIELDS.NOT", "subject", "x-other") == (
        b"Content-Type: multipart/alternative; boundary=three\r\n\r\n"
    )
    assert _section((), "HEADER.FIELDS", "x-none") == b"\r\n"


def test_header_fields_keep_lines_without_colon_out_of_the_named_ones() -> None:
    raw = crlf("From: a\nno colon here\nTo: b\n\nbody\n")
    root = parse(raw)
    spec = SectionSpec(text="HEADER.FIELDS.NOT", fields=(b"from",))
    assert section(raw, root, spec) == b"no colon here\r\nTo: b\r\n\r\n"
    spec = SectionSpec(text="HEADER.FIELDS", fields=(b"to",))
    assert section(raw, root, spec) == b"To: b\r\n\r\n"


def test_header_block_without_empty_line() -> None:
    raw = b"Subject: cut\r\nX-A: 1"
    root = parse(raw)
    assert section(raw, root, SectionSpec(text="HEADER")) == raw
    assert section(raw, root, SectionSpec(text="TEXT")) == b""
    spec = SectionSpec(text="HEADER.FIELDS", fields=(b"x-a",))
    assert section(raw, root, spec) == b"X-A: 1\r\n\r\n"


@pytest.mark.parametrize(
    ("parts", "text"),
    [
        ((5,), None),
        ((1, 2), None),
        ((4, 3), None),
        ((1,), "HEADER"),  # HEADER of a part that is not message/rfc822
        ((2,), "TEXT"),
        ((4, 1), "HEADER.FIELDS"),
    ],
)
def test_no_such_section(parts: tuple[int, ...], text: str | None) -> None:
    fields = (b"x",) if text == "HEADER.FIELDS" else ()
    assert section(NESTED, ROOT, SectionSpec(parts=parts, text=text, fields=fields)) is None


def test_single_part_message_has_part_one() -> None:
    raw = crlf("Subject: one\nContent-Type: text/plain\n\nthe body\n")
    root = parse(raw)
    assert section(raw, root, SectionSpec(parts=(1,))) == b"the body\r\n"
    assert section(raw, root, SectionSpec(parts=(1,), text="MIME")) == raw[: root.header_end]
    assert section(raw, root, SectionSpec(parts=(2,))) is None
    assert find_part(root, (1, 1, 1)) is root


def test_multipart_without_parts_has_no_part_one() -> None:
    raw = corpus("bad-boundary.eml")
    assert section(raw, parse(raw), SectionSpec(parts=(1,))) is None


def test_section_spec_is_validated() -> None:
    assert SectionSpec(text="HEADER.FIELDS", fields=["From", b"To"]).fields == (b"From", b"To")
    with pytest.raises(ValueError, match="1 or more"):
        SectionSpec(parts=(0,))
    with pytest.raises(ValueError, match="1 or more"):
        SectionSpec(parts=(True,))
    with pytest.raises(ValueError, match="unknown"):
        SectionSpec(text="BODY")
    with pytest.raises(ValueError, match="MIME needs"):
        SectionSpec(text="MIME")
    with pytest.raises(ValueError, match="field names"):
        SectionSpec(text="HEADER.FIELDS")
    with pytest.raises(ValueError, match="field names"):
        SectionSpec(text="TEXT", fields=(b"x",))


def test_partial() -> None:
    assert partial(b"0123456789", 0, None) == b"0123456789"
    assert partial(b"0123456789", 2, 3) == b"234"
    assert partial(b"0123456789", 8, 10) == b"89"
    assert partial(b"0123456789", 10, 1) == b""
    assert partial(b"0123456789", 50, None) == b""
    assert partial(b"0123456789", 3, 0) == b""
    with pytest.raises(ValueError, match="non-negative"):
        partial(b"x", -1, None)


def test_binary() -> None:
    assert binary(NESTED, ROOT, (1,)) == b"part 1"
    assert binary(NESTED, ROOT, (2,)) == b"\x00\x01\x02\xff"
    assert binary_size(NESTED, ROOT, (2,)) == 4
    assert binary(NESTED, ROOT, (3, 2)) == "<p>3.2 café</p>".encode()
    assert binary_size(NESTED, ROOT, (3, 2)) == len("<p>3.2 café</p>".encode())
    assert binary(NESTED, ROOT, (4, 1)) == UnknownEncoding(b"x-uuencode")
    assert binary_size(NESTED, ROOT, (4, 1)) == UnknownEncoding(b"x-uuencode")
    assert binary(NESTED, ROOT, (9,)) is None
    assert binary_size(NESTED, ROOT, (9,)) is None
    assert binary(NESTED, ROOT, ()) == NESTED
    inner = binary(NESTED, ROOT, (3,))
    assert inner is not None
    assert inner == _section((3,))


def test_binary_of_a_big_base64_part() -> None:
    payload = bytes(range(256)) * 4000
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    raw = b"MIME-Version: 1.0\r\nContent-Transfer-Encoding: BASE64\r\n\r\n" + encoded
    root = parse(raw)
    assert binary(raw, root, (1,)) == payload
    assert binary_size(raw, root, (1,)) == len(payload)


def test_header_fields_for_search() -> None:
    raw = crlf("Subject:  a\n b\nX-Empty:\nno colon\nFrom : x@y\n\nbody\n")
    assert header_fields(raw, parse(raw)) == [
        (b"Subject", b"a b"),
        (b"X-Empty", b""),
        (b"From", b"x@y"),
    ]
    three = find_part(ROOT, (3,))
    assert three is not None
    assert three.encapsulated is not None
    assert header_fields(NESTED, three.encapsulated)[1] == (b"X-Other", b"3 folded")
