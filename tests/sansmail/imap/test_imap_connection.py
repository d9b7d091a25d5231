"""The connection: greeting, lockstep, states moved by the application's responses,
AUTHENTICATE and IDLE exchanges, STARTTLS failing closed, LOGOUT, ENABLE, and errors."""

from __future__ import annotations

import pytest
from imap_helpers import CAPABILITIES, GREETING, commands, run, server

from sansmail import CLIENT, NEED_DATA, PAUSED, SERVER, LocalProtocolError, RemoteProtocolError
from sansmail.imap import (
    AuthCancel,
    Authenticate,
    AuthResponse,
    Capability,
    Config,
    Connection,
    ConnectionClosed,
    Continuation,
    FetchResponse,
    IdleDone,
    InvalidCommand,
    Login,
    Noop,
    Phase,
    ResponseCode,
    Select,
    Stage,
    Tagged,
    Untagged,
    UntaggedStatus,
)


def greeted(**kwargs: object) -> Connection:
    conn = Connection(SERVER, **kwargs)  # type: ignore[arg-type]
    conn.send(GREETING)
    return conn


def feed(conn: Connection, data: bytes) -> object:
    conn.receive_data(data)
    return conn.next_event()


def test_roles_and_client_role() -> None:
    with pytest.raises(NotImplementedError):
        Connection(CLIENT)
    conn = Connection(SERVER)
    assert conn.their_role is CLIENT
    assert conn.our_state is Phase.GREETING


def test_greeting_comes_first_and_early_bytes_wait() -> None:
    conn = Connection(SERVER)
    conn.receive_data(b"a NOOP\r\n")
    assert conn.next_event() is PAUSED
    with pytest.raises(LocalProtocolError):
        Connection(SERVER).send(Untagged.exists(1))
    with pytest.raises(LocalProtocolError):
        Connection(SERVER).send(Tagged(tag="a", status="OK", text="x"))
    assert conn.send(GREETING).startswith(b"* OK [CAPABILITY IMAP4rev1 IMAP4rev2 ")
    assert conn.capabilities == frozenset(c.upper() for c in CAPABILITIES)
    assert conn.next_event() == Noop(tag="a")


def test_preauth_and_bye_greetings() -> None:
    conn = Connection(SERVER)
    conn.send(UntaggedStatus(status="PREAUTH", text="welcome"))
    assert conn.stage is Stage.AUTHENTICATED
    conn = Connection(SERVER)
    assert conn.send(UntaggedStatus(status="BYE", text="busy")) == b"* BYE busy\r\n"
    assert conn.our_state is Phase.CLOSED
    with pytest.raises(LocalProtocolError):
        conn.send(UntaggedStatus(status="OK", text="changed my mind"))


def test_lockstep_pauses_until_the_tagged_response() -> None:
    conn = greeted()
    conn.receive_data(b"a NOOP\r\nb CAPABILITY\r\n")
    assert conn.next_event() == Noop(tag="a")
    assert conn.next_event() is PAUSED
    assert conn.pending == Noop(tag="a")
    conn.send(Untagged.exists(3))  # untagged data any time
    conn.send(Untagged(keyword="RECENT", number=1))
    with pytest.raises(LocalProtocolError):
        conn.send(Tagged(tag="b", status="OK", text="wrong tag"))
    conn = greeted()
    conn.receive_data(b"a NOOP\r\nb CAPABILITY\r\n")
    conn.next_event()
    assert conn.send(Tagged(tag="a", status="OK", text="done")) == b"a OK done\r\n"
    assert conn.next_event() == Capability(tag="b")
    assert conn.send(Untagged.capability(["IMAP4rev1"])) == b"* CAPABILITY IMAP4rev1\r\n"
    assert conn.capabilities == {"IMAP4REV1"}
    conn.send(Tagged(tag="b", status="OK", text="done"))
    assert conn.next_event() is NEED_DATA
    with pytest.raises(LocalProtocolError):
        conn.send(Tagged(tag="b", status="OK", text="again"))
    assert conn.our_state is Phase.ERROR


