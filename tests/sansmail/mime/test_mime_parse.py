"""The part tree: offsets, boundary rules (RFC 2046 §5.1.1 as Dovecot reads it), the MIME
context rules (RFC 2045), limits, and the promise that the work stays linear."""

from __future__ import annotations

import pytest
from mime_helpers import crlf

from sansmail.mime import MAX_DEPTH, MAX_PARTS, MessagePart, parse


def _body(raw: bytes, part: MessagePart) -> bytes:
    return raw[part.body_start : part.body_end]


def _header(raw: bytes, part: MessagePart) -> bytes:
    return raw[part.header_start : part.header_end]


def test_single_part_offsets() -> None:
    raw = crlf("Subject: x\nFrom: a@b\n\nline 1\nline 2\n")
    root = parse(raw)
    assert _header(raw, root) == b"Subject: x\r\nFrom: a@b\r\n\r\n"
    assert _body(raw, root) == b"line 1\r\nline 2\r\n"
    assert (root.size, root.lines) == (16, 2)
    assert (root.content_type, root.subtype, root.params) == (b"text", b"plain", ())
    assert not root.multipart
    assert root.children == []
    assert root.encapsulated is None


def test_no_header_block_and_no_body() -> None:
    root = parse(b"")
    assert (root.header_end, root.body_start, root.body_end) == (0, 0, 0)
    raw = b"\r\nbody"
    root = parse(raw)
    assert (_header(raw, root), _body(raw, root)) == (b"\r\n", b"body")
    raw = b"Subject: no empty line"
    root = parse(raw)
    assert (_header(raw, root), _body(raw, root)) == (raw, b"")


def test_the_crlf_before_a_boundary_belongs_to_the_boundary() -> None:
    raw = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\n\nA\n\n--b\n\nB\n--b--\n")
    root = parse(raw)
    assert [_body(raw, child) for child in root.children] == [b"A\r\n", b"B"]
    assert _body(raw, root).startswith(b"--b\r\n")
    assert _body(raw, root).endswith(b"--b--\r\n")


def test_boundary_on_the_first_line_of_a_body() -> None:
    raw = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\nX-A: 1\n\none\n--b--\n")
    (child,) = parse(raw).children
    assert _header(raw, child) == b"X-A: 1\r\n\r\n"
    assert _body(raw, child) == b"one"


def test_preamble_and_epilogue_belong_to_no_part() -> None:
    raw = crlf(
        "Content-Type: multipart/mixed; boundary=b\n\npreamble\n--b\n\none\n--b--\nepilogue\n"
    )
    root = parse(raw)
    (child,) = root.children
    assert _body(raw, child) == b"one"
    assert root.body_end == len(raw)


def test_a_boundary_is_a_prefix_of_its_line() -> None:
    """RFC 2046 §5.1.1: a boundary may not appear as the prefix of any line of a part, so
    "--b whatever" is a delimiter line (transport padding or junk after it is ignored)."""
    raw = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b  \n\n1\n--bogus\n\n2\n--b--\n")
    root = parse(raw)
    assert [_body(raw, child) for child in root.children] == [b"1", b"2"]


def test_the_longest_open_boundary_wins() -> None:
    raw = crlf(
        "Content-Type: multipart/mixed; boundary=ab\n\n"
        "--ab\nContent-Type: multipart/mixed; boundary=abc\n\n"
        "--abc\n\ninner\n--abc--\n"
        "--ab\n\nouter\n--ab--\n"
    )
    root = parse(raw)
    assert len(root.children) == 2
    inner = root.children[0]
    assert inner.multipart
    assert [_body(raw, c) for c in inner.children] == [b"inner"]
    assert _body(raw, root.children[1]) == b"outer"


def test_the_same_boundary_nested_goes_to_the_innermost() -> None:
    raw = crlf(
        "Content-Type: multipart/mixed; boundary=b\n\n"
        "--b\nContent-Type: multipart/alternative; boundary=b\n\n"
        "--b\n\nx\n--b\n\ny\n--b--\n"
        "--b\n\nz\n--b--\n"
    )
    root = parse(raw)
    assert [len(child.children) for child in root.children] == [2, 0]
    assert _body(raw, root.children[1]) == b"z"


