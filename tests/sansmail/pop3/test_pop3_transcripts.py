"""Byte-level transcripts: RFC 1939 §10's example session, RFC 2449's CAPA example,
RFC 5034's AUTH examples, and the response codes of RFC 2449 §8 and RFC 3206."""

from __future__ import annotations

from pop3_helpers import CAPABILITIES, MAILDROP, App, run, unstuff

from sansmail import PAUSED, SERVER
from sansmail.pop3 import (
    Auth,
    AuthCancel,
    AuthResponse,
    Challenge,
    Connection,
    EndOfMultiline,
    Err,
    Ok,
    Pass,
    Phase,
    Stage,
    User,
)


def test_rfc1939_example_session() -> None:
    # RFC 1939 §10, with USER/PASS in place of APOP (which sansmail does not offer).
    script = (
        b"USER mrose\r\nPASS secret\r\nSTAT\r\nLIST\r\nRETR 1\r\nDELE 1\r\n"
        b"RETR 2\r\nDELE 2\r\nQUIT\r\n"
    )
    events, out, error = run([script])
    assert error is None
    assert out.startswith(
        b"+OK mrose is known\r\n"
        b"+OK maildrop locked and ready\r\n"
        b"+OK 2 320\r\n"
        b"+OK 2 messages\r\n1 120\r\n2 200\r\n.\r\n"
        b"+OK 120 octets\r\n"
    )
    assert out.endswith(
        b"+OK message 2 deleted\r\n+OK signing off\r\n",
    )
    # The octets sent for RETR are the octets LIST announced, CRLFs counted (§5).
    first = out.split(b"+OK 120 octets\r\n", 1)[1].split(b"+OK message 1 deleted", 1)[0]
    assert first.endswith(b"\r\n.\r\n")
    assert unstuff(first) == MAILDROP[1]
    assert len(unstuff(first)) == 120
    assert b"\r\n..dot line\r\n" in first  # the dot line went out stuffed
    second = out.split(b"+OK 200 octets\r\n", 1)[1].split(b"+OK message 2 deleted", 1)[0]
    assert len(unstuff(second)) == 200
    assert [type(e).__name__ for e in events] == [
        "User", "Pass", "Stat", "List", "Retr", "Dele", "Retr", "Dele", "Quit",
        "ConnectionClosed",
    ]  # fmt: skip


def test_rfc1939_update_state_after_quit() -> None:
    conn = Connection(SERVER)
    conn.send(Ok(text="ready"))
    conn.receive_data(b"USER a\r\nPASS b\r\nDELE 1\r\nQUIT\r\n")
    for answer in (Ok(), Ok(), Ok()):
        conn.next_event()
        conn.send(answer)
    assert conn.stage.name == "TRANSACTION"
    conn.next_event()
    assert conn.stage is Stage.UPDATE  # on receipt of QUIT, before the answer (§6)
    assert conn.next_event() is PAUSED
    assert conn.send(Err(text="some deleted messages not removed")) == (
        b"-ERR some deleted messages not removed\r\n"
    )
    assert conn.our_state is Phase.CLOSED


def test_quit_in_authorization_skips_update() -> None:
    conn = Connection(SERVER)
    conn.send(Ok())
    conn.receive_data(b"QUIT\r\n")
    conn.next_event()
    assert conn.stage is Stage.AUTHORIZATION
    assert conn.send(Ok(text="bye")) == b"+OK bye\r\n"
    assert conn.our_state is Phase.CLOSED


def test_rfc1939_top_and_uidl_examples() -> None:
    _events, out, error = run([b"USER a\r\nPASS secret\r\nTOP 1 0\r\nUIDL\r\nUIDL 2\r\nUIDL 3\r\n"])
    assert error is None
    assert b"+OK\r\nSubject: one\r\n\r\n.\r\n" in out  # header, blank line, no body lines
    assert b"+OK\r\n1 whqtswO00WBw418f9t5JxYwZ\r\n2 QhdPYR:00WBw1Ph7x7\r\n.\r\n" in out
    assert out.endswith(b"+OK 2 QhdPYR:00WBw1Ph7x7\r\n-ERR no such message\r\n")