def test_untagged_data_between_commands() -> None:
    conn = greeted()
    assert conn.send(Untagged.exists(4)) == b"* 4 EXISTS\r\n"
    assert conn.send(UntaggedStatus(status="OK", code=ResponseCode(name="ALERT"), text="hi")) == (
        b"* OK [ALERT] hi\r\n"
    )
    with pytest.raises(LocalProtocolError):
        greeted().send(UntaggedStatus(status="PREAUTH", text="no"))
    with pytest.raises(LocalProtocolError):
        greeted().send(Continuation(text="nobody asked"))
    with pytest.raises(LocalProtocolError):
        greeted().send(Untagged.enabled(["IMAP4REV2"]))


@pytest.mark.parametrize(
    ("start", "line", "status", "end"),
    [
        ("not-authenticated", b"a LOGIN u p", "OK", Stage.AUTHENTICATED),
        ("not-authenticated", b"a LOGIN u p", "NO", Stage.NOT_AUTHENTICATED),
        ("not-authenticated", b"a AUTHENTICATE PLAIN AHUAcA==", "OK", Stage.AUTHENTICATED),
        ("authenticated", b"a SELECT INBOX", "OK", Stage.SELECTED),
        ("authenticated", b"a SELECT INBOX", "NO", Stage.AUTHENTICATED),
        ("authenticated", b"a EXAMINE INBOX", "OK", Stage.SELECTED),
        ("selected", b"a SELECT nope", "NO", Stage.AUTHENTICATED),
        ("selected", b"a SELECT other", "BAD", Stage.SELECTED),
        ("selected", b"a SELECT other", "OK", Stage.SELECTED),
        ("selected", b"a CLOSE", "OK", Stage.AUTHENTICATED),
        ("selected", b"a UNSELECT", "OK", Stage.AUTHENTICATED),
        ("selected", b"a UNSELECT", "NO", Stage.SELECTED),
        ("selected", b"a NOOP", "OK", Stage.SELECTED),
    ],
)
def test_tagged_responses_move_the_state(start: str, line: bytes, status: str, end: Stage) -> None:
    conn = server(start)
    event = feed(conn, line + b"\r\n")
    assert not isinstance(event, InvalidCommand), event
    conn.send(Tagged(tag="a", status=status, text="x"))  # type: ignore[arg-type]
    assert conn.stage is end


def test_authenticate_exchange() -> None:
    conn = greeted()
    assert feed(conn, b"a AUTHENTICATE PLAIN\r\n") == Authenticate(tag="a", mechanism="PLAIN")
    assert conn.send(Continuation(data=b"")) == b"+ \r\n"
    assert conn.our_state is Phase.AUTH
    with pytest.raises(LocalProtocolError):
        greeted().send(Continuation(data=b"x"))
    assert feed(conn, b"AGZyZWQAc2VjcmV0\r\n") == AuthResponse(data=b"\0fred\0secret")
    assert conn.send(Continuation(data=b"more?")) == b"+ bW9yZT8=\r\n"
    assert feed(conn, b"\r\n") == AuthResponse(data=b"")
    conn.send(Tagged(tag="a", status="OK", text="welcome"))
    assert conn.stage is Stage.AUTHENTICATED


def test_authenticate_cancel_and_garbage() -> None:
    conn = greeted()
    feed(conn, b"a AUTHENTICATE PLAIN\r\n")
    conn.send(Continuation(data=b""))
    assert feed(conn, b"*\r\n") == AuthCancel()
    conn.send(Tagged(tag="a", status="BAD", text="cancelled"))
    assert conn.stage is Stage.NOT_AUTHENTICATED
    feed(conn, b"b AUTHENTICATE PLAIN\r\n")
    conn.send(Continuation(data=b""))
    event = feed(conn, b"not base64!\r\n")
    assert isinstance(event, InvalidCommand)
    assert event.reply_hint == Tagged(
        tag="b", status="BAD", text="AUTHENTICATE authentication response is not base64"
    )
    conn.send(event.reply_hint)
    assert conn.stage is Stage.NOT_AUTHENTICATED
    assert feed(conn, b"c NOOP\r\n") == Noop(tag="c")