def test_outer_boundary_closes_everything_inside() -> None:
    raw = crlf(
        "Content-Type: multipart/mixed; boundary=out\n\n"
        "--out\nContent-Type: multipart/alternative; boundary=in\n\n"
        "--in\n\nno close delimiter for in\n"
        "--out\n\nsecond\n--out--\n"
    )
    root = parse(raw)
    inner, second = root.children
    assert [_body(raw, c) for c in inner.children] == [b"no close delimiter for in"]
    assert inner.body_end == inner.children[0].body_end
    assert _body(raw, second) == b"second"


def test_outer_boundary_inside_a_header_block_ends_it() -> None:
    raw = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\nX-A: 1\n--b\n\nnext\n--b--\n")
    first, second = parse(raw).children
    assert _header(raw, first) == b"X-A: 1"
    assert first.body_start == first.body_end == first.header_end
    assert _body(raw, second) == b"next"


def test_empty_part_between_boundaries() -> None:
    raw = crlf(
        "Content-Type: multipart/mixed; boundary=b\n\n--b\n--b\nContent-Type: text/html\n\n--b--\n"
    )
    first, second = parse(raw).children
    assert first.header_start == first.header_end == first.body_end
    assert _header(raw, second) == b"Content-Type: text/html\r\n\r\n"
    assert second.subtype == b"html"
    assert second.size == 0


def test_a_boundary_line_at_the_very_end_starts_no_part() -> None:
    raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\none\r\n--b"
    root = parse(raw)
    assert len(root.children) == 1
    raw += b"\r\n"
    assert len(parse(raw).children) == 2  # a line end after it: an empty part (Dovecot)


def test_boundary_parameter_rules() -> None:
    # quoted, folded inside the quotes (the fold goes, the space stays), case of the name
    raw = crlf(
        'Content-Type: multipart/mixed; BOUNDARY="foo\n bar"\n\n--foo bar\n\nx\n--foo bar--\n'
    )
    assert len(parse(raw).children) == 1
    # an empty boundary is no boundary
    raw = crlf('Content-Type: multipart/mixed; boundary=""\n\n--\n\nx\n')
    root = parse(raw)
    assert root.multipart
    assert root.children == []
    # longer than RFC 2046's 70 octets: kept whole (Dovecot cuts it and then misses the
    # close delimiter, which would make the epilogue a part)
    long = "x" * 100
    raw = crlf(
        f"Content-Type: multipart/mixed; boundary={long}\n\n--{long}\n\nx\n--{long}--\nepi\n"
    )
    root = parse(raw)
    assert [_body(raw, c) for c in root.children] == [b"x"]


def test_message_rfc822_is_encapsulated() -> None:
    raw = crlf(
        "Content-Type: multipart/mixed; boundary=b\n\n"
        "--b\nContent-Type: message/rfc822\n\nSubject: inner\n\ninner body\n--b--\n"
    )
    (part,) = parse(raw).children
    inner = part.encapsulated
    assert part.is_message
    assert inner is not None
    assert inner.header_start == part.body_start
    assert inner.body_end == part.body_end
    assert _header(raw, inner) == b"Subject: inner\r\n\r\n"
    assert _body(raw, inner) == b"inner body"
    assert part.lines == 2  # the whole encapsulated message: header line, empty line


def test_empty_message_rfc822_part() -> None:
    raw = crlf(
        "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: message/rfc822\n--b--\n"
    )
    (part,) = parse(raw).children
    assert part.encapsulated is not None
    assert part.encapsulated.size == 0
    assert part.encapsulated.header_start == part.encapsulated.header_end == part.body_start


def test_top_level_message_rfc822() -> None:
    raw = crlf("Content-Type: message/rfc822\n\nFrom: x@y\nContent-Type: text/html\n\n<p>\n")
    root = parse(raw)
    assert root.encapsulated is not None
    assert root.encapsulated.subtype == b"html"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        # RFC 2045 §4: without MIME-Version the Content-* fields mean nothing ...
        ("Content-Transfer-Encoding: base64\n", None),
        ("MIME-Version: 1.0\nContent-Transfer-Encoding: base64\n", b"base64"),
        # ... but a Content-Type makes it MIME anyway (Dovecot's loosening)
        ("Content-Type: text/plain\nContent-Transfer-Encoding: base64\n", b"base64"),
        ("Content-Transfer-Encoding: (comment) Base64 \nMIME-Version: 1.0\n", b"Base64"),
        ("MIME-Version: 1.0\nContent-Transfer-Encoding: base 64\n", None),
    ],
)
def test_mime_context(header: str, expected: bytes | None) -> None:
    assert parse(crlf(header + "\nbody\n")).encoding == expected


