"""Status lines, challenges and byte-stuffing of multi-line answers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pop3_helpers import unstuff

from sansmail import LocalProtocolError
from sansmail.pop3 import Challenge, Err, Event, List, Ok, Retr, Stat, Uidl
from sansmail.pop3._writers import (
    DotStuffer,
    check_scan_listing,
    write_challenge,
    write_response,
)


@pytest.mark.parametrize(
    ("response", "wire"),
    [
        (Ok(), b"+OK\r\n"),
        (Ok(text="2 320"), b"+OK 2 320\r\n"),
        (Err(), b"-ERR\r\n"),
        (Err(text="no such message"), b"-ERR no such message\r\n"),
        (Err(text="locked", code="IN-USE"), b"-ERR [IN-USE] locked\r\n"),
        (Err(code="SYS/TEMP"), b"-ERR [SYS/TEMP]\r\n"),
        (Err(text="bad", code="AUTH"), b"-ERR [AUTH] bad\r\n"),
        (Ok(text="x", code="LOGIN-DELAY"), b"+OK [LOGIN-DELAY] x\r\n"),
    ],
)
def test_status_lines(response: Ok | Err, wire: bytes) -> None:
    assert write_response(response) == wire


def test_status_line_cap() -> None:
    # RFC 2449 §4: 512 octets with the CRLF.
    assert len(write_response(Ok(text="x" * 506))) == 512
    with pytest.raises(LocalProtocolError):
        write_response(Ok(text="x" * 507))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"text": "a\r\n+OK"},
        {"text": "caf\u00e9"},
        {"text": "tab\there"},
        {"code": ""},
        {"code": "A]B"},
        {"code": "SYS//TEMP"},
        {"code": "/SYS"},
        {"code": "IN USE"},
    ],
)
def test_invalid_responses_cannot_be_built(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=r"must|not"):
        Err(**kwargs)


def test_challenges() -> None:
    assert write_challenge(Challenge()) == b"+ \r\n"
    assert write_challenge(Challenge(data=b"\xff\x00")) == b"+ /wA=\r\n"


def _stuff(chunks: list[bytes]) -> bytes:
    stuffer = DotStuffer()
    return b"".join(stuffer.stuff(chunk) for chunk in chunks) + stuffer.end()


def test_stuffing_examples() -> None:
    assert _stuff([]) == b".\r\n"
    assert _stuff([b".\r\n"]) == b"..\r\n.\r\n"
    assert _stuff([b"a\r\n.b\r\n..\r\n"]) == b"a\r\n..b\r\n...\r\n.\r\n"
    # A CRLF split between chunks, and a dot right after it.
    assert _stuff([b"a\r", b"\n", b".", b"x\r\n"]) == b"a\r\n..x\r\n.\r\n"
    assert _stuff([b"a\r", b"\n.x\r\n"]) == b"a\r\n..x\r\n.\r\n"
    # A body without a final CRLF gets one before the "." line.
    assert _stuff([b"no newline"]) == b"no newline\r\n.\r\n"
    # A dot in the middle of a line is content.
    assert _stuff([b"a.b\r\n"]) == b"a.b\r\n.\r\n"


@pytest.mark.parametrize(
    "chunks",
    [[b"a\nb"], [b"a\rb"], [b"\n"], [b"a\r", b"b"], [b"a\r", b"\r\n"], [b"\r\r\n"], [b"\n."]],
)
def test_bare_cr_or_lf_refused(chunks: list[bytes]) -> None:
    stuffer = DotStuffer()
    for chunk in chunks[:-1]:
        stuffer.stuff(chunk)
    with pytest.raises(LocalProtocolError):
        stuffer.stuff(chunks[-1])


def test_trailing_bare_cr_refused_at_end() -> None:
    stuffer = DotStuffer()
    stuffer.stuff(b"a\r")
    with pytest.raises(LocalProtocolError):
        stuffer.end()


# Bodies made of lines that often start with a dot.
_LINE = st.lists(st.sampled_from([b".", b"..", b"a", b" ", b"x.y", b"\xff"]), max_size=5).map(
    b"".join
)
_BODY = st.lists(_LINE, max_size=12).map(lambda lines: b"".join(x + b"\r\n" for x in lines))


@settings(deadline=None, max_examples=300)
@given(_BODY, st.lists(st.integers(min_value=0, max_value=40), max_size=8))
def test_stuffing_round_trip_any_chunking(body: bytes, cuts: list[int]) -> None:
    points = sorted({min(cut, len(body)) for cut in cuts})
    chunks = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    wire = _stuff(chunks)
    assert wire == _stuff([body])  # chunk boundaries carry no meaning
    assert unstuff(wire) == body
    # Stuffing only ever adds dots at line starts: the octet count LIST reports is the
    # body's length (RFC 1939 §5), the wire's is that plus the stuffing and the end.
    assert len(wire) == len(body) + body.count(b"\r\n.") + body.startswith(b".") + 3


@pytest.mark.parametrize(
    ("command", "text"),
    [
        (Stat(), "2 320"),
        (Stat(), "0 0 empty"),
        (List(msg=2), "2 200"),
        (Uidl(msg=2), "2 QhdPYR:00WBw1Ph7x7"),
        (List(), "anything"),
        (Retr(msg=1), "anything"),
    ],
)
def test_scan_listings_accepted(command: Event, text: str) -> None:
    check_scan_listing(command, Ok(text=text))


@pytest.mark.parametrize(
    ("command", "response"),
    [
        (Stat(), Ok()),
        (Stat(), Ok(text="2")),
        (Stat(), Ok(text="two 320")),
        (Stat(), Ok(text="2 320", code="X")),
        (List(msg=2), Ok(text="3 200")),
        (List(msg=2), Ok(text="2")),
        (Uidl(msg=2), Ok(text="2 " + "u" * 71)),
        (Uidl(msg=2), Ok(text="2 a b")),
    ],
)
def test_scan_listings_refused(command: Event, response: Ok) -> None:
    with pytest.raises(LocalProtocolError):
        check_scan_listing(command, response)
