"""LineBuffer: CRLF-only line splitting, bounded, resumable; bulk extraction."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansmail._linebuffer import BareNewlineError, LineBuffer, LineTooLongError


def buffer_with(*pieces: bytes) -> LineBuffer:
    buf = LineBuffer()
    for piece in pieces:
        buf.append(piece)
    return buf


def test_lines_come_out_without_their_crlf_and_in_order() -> None:
    buf = buffer_with(b"EHLO a\r\nNOOP\r\n\r\npartial")
    assert buf.maybe_extract_line(512) == b"EHLO a"
    assert buf.maybe_extract_line(512) == b"NOOP"
    assert buf.maybe_extract_line(512) == b""
    assert buf.maybe_extract_line(512) is None
    assert bytes(buf) == b"partial"
    buf.append(b" line\r\n")
    assert buf.maybe_extract_line(512) == b"partial line"
    assert not buf
    assert len(buf) == 0


def test_a_line_fed_byte_by_byte_is_found_once_complete() -> None:
    buf = LineBuffer()
    for byte in b"MAIL FROM:<a@b>\r":
        buf.append(bytes([byte]))
        assert buf.maybe_extract_line(512) is None
    buf.append(b"\nRSET")
    assert buf.maybe_extract_line(512) == b"MAIL FROM:<a@b>"
    assert bytes(buf) == b"RSET"


@pytest.mark.parametrize(
    "data",
    [b"\n", b"abc\n", b"abc\ndef\r\n", b"a\rb\r\n", b"\rabc\r\n", b"abc\r\r\n"],
)
def test_bare_cr_or_lf_is_never_a_line_end(data: bytes) -> None:
    with pytest.raises(BareNewlineError):
        buffer_with(data).maybe_extract_line(512)


def test_length_limit_counts_the_crlf() -> None:
    assert buffer_with(b"x" * 510 + b"\r\n").maybe_extract_line(512) == b"x" * 510
    with pytest.raises(LineTooLongError):
        buffer_with(b"x" * 511 + b"\r\n").maybe_extract_line(512)


def test_an_endless_line_fails_as_soon_as_the_limit_is_reached() -> None:
    buf = buffer_with(b"x" * 510 + b"\r")
    assert buf.maybe_extract_line(512) is None  # the 512th octet may still be its LF
    buf.append(b"x")
    with pytest.raises(LineTooLongError):
        buf.maybe_extract_line(512)


def test_search_resumes_after_bulk_extraction() -> None:
    buf = buffer_with(b"0123456789")
    assert buf.maybe_extract_line(100) is None
    assert buf.extract(4) == b"0123"
    buf.append(b"\r\nnext")
    assert buf.maybe_extract_line(100) == b"456789"
    assert bytes(buf) == b"next"


def test_bulk_operations() -> None:
    buf = buffer_with(b"hello\r\n.\r\nrest")
    assert buf.find(b"\r\n.\r\n") == 5
    assert buf.startswith(b"hel")
    assert buf.endswith(b"rest")
    assert buf.maybe_extract_exact(100) is None
    assert buf.maybe_extract_exact(5) == b"hello"
    buf.discard(5)
    assert buf.extract(100) == b"rest"
    assert buf.extract_all() == b""
    buf.append(b"abc")
    assert buf.extract_all() == b"abc"
    assert repr(buf) == "<LineBuffer 0 octets>"


lines = st.lists(st.binary(max_size=30).filter(lambda b: b"\r" not in b and b"\n" not in b))


@settings(max_examples=200, deadline=None)
@given(lines=lines, cuts=st.lists(st.integers(min_value=0, max_value=400)))
def test_any_chunking_gives_the_same_lines(lines: list[bytes], cuts: list[int]) -> None:
    data = b"".join(line + b"\r\n" for line in lines)
    points = sorted({c for c in cuts if c < len(data)} | {0, len(data)})
    buf = LineBuffer()
    got = []
    for start, end in itertools.pairwise(points):
        buf.append(data[start:end])
        while (line := buf.maybe_extract_line(64)) is not None:
            got.append(line)
    assert got == lines
    assert not buf
