"""The TLS rules on both kinds of link: under TLS, whether it came from STLS or from the
first byte (`Connection(SERVER, tls_active=True)`, port 995), STLS is neither offered nor
accepted and USER/PASS and AUTH work the same; on a plaintext link (the default) STLS is
both offered and accepted."""

from __future__ import annotations

import pytest

from sansmail import SERVER, LocalProtocolError
from sansmail.pop3 import (
    Auth,
    Capa,
    Connection,
    EndOfMultiline,
    InvalidCommand,
    MultilineData,
    Ok,
    Pass,
    Phase,
    Stage,
    Stls,
    User,
    capability_listing,
)

LINKS = ["stls", "implicit"]


def feed(conn: Connection, data: bytes) -> object:
    conn.receive_data(data)
    return conn.next_event()


def under_tls(link: str) -> Connection:
    """A greeted server under TLS, in AUTHORIZATION, reading commands."""
    if link == "implicit":
        conn = Connection(SERVER, tls_active=True)
        conn.send(Ok(text="ready"))
    else:
        conn = Connection(SERVER)
        conn.send(Ok(text="ready"))
        assert feed(conn, b"STLS\r\n") == Stls()
        conn.send(Ok(text="Begin TLS negotiation"))
        conn.start_tls()
    assert conn.tls_active
    assert conn.stage is Stage.AUTHORIZATION
    assert conn.our_state is Phase.COMMAND
    return conn


def send_capa(conn: Connection, listing: bytes) -> None:
    assert feed(conn, b"CAPA\r\n") == Capa()
    conn.send(Ok(text="Capability list follows"))
    conn.send(MultilineData(data=listing))
    conn.send(EndOfMultiline())


def test_a_plaintext_link_offers_and_accepts_stls() -> None:
    conn = Connection(SERVER)
    assert not conn.tls_active
    conn.send(Ok(text="ready"))
    send_capa(conn, capability_listing(stls=True))
    assert "STLS" in conn.capabilities
    assert feed(conn, b"STLS\r\n") == Stls()


@pytest.mark.parametrize("link", LINKS)
def test_capa_may_not_offer_stls_under_tls(link: str) -> None:
    conn = under_tls(link)
    with pytest.raises(LocalProtocolError, match="STLS advertised under TLS"):
        send_capa(conn, capability_listing(stls=True))  # RFC 2595 §4
    assert conn.our_state is Phase.ERROR
    conn = under_tls(link)
    send_capa(conn, capability_listing(sasl=("PLAIN",)))
    assert "STLS" not in conn.capabilities


@pytest.mark.parametrize("link", LINKS)
def test_stls_is_refused_under_tls(link: str) -> None:
    conn = under_tls(link)
    event = feed(conn, b"STLS\r\n")
    assert isinstance(event, InvalidCommand)
    assert conn.send(event.reply_hint) == b"-ERR already using TLS\r\n"  # type: ignore[arg-type]
    assert conn.our_state is Phase.COMMAND
    with pytest.raises(LocalProtocolError):
        conn.start_tls()


@pytest.mark.parametrize("link", LINKS)
def test_logins_under_tls_are_the_same_on_both_links(link: str) -> None:
    conn = under_tls(link)
    assert feed(conn, b"USER fred\r\n") == User(name="fred")
    conn.send(Ok())
    assert feed(conn, b"PASS secret\r\n") == Pass(password="secret")
    conn.send(Ok())
    assert conn.stage is Stage.TRANSACTION
    conn = under_tls(link)
    event = feed(conn, b"AUTH PLAIN AGZyZWQAc2VjcmV0\r\n")
    assert event == Auth(mechanism="PLAIN", initial_response=b"\0fred\0secret")
    conn.send(Ok())
    assert conn.stage is Stage.TRANSACTION