def test_rfc2449_capa() -> None:
    _events, out, _error = run([b"CAPA\r\n"])
    assert out == b"+OK Capability list follows\r\n" + CAPABILITIES + b".\r\n"


def test_capa_in_transaction_and_empty_list() -> None:
    conn = Connection(SERVER)
    conn.send(Ok())
    conn.receive_data(b"CAPA\r\n")
    conn.next_event()
    assert conn.send(Ok()) == b"+OK\r\n"
    assert conn.send(EndOfMultiline()) == b".\r\n"


def test_rfc5034_auth_plain_with_challenge() -> None:
    conn = Connection(SERVER)
    assert conn.send(Ok(text="pop server ready")) == b"+OK pop server ready\r\n"
    conn.receive_data(b"AUTH PLAIN\r\n")
    assert conn.next_event() == Auth(mechanism="PLAIN")
    assert conn.send(Challenge()) == b"+ \r\n"
    assert conn.our_state is Phase.AUTH
    conn.receive_data(b"dGVzdAB0ZXN0AHRlc3Q=\r\n")
    assert conn.next_event() == AuthResponse(data=b"test\0test\0test")
    assert conn.send(Ok(text="Maildrop locked and ready")) == b"+OK Maildrop locked and ready\r\n"
    assert conn.stage is Stage.TRANSACTION


def test_rfc5034_auth_plain_initial_response_and_failure_code() -> None:
    conn = Connection(SERVER)
    conn.send(Ok())
    conn.receive_data(b"auth plain dGVzdAB0ZXN0AHRlc3Q=\r\nAUTH PLAIN =\r\n")
    assert conn.next_event() == Auth(mechanism="PLAIN", initial_response=b"test\0test\0test")
    assert conn.send(Err(text="authentication failed", code="AUTH")) == (
        b"-ERR [AUTH] authentication failed\r\n"
    )
    assert conn.stage is Stage.AUTHORIZATION
    assert conn.next_event() == Auth(mechanism="PLAIN", initial_response=b"")


def test_rfc5034_auth_cancel() -> None:
    conn = Connection(SERVER)
    conn.send(Ok())
    conn.receive_data(b"AUTH CRAM-MD5\r\n*\r\n")
    conn.next_event()
    assert conn.send(Challenge(data=b"<1896.697170952@postoffice.example.net>")) == (
        b"+ PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UuZXhhbXBsZS5uZXQ+\r\n"
    )
    assert conn.next_event() == AuthCancel()
    assert conn.send(Err(text="AUTH cancelled")) == b"-ERR AUTH cancelled\r\n"
    assert conn.our_state is Phase.COMMAND


def test_response_codes() -> None:
    conn = Connection(SERVER)
    conn.send(Ok())
    conn.receive_data(b"USER mrose\r\nPASS tanstaaf\r\nUSER mrose\r\nPASS tanstaaf\r\n")
    assert conn.next_event() == User(name="mrose")
    conn.send(Ok())
    assert conn.next_event() == Pass(password="tanstaaf")
    assert conn.send(Err(text="maildrop already locked", code="IN-USE")) == (
        b"-ERR [IN-USE] maildrop already locked\r\n"
    )
    conn.next_event()
    conn.send(Ok())
    conn.next_event()
    assert conn.send(Err(text="try later", code="SYS/TEMP")) == b"-ERR [SYS/TEMP] try later\r\n"


def test_app_answers_every_command() -> None:
    app_conn = Connection(SERVER)
    app = App(app_conn)
    app_conn.send(Ok())
    app_conn.receive_data(b"USER x\r\n")
    event = app_conn.next_event()
    assert isinstance(event, User)
    app.answer(event)
    assert bytes(app.out) == b"+OK x is known\r\n"