def test_idle_exchange() -> None:
    conn = server("selected")
    assert feed(conn, b"i IDLE\r\n").tag == "i"  # type: ignore[union-attr]
    assert conn.send(Continuation(text="idling")) == b"+ idling\r\n"
    assert conn.next_event() is NEED_DATA
    assert conn.send(Untagged.exists(5)) == b"* 5 EXISTS\r\n"
    assert conn.send(FetchResponse(number=5, items=(("FLAGS", []),))) == b"* 5 FETCH (FLAGS ())\r\n"
    with pytest.raises(LocalProtocolError):
        server("selected").send(Tagged(tag="i", status="OK", text="too early"))
    assert feed(conn, b"done\r\n") == IdleDone()
    twice = server("selected")
    feed(twice, b"i IDLE\r\n")
    twice.send(Continuation(text="idling"))
    feed(twice, b"DONE\r\n")
    with pytest.raises(LocalProtocolError):
        twice.send(Continuation(text="idling again"))
    conn.send(Tagged(tag="i", status="OK", text="idle done"))
    assert feed(conn, b"n NOOP\r\n") == Noop(tag="n")


def test_idle_interrupted_by_something_else_is_bad() -> None:
    conn = server("selected")
    feed(conn, b"i IDLE\r\n")
    conn.send(Continuation(text="idling"))
    event = feed(conn, b"n NOOP\r\n")
    assert isinstance(event, InvalidCommand)
    assert event.reply_hint == Tagged(tag="i", status="BAD", text="IDLE expected DONE")
    conn.send(event.reply_hint)
    assert conn.our_state is Phase.COMMAND


def test_idle_refused_outright() -> None:
    conn = server("selected")
    feed(conn, b"i IDLE\r\n")
    conn.send(Tagged(tag="i", status="NO", text="not now"))
    assert feed(conn, b"n NOOP\r\n") == Noop(tag="n")


def test_starttls_fails_closed() -> None:
    conn = greeted()
    feed(conn, b"a STARTTLS\r\n")
    conn.send(Tagged(tag="a", status="OK", text="begin TLS"))
    assert conn.our_state is Phase.TLS_PENDING
    assert conn.next_event() is PAUSED
    with pytest.raises(LocalProtocolError):
        conn.send(Untagged.exists(1))
    conn = greeted()
    conn.receive_data(b"a STARTTLS\r\nb LOGIN fred secret\r\n")
    conn.next_event()
    conn.send(Tagged(tag="a", status="OK", text="begin TLS"))
    with pytest.raises(RemoteProtocolError) as info:
        conn.start_tls()
    assert info.value.reply_hint == UntaggedStatus(
        status="BYE", text="data sent before the TLS handshake, closing"
    )
    assert conn.send(info.value.reply_hint).startswith(b"* BYE")  # type: ignore[arg-type]


def test_starttls_switch_forgets_capabilities() -> None:
    conn = greeted()
    feed(conn, b"a STARTTLS\r\n")
    conn.send(Tagged(tag="a", status="OK", text="begin TLS"))
    conn.start_tls()
    assert conn.tls_active
    assert conn.capabilities == frozenset()
    assert conn.stage is Stage.NOT_AUTHENTICATED
    event = feed(conn, b"b STARTTLS\r\n")
    assert isinstance(event, InvalidCommand)
    assert event.reason == "TLS is already active"
    with pytest.raises(LocalProtocolError):
        greeted().start_tls()


def test_logout_needs_bye_then_ok_and_then_nothing() -> None:
    conn = greeted()
    feed(conn, b"a LOGOUT\r\n")
    with pytest.raises(LocalProtocolError):
        conn.send(Tagged(tag="a", status="OK", text="no bye"))
    conn = greeted()
    conn.receive_data(b"a LOGOUT\r\nb NOOP\r\n")
    conn.next_event()
    conn.send(UntaggedStatus(status="BYE", text="bye"))
    assert conn.our_state is Phase.REPLY
    conn.send(Tagged(tag="a", status="OK", text="done"))
    assert conn.stage is Stage.LOGOUT
    assert conn.our_state is Phase.CLOSED
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.reply_hint is None
    conn = greeted()
    feed(conn, b"a LOGOUT\r\n")
    conn.send(UntaggedStatus(status="BYE", text="bye"))
    conn.send(Tagged(tag="a", status="OK", text="done"))
    assert conn.next_event() is PAUSED
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()


