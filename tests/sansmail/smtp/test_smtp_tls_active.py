"""The TLS rules on both kinds of link, server and client: under TLS, whether it came from
STARTTLS or from the first byte (`tls_active=True`, port 465), STARTTLS is neither
offered nor accepted and AUTH works the same; on a plaintext link (the default) STARTTLS
is both offered and accepted."""

from __future__ import annotations

import pytest
from smtp_helpers import AUTH_OK, GREETING, feed, greeted

from sansmail import SERVER, LocalProtocolError
from sansmail.smtp import (
    Auth,
    ClientConnection,
    Connection,
    Hello,
    InvalidCommand,
    Phase,
    Reply,
    Stage,
    StartTLS,
)
from sansmail.smtp._codes import TLS_ACTIVE

LINKS = ["starttls", "implicit"]
TLS_EHLO = ("mx.example", "STARTTLS", "PIPELINING", "ENHANCEDSTATUSCODES")
SECURE_EHLO = ("mx.example", "PIPELINING", "ENHANCEDSTATUSCODES", "AUTH PLAIN")


def under_tls(link: str) -> Connection:
    """A server under TLS that owes nothing and waits for the client's EHLO."""
    if link == "implicit":
        conn = Connection(SERVER, tls_active=True)
        conn.send(GREETING)
    else:
        conn = greeted(lines=TLS_EHLO)
        assert feed(conn, b"STARTTLS\r\n") == [StartTLS()]
        conn.send(Reply(code=220, lines="ready"))
        conn.start_tls()
    assert conn.tls_active
    assert conn.stage is Stage.NEED_HELLO
    assert not conn.authenticated
    return conn


def secure_ehlo(link: str) -> Connection:
    conn = under_tls(link)
    assert feed(conn, b"EHLO client.example\r\n") == [Hello(domain="client.example")]
    conn.send(Reply(code=250, lines=SECURE_EHLO))
    return conn


def test_a_plaintext_link_offers_and_accepts_starttls() -> None:
    conn = Connection(SERVER)
    assert not conn.tls_active
    conn.send(GREETING)
    feed(conn, b"EHLO client.example\r\n")
    conn.send(Reply(code=250, lines=TLS_EHLO))
    assert "STARTTLS" in conn.extensions
    assert feed(conn, b"STARTTLS\r\n") == [StartTLS()]


@pytest.mark.parametrize("link", LINKS)
def test_ehlo_may_not_offer_starttls_under_tls(link: str) -> None:
    conn = under_tls(link)
    feed(conn, b"EHLO client.example\r\n")
    with pytest.raises(LocalProtocolError, match="STARTTLS advertised under TLS"):
        conn.send(Reply(code=250, lines=TLS_EHLO))  # RFC 3207 §4.2
    assert conn.our_state is Phase.ERROR


@pytest.mark.parametrize("hello", [b"EHLO client.example\r\n", b"HELO client.example\r\n"])
@pytest.mark.parametrize("link", LINKS)
def test_starttls_is_refused_under_tls(link: str, hello: bytes) -> None:
    conn = under_tls(link)
    feed(conn, hello)
    conn.send(Reply(code=250, lines=SECURE_EHLO if hello.startswith(b"EHLO") else "mx"))
    [event] = feed(conn, b"STARTTLS\r\n")
    assert isinstance(event, InvalidCommand)
    assert event.reply_hint == TLS_ACTIVE
    # ENHANCEDSTATUSCODES was advertised to EHLO only.
    enhanced = b"5.5.1 " if hello.startswith(b"EHLO") else b""
    assert conn.send(event.reply_hint) == b"503 " + enhanced + b"TLS already active\r\n"
    assert conn.our_state is Phase.COMMAND
    with pytest.raises(LocalProtocolError):
        conn.start_tls()


@pytest.mark.parametrize("link", LINKS)
def test_auth_under_tls_is_the_same_on_both_links(link: str) -> None:
    conn = secure_ehlo(link)
    [event] = feed(conn, b"AUTH PLAIN AGZyZWQAc2VjcmV0\r\n")
    assert isinstance(event, Auth)
    assert event.initial_response == b"\0fred\0secret"
    conn.send(AUTH_OK)
    assert conn.authenticated
    assert conn.tls_active


# --- the client role ----------------------------------------------------------------------


def client(*, tls_active: bool) -> ClientConnection:
    """A client that was greeted and read an EHLO reply offering STARTTLS (which a server
    under TLS should not, RFC 3207 §4.2)."""
    conn = ClientConnection(tls_active=tls_active)
    conn.receive_data(b"220 mx.example ESMTP\r\n")
    conn.next_event()
    conn.send(Hello(domain="client.example"))
    conn.receive_data(b"250-mx.example\r\n250 STARTTLS\r\n")
    assert isinstance(conn.next_event(), Reply)
    return conn


def test_a_client_on_an_implicit_tls_link_never_sends_starttls() -> None:
    conn = client(tls_active=True)
    assert conn.tls_active
    with pytest.raises(LocalProtocolError, match="TLS is already active"):
        conn.send(StartTLS())


def test_a_client_on_a_plaintext_link_sends_starttls_when_offered() -> None:
    conn = client(tls_active=False)
    assert not conn.tls_active
    assert conn.send(StartTLS()) == b"STARTTLS\r\n"
