"""The TLS rules on both kinds of link: under TLS, whether it came from STARTTLS or from
the first byte (`Connection(SERVER, tls_active=True)`, port 993), STARTTLS is neither
offered nor accepted; on a plaintext link (the default) it is both."""

from __future__ import annotations

import pytest
from imap_helpers import CAPABILITIES, GREETING

from sansmail import SERVER, LocalProtocolError
from sansmail.imap import (
    Connection,
    InvalidCommand,
    Phase,
    ResponseCode,
    Stage,
    StartTLS,
    Tagged,
    Untagged,
    UntaggedStatus,
)

TLS_CAPABILITIES = tuple(name for name in CAPABILITIES if name != "STARTTLS")
TLS_GREETING = UntaggedStatus(
    status="OK", code=ResponseCode.capability(TLS_CAPABILITIES), text="sansmail ready"
)
LINKS = ["starttls", "implicit"]


def feed(conn: Connection, data: bytes) -> object:
    conn.receive_data(data)
    return conn.next_event()


def under_tls(link: str) -> Connection:
    """A greeted connection under TLS, from STARTTLS or from the first byte."""
    if link == "implicit":
        conn = Connection(SERVER, tls_active=True)
        conn.send(TLS_GREETING)
    else:
        conn = Connection(SERVER)
        conn.send(GREETING)
        assert isinstance(feed(conn, b"a STARTTLS\r\n"), StartTLS)
        conn.send(Tagged(tag="a", status="OK", text="begin TLS"))
        conn.start_tls()
    assert conn.tls_active
    assert conn.stage is Stage.NOT_AUTHENTICATED
    assert conn.our_state is Phase.COMMAND
    return conn


def test_a_plaintext_link_offers_and_accepts_starttls() -> None:
    conn = Connection(SERVER)
    assert not conn.tls_active
    conn.send(GREETING)
    assert "STARTTLS" in conn.capabilities
    assert feed(conn, b"a STARTTLS\r\n") == StartTLS(tag="a")


@pytest.mark.parametrize("link", LINKS)
def test_starttls_is_refused_under_tls(link: str) -> None:
    conn = under_tls(link)
    event = feed(conn, b"b STARTTLS\r\n")
    assert isinstance(event, InvalidCommand)
    assert event.reason == "TLS is already active"
    hint = event.reply_hint
    assert conn.send(hint) == b"b BAD STARTTLS TLS is already active\r\n"  # type: ignore[arg-type]
    assert conn.our_state is Phase.COMMAND
    with pytest.raises(LocalProtocolError):
        conn.start_tls()


@pytest.mark.parametrize("link", LINKS)
def test_starttls_may_not_be_advertised_under_tls(link: str) -> None:
    conn = under_tls(link)
    feed(conn, b"c CAPABILITY\r\n")
    with pytest.raises(LocalProtocolError, match="STARTTLS advertised under TLS"):
        conn.send(Untagged.capability(CAPABILITIES))
    assert conn.our_state is Phase.ERROR
    # Nor in a [CAPABILITY] code.
    conn = under_tls(link)
    feed(conn, b"c NOOP\r\n")
    code = ResponseCode.capability(CAPABILITIES)
    with pytest.raises(LocalProtocolError, match="STARTTLS advertised under TLS"):
        conn.send(Tagged(tag="c", status="OK", code=code, text="x"))
    # Without it, the listing is state from the wire as usual.
    conn = under_tls(link)
    feed(conn, b"c CAPABILITY\r\n")
    conn.send(Untagged.capability(TLS_CAPABILITIES))
    assert conn.capabilities == frozenset(name.upper() for name in TLS_CAPABILITIES)


def test_an_implicit_tls_greeting_may_not_offer_starttls() -> None:
    conn = Connection(SERVER, tls_active=True)
    with pytest.raises(LocalProtocolError, match="STARTTLS advertised under TLS"):
        conn.send(GREETING)


@pytest.mark.parametrize("link", LINKS)
def test_login_under_tls_is_the_same_on_both_links(link: str) -> None:
    conn = under_tls(link)
    event = feed(conn, b"d LOGIN fred secret\r\n")
    assert not isinstance(event, InvalidCommand)
    conn.send(Tagged(tag="d", status="OK", text="logged in"))
    assert conn.stage is Stage.AUTHENTICATED
    assert conn.tls_active