def test_bye_from_the_application_ends_the_session_anywhere() -> None:
    for state in ["not-authenticated", "authenticated", "selected"]:
        conn = server(state)
        conn.send(UntaggedStatus(status="BYE", text="autologout"))
        assert conn.our_state is Phase.CLOSED
        with pytest.raises(LocalProtocolError):
            conn.send(Untagged.exists(1))
    conn = greeted()
    feed(conn, b"a LOGIN {5}\r\n")
    conn.send(UntaggedStatus(status="BYE", text="shutting down"))
    assert conn.our_state is Phase.CLOSED


def test_invalid_command_budget_ends_with_bye() -> None:
    config = Config(max_invalid_commands=3)
    events, out, error, conn = run([b"a BOGUS\r\n" * 5], config=config)
    assert error is not None
    assert len(commands(events)) == 3
    assert out.endswith(b"* BYE too many invalid commands, closing\r\n")
    assert conn.their_state is Phase.ERROR
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.send(Untagged.exists(1))


def test_tagless_garbage_gets_untagged_bad() -> None:
    conn = greeted()
    event = feed(conn, b"\r\n")
    assert isinstance(event, InvalidCommand)
    assert event.tag is None
    assert conn.next_event() is PAUSED
    assert conn.send(event.reply_hint) == b"* BAD no tag\r\n"
    assert feed(conn, b"a NOOP\r\n") == Noop(tag="a")


def test_eof() -> None:
    conn = greeted()
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()
    assert conn.next_event() == ConnectionClosed()
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"more")


def test_enable_switches_mailbox_names_to_utf8() -> None:
    conn = server("authenticated")
    assert not conn.imap4rev2
    assert not conn.utf8
    before = conn.send(Untagged.mailbox_list(attributes=[], delimiter="/", mailbox="Entwürfe"))
    assert before == b'* LIST () "/" "Entw&APw-rfe"\r\n'
    feed(conn, b"e ENABLE IMAP4rev2\r\n")
    assert conn.send(Untagged.enabled(["IMAP4rev2"])) == b"* ENABLED IMAP4rev2\r\n"
    conn.send(Tagged(tag="e", status="OK", text="enabled"))
    assert conn.imap4rev2
    assert conn.utf8
    assert conn.enabled == {"IMAP4REV2"}
    after = conn.send(Untagged.mailbox_list(attributes=[], delimiter="/", mailbox="Entwürfe"))
    assert after == '* LIST () "/" "Entwürfe"\r\n'.encode()
    assert feed(conn, 'a SELECT "Entwürfe"\r\n'.encode()) == Select(tag="a", mailbox="Entwürfe")


def test_enable_without_enabled_response_changes_nothing() -> None:
    conn = server("authenticated")
    feed(conn, b"e ENABLE IMAP4rev2\r\n")
    conn.send(Tagged(tag="e", status="OK", text="nothing enabled"))
    assert not conn.utf8


def test_literal_plus_is_learned_from_the_capability_response() -> None:
    conn = Connection(SERVER)
    conn.send(UntaggedStatus(status="OK", text="hi"))
    conn.receive_data(b"a LOGIN {5000+}\r\n")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    conn = Connection(SERVER)
    conn.send(UntaggedStatus(status="OK", text="hi"))
    conn.receive_data(b"c CAPABILITY\r\n")
    conn.next_event()
    conn.send(Untagged.capability(["IMAP4rev1", "LITERAL+"]))
    conn.send(Tagged(tag="c", status="OK", text="done"))
    conn.receive_data(b"a LOGIN {5000+}\r\n" + b"x" * 5000 + b" y\r\n")
    assert conn.next_event() == Login(tag="a", userid="x" * 5000, password="y")


def test_send_failed_breaks_our_side() -> None:
    conn = greeted()
    conn.send_failed()
    with pytest.raises(LocalProtocolError):
        conn.send(Untagged.exists(1))
    with pytest.raises(LocalProtocolError):
        conn.next_event()


def test_transcript_output_of_a_whole_session() -> None:
    script = b"a LOGIN fred secret\r\nb SELECT INBOX\r\nc LOGOUT\r\n"
    events, out, error, conn = run([script])
    assert error is None
    assert commands(events) == [
        Login(tag="a", userid="fred", password="secret"),
        Select(tag="b", mailbox="INBOX"),
        commands(events)[2],
    ]
    assert out.endswith(b"a OK done\r\nb OK done\r\n* BYE bye\r\nc OK done\r\n")
    assert conn.stage is Stage.LOGOUT
