"""Reply serialisation (RFC 5321 §4.2, RFC 2034 §3) and reading back our EHLO reply."""

from __future__ import annotations

import pytest
from smtp_helpers import feed, greeted, server

from sansmail import SERVER, LocalProtocolError
from sansmail.smtp import Connection, Reply
from sansmail.smtp._writers import read_extensions, write_reply


@pytest.mark.parametrize(
    ("reply", "enhanced", "wire"),
    [
        (Reply(code=250, lines="OK"), False, b"250 OK\r\n"),
        (Reply(code=250, lines=("a", "b", "c")), False, b"250-a\r\n250-b\r\n250 c\r\n"),
        (Reply(code=250, lines=""), False, b"250\r\n"),
        (Reply(code=250, lines=("", "")), False, b"250-\r\n250\r\n"),
        (Reply(code=250, lines="OK"), True, b"250 2.0.0 OK\r\n"),
        (Reply(code=550, lines="no", enhanced="5.1.1"), True, b"550 5.1.1 no\r\n"),
        (Reply(code=550, lines="no", enhanced="5.1.1"), False, b"550 no\r\n"),
        (Reply(code=451, lines=("x", "y")), True, b"451-4.0.0 x\r\n451 4.0.0 y\r\n"),
        (Reply(code=250, lines=""), True, b"250 2.0.0\r\n"),
        (Reply(code=354, lines="go"), True, b"354 go\r\n"),  # no enhanced code for 3xx
    ],
)
def test_write_reply(reply: Reply, enhanced: bool, wire: bytes) -> None:
    assert write_reply(reply, enhanced=enhanced, utf8=False) == wire


def test_non_ascii_text_needs_smtputf8() -> None:
    reply = Reply(code=550, lines="unknown <jörg@example>")
    assert (
        write_reply(reply, enhanced=False, utf8=True) == "550 unknown <jörg@example>\r\n".encode()
    )
    with pytest.raises(LocalProtocolError):
        write_reply(reply, enhanced=False, utf8=False)


def test_read_extensions() -> None:
    reply = Reply(
        code=250,
        lines=("mx greets you", "size 1000", "AUTH PLAIN LOGIN", "AUTH=PLAIN LOGIN", " 8BITMIME "),
    )
    assert read_extensions(reply) == {"SIZE": "1000", "AUTH": "PLAIN LOGIN", "8BITMIME": ""}


def test_enhanced_codes_skip_greeting_and_ehlo_reply() -> None:
    conn = Connection(SERVER)
    assert conn.send(Reply(code=220, lines="hi")) == b"220 hi\r\n"
    feed(conn, b"EHLO c\r\n")
    assert conn.send(Reply(code=250, lines=("mx", "ENHANCEDSTATUSCODES"))) == (
        b"250-mx\r\n250 ENHANCEDSTATUSCODES\r\n"
    )
    assert conn.extensions == {"ENHANCEDSTATUSCODES": ""}
    feed(conn, b"EHLO c\r\n")
    # A later EHLO reply still carries none (RFC 2034 §3).
    assert conn.send(Reply(code=250, lines="mx")) == b"250 mx\r\n"
    assert conn.extensions == {}
    feed(conn, b"NOOP\r\n")
    assert conn.send(Reply(code=250, lines="OK")) == b"250 OK\r\n"


def test_helo_clears_extensions_and_esmtp() -> None:
    conn = greeted()
    assert conn.esmtp
    assert "PIPELINING" in conn.extensions
    feed(conn, b"HELO c\r\n")
    conn.send(Reply(code=250, lines=("mx", "PIPELINING")))
    assert not conn.esmtp
    assert conn.extensions == {}


def test_refused_ehlo_keeps_what_was_advertised() -> None:
    conn = greeted()
    before = dict(conn.extensions)
    feed(conn, b"EHLO again\r\n")
    conn.send(Reply(code=550, lines="go away"))
    assert dict(conn.extensions) == before
    assert conn.esmtp


@pytest.mark.parametrize(
    "lines",
    [
        ("mx", "BINARYMIME"),  # the core cannot read binary content
        ("mx", "SIZE lots"),
    ],
)
def test_ehlo_reply_promising_what_the_core_cannot_keep(lines: tuple[str, ...]) -> None:
    conn = server()
    feed(conn, b"EHLO c\r\n")
    with pytest.raises(LocalProtocolError):
        conn.send(Reply(code=250, lines=lines))


def test_advertised_size_lowers_the_limit() -> None:
    conn = greeted(lines=("mx", "SIZE 100"))
    [event] = feed(conn, b"MAIL FROM:<a@b.example> SIZE=101\r\n")
    assert event.reply_hint.code == 552  # type: ignore[attr-defined]
    conn.send(event.reply_hint)  # type: ignore[attr-defined]
    [event] = feed(conn, b"MAIL FROM:<a@b.example> SIZE=100\r\n")
    assert event.size == 100  # type: ignore[attr-defined]