def test_content_fields_first_one_counts() -> None:
    root = parse(
        crlf(
            "MIME-Version: 1.0\nContent-ID: <a>\nContent-ID: <b>\n"
            "Content-Description:  first\n Folded\nContent-Description: second\n"
            "Content-Location: x\nContent-MD5: m\nContent-Language: en, de-CH\n"
            "Content-Disposition: attachment; filename=a.txt\n\nbody\n"
        )
    )
    assert root.id == b"<a>"
    assert root.description == b"first Folded"
    assert (root.location, root.md5, root.language) == (b"x", b"m", (b"en", b"de-CH"))
    assert root.disposition == (b"attachment", ((b"filename", b"a.txt"),))


def test_digest_default_is_message_rfc822() -> None:
    raw = crlf(
        "Content-Type: multipart/digest; boundary=d\n\n"
        "--d\n\nSubject: one\n\n1\n--d\nContent-Type: text/plain\n\n2\n--d--\n"
    )
    first, second = parse(raw).children
    assert first.is_message
    assert first.encapsulated is not None
    assert not second.is_message


def test_depth_limit() -> None:
    levels = MAX_DEPTH + 20
    raw = crlf(
        # zero-padded, so that no boundary is a prefix of another
        "".join(
            f"Content-Type: multipart/mixed; boundary=b{i:04}\n\n--b{i:04}\n" for i in range(levels)
        )
        + "\nleaf\n"
    )
    part = parse(raw)
    depth = 1
    while part.children:
        part = part.children[0]
        depth += 1
    assert depth == MAX_DEPTH
    # the one past the limit keeps its type but is a leaf
    assert part.content_type == b"multipart"
    assert not part.multipart
    assert part.body_end == len(raw)


def test_message_rfc822_chain_is_limited_too() -> None:
    raw = crlf("Content-Type: message/rfc822\n\n" * (MAX_DEPTH * 3) + "end\n")
    part = parse(raw)
    depth = 1
    while part.encapsulated is not None:
        part = part.encapsulated
        depth += 1
    assert depth == MAX_DEPTH
    assert part.is_message  # shown with an empty envelope and body by bodystructure


def test_part_limit() -> None:
    raw = crlf(
        "Content-Type: multipart/mixed; boundary=b\n\n"
        + "--b\n\nx\n" * (MAX_PARTS + 50)
        + "--b--\n"
    )
    root = parse(raw)
    assert len(root.children) == MAX_PARTS - 1  # the root counts too
    last = root.children[-1]
    assert last.body_end == len(raw)  # after the limit nothing is looked for: runs to the end


class _Counting(bytes):
    """bytes that count how many octets their find/count searches cover."""

    scanned = 0

    def find(self, sub, start=None, end=None):
        found = super().find(sub, start, end)
        lo = 0 if start is None else start
        hi = len(self) if end is None else min(end, len(self))
        _Counting.scanned += max(0, (found + len(sub) if found >= 0 else hi) - lo)
        return found


_NESTED = b"".join(
    b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (max(i - 1, 0), i)
    for i in range(6_000)
)


@pytest.mark.parametrize(
    ("raw", "passes"),
    [
        # every line a boundary: parts up to the limit, then nothing more is looked for
        (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n" * 200_000, 4),
        # lines that look like boundaries but are not
        (
            b"Content-Type: multipart/mixed; boundary=bb\r\n\r\n--bb\r\n\r\n"
            + b"--b\r\n" * 200_000,
            4,
        ),
        # a header block of a hundred thousand lines
        (b"Subject: x\r\n" + b"X-A: b\r\n" * 100_000 + b"\r\nbody\r\n", 4),
        # 6000 distinct boundaries, nested (up to MAX_DEPTH open at a time) and prefixes
        # of later lines: each open boundary is searched for on its own
        (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + _NESTED, MAX_DEPTH + 4),
    ],
    ids=["boundary-lines", "near-boundaries", "huge-header", "nested-prefixes"],
)
def test_work_stays_linear(raw: bytes, passes: int) -> None:
    """Hostile shapes cost a bounded number of passes over the bytes (counted, not timed:
    the quadratic versions of these searched gigabytes)."""
    _Counting.scanned = 0
    parse(_Counting(raw))
    assert _Counting.scanned < passes * len(raw)
