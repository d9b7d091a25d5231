"""The command readers: every command whole, byte by byte and with trailing data; the
refusals; and hypothesis on random lines."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pop3_helpers import GREETING, run

from sansmail import NEED_DATA, PAUSED, SERVER
from sansmail.pop3 import (
    Auth,
    AuthCancel,
    AuthResponse,
    Capa,
    Connection,
    Dele,
    Event,
    InvalidCommand,
    List,
    Noop,
    Ok,
    Pass,
    Quit,
    Retr,
    Rset,
    Stat,
    Stls,
    Top,
    Uidl,
    User,
)
from sansmail.pop3._readers import CommandError, read_auth_response, read_command
from sansmail.pop3._state import Stage

AUTHORIZATION = [
    (b"USER mrose", User(name="mrose")),
    (b"user Mr\xc3\xb6se", User(name="Mr\u00f6se")),
    (b"AUTH PLAIN", Auth(mechanism="PLAIN")),
    (b"AUTH scram-sha-256 =", Auth(mechanism="SCRAM-SHA-256", initial_response=b"")),
    (b"AUTH PLAIN AGEAYg==", Auth(mechanism="PLAIN", initial_response=b"\0a\0b")),
    (b"CAPA", Capa()),
    (b"STLS", Stls()),
    (b"QUIT", Quit()),
]
TRANSACTION = [
    (b"STAT", Stat()),
    (b"LIST", List()),
    (b"list 12", List(msg=12)),
    (b"RETR 1", Retr(msg=1)),
    (b"TOP 3 0", Top(msg=3, lines=0)),
    (b"TOP 3 10", Top(msg=3, lines=10)),
    (b"DELE 007", Dele(msg=7)),
    (b"NOOP", Noop()),
    (b"RSET", Rset()),
    (b"UIDL", Uidl()),
    (b"UIDL 2", Uidl(msg=2)),
    (b"CAPA", Capa()),
    (b"QUIT", Quit()),
]


@pytest.mark.parametrize(("line", "expected"), AUTHORIZATION)
def test_authorization_commands(line: bytes, expected: Event) -> None:
    assert (
        read_command(line, Stage.AUTHORIZATION, user_accepted=False, tls_active=False) == expected
    )


@pytest.mark.parametrize(("line", "expected"), TRANSACTION)
def test_transaction_commands(line: bytes, expected: Event) -> None:
    assert read_command(line, Stage.TRANSACTION, user_accepted=False, tls_active=False) == expected


def test_pass_keeps_spaces() -> None:
    # RFC 1939 §7: the server may treat spaces in the argument as part of the password.
    event = read_command(b"PASS a b  c ", Stage.AUTHORIZATION, user_accepted=True, tls_active=False)
    assert event == Pass(password="a b  c ")


@pytest.mark.parametrize(
    ("line", "stage"),
    [
        (b"APOP mrose c4c9334bac560ecc979e58001b3e22fb", Stage.AUTHORIZATION),
        (b"XYZZY", Stage.TRANSACTION),
        (b"", Stage.TRANSACTION),
        (b" STAT", Stage.TRANSACTION),
        (b"STAT 1", Stage.TRANSACTION),
        (b"STAT ", Stage.TRANSACTION),
        (b"LIST ", Stage.TRANSACTION),
        (b"LIST 0", Stage.TRANSACTION),
        (b"LIST -1", Stage.TRANSACTION),
        (b"LIST +1", Stage.TRANSACTION),
        (b"LIST 1 2", Stage.TRANSACTION),
        (b"LIST 12345678901", Stage.TRANSACTION),
        (b"LIST \xd9\xa3", Stage.TRANSACTION),  # an Arabic-Indic digit
        (b"RETR", Stage.TRANSACTION),
        (b"RETR 1  ", Stage.TRANSACTION),
        (b"TOP 1", Stage.TRANSACTION),
        (b"TOP 0 1", Stage.TRANSACTION),
        (b"TOP 1 -1", Stage.TRANSACTION),
        (b"DELE x", Stage.TRANSACTION),
        (b"USER", Stage.AUTHORIZATION),
        (b"USER ", Stage.AUTHORIZATION),
        (b"USER a b", Stage.AUTHORIZATION),
        (b"USER \xff", Stage.AUTHORIZATION),
        (b"USER a\0b", Stage.AUTHORIZATION),
        (b"PASS a\0b", Stage.AUTHORIZATION),
        (b"AUTH", Stage.AUTHORIZATION),
        (b"AUTH PLAIN abc", Stage.AUTHORIZATION),  # not base64
        (b"AUTH PLAIN QR==", Stage.AUTHORIZATION),  # not canonical
        (b"AUTH PLAIN a b", Stage.AUTHORIZATION),
        (b"AUTH PL@IN", Stage.AUTHORIZATION),
        (b"AUTH ABCDEFGHIJKLMNOPQRSTU", Stage.AUTHORIZATION),  # 21 characters
        # Commands outside their state (RFC 1939 §4, §5; RFC 2595 §4; RFC 5034 §4).
        (b"STAT", Stage.AUTHORIZATION),
        (b"NOOP", Stage.AUTHORIZATION),
        (b"USER a", Stage.TRANSACTION),
        (b"STLS", Stage.TRANSACTION),
        (b"AUTH PLAIN", Stage.TRANSACTION),
        (b"QUIT", Stage.UPDATE),
    ],
)
def test_refusals(line: bytes, stage: Stage) -> None:
    with pytest.raises(CommandError) as info:
        read_command(line, stage, user_accepted=True, tls_active=False)
    assert info.value.reply.text


def test_pass_needs_user_and_stls_happens_once() -> None:
    with pytest.raises(CommandError, match="USER"):
        read_command(b"PASS x", Stage.AUTHORIZATION, user_accepted=False, tls_active=False)
    with pytest.raises(CommandError, match="TLS"):
        read_command(b"STLS", Stage.AUTHORIZATION, user_accepted=False, tls_active=True)


def test_auth_responses() -> None:
    assert read_auth_response(b"*") == AuthCancel()
    assert read_auth_response(b"") == AuthResponse(data=b"")
    assert read_auth_response(b"dGVzdA==") == AuthResponse(data=b"test")
    for bad in (b"=", b"dGVzdA", b"dGVz dA==", b"**", b"dGVzdA==\t"):
        with pytest.raises(CommandError):
            read_auth_response(bad)


_PREFIXES = [b"", b"USER ", b"PASS ", b"AUTH ", b"AUTH PLAIN ", b"LIST ", b"TOP 1 ", b"UIDL "]


@settings(deadline=None, max_examples=500)
@given(
    st.sampled_from(_PREFIXES),
    st.binary(max_size=40),
    st.sampled_from(list(Stage)),
    st.booleans(),
    st.booleans(),
)
def test_random_lines_only_raise_command_error(
    prefix: bytes, rest: bytes, stage: Stage, user: bool, tls: bool
) -> None:
    # What the line buffer hands over never holds CR or LF.
    line = (prefix + rest).replace(b"\r", b"").replace(b"\n", b"")
    event: Event | CommandError
    try:
        event = read_command(line, stage, user_accepted=user, tls_active=tls)
    except CommandError as exc:
        event = exc
    if isinstance(event, CommandError):
        assert event.reply.text
    else:
        assert isinstance(event, Event)


@settings(deadline=None, max_examples=200)
@given(st.integers(min_value=1, max_value=9_999_999_999))
def test_message_numbers_round_trip(number: int) -> None:
    line = b"RETR %d" % number
    assert read_command(line, Stage.TRANSACTION, user_accepted=False, tls_active=False) == Retr(
        msg=number
    )


# --- through the connection: whole, byte by byte, with trailing data -----------------------


def _in_transaction() -> Connection:
    conn = Connection(SERVER)
    conn.send(GREETING)
    conn.receive_data(b"USER a\r\nPASS b\r\n")
    for _ in range(2):
        conn.next_event()
        conn.send(Ok())
    assert conn.next_event() is NEED_DATA
    return conn


def _feed(conn: Connection, data: bytes, *, bytewise: bool) -> Event:
    pieces = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    for piece in pieces:
        event = conn.next_event()
        assert event is NEED_DATA
        conn.receive_data(piece)
    event = conn.next_event()
    assert isinstance(event, Event)
    return event


@pytest.mark.parametrize("bytewise", [False, True])
@pytest.mark.parametrize(("line", "expected"), TRANSACTION)
def test_connection_reads_each_command(line: bytes, expected: Event, bytewise: bool) -> None:
    conn = _in_transaction()
    assert _feed(conn, line + b"\r\n", bytewise=bytewise) == expected


@pytest.mark.parametrize(("line", "expected"), TRANSACTION)
def test_trailing_data_waits_for_the_answer(line: bytes, expected: Event) -> None:
    conn = _in_transaction()
    conn.receive_data(line + b"\r\nNOOP\r\ngarbage")
    assert conn.next_event() == expected
    assert conn.next_event() is PAUSED
    assert conn.trailing_data == (b"NOOP\r\ngarbage", False)


def test_invalid_command_event_carries_the_line() -> None:
    conn = _in_transaction()
    conn.receive_data(b"LIST 0\r\n")
    event = conn.next_event()
    assert isinstance(event, InvalidCommand)
    assert event.line == b"LIST 0"
    assert conn.send(event.reply_hint) == b"-ERR no such message\r\n"


@pytest.mark.parametrize("control", [b"\x01", b"\x1b", b"\x7f", b"\t"])
def test_control_characters_in_arguments_are_refused(control: bytes) -> None:
    # RFC 1939 §3: arguments are printable; a control would reach logs and replies.
    events, out, error = run([b"USER al" + control + b"ice\r\nQUIT\r\n"])
    assert error is None
    assert isinstance(events[0], InvalidCommand)
    assert events[0].reason == "control character in an argument"
    assert out.startswith(b"-ERR invalid argument\r\n")
