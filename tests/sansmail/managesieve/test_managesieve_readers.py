"""Every command's parse, and every kind of bad input answered NO (never an exception)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from managesieve_helpers import events_of, greeted

from sansmail.managesieve import (
    Authenticate,
    Capability,
    CheckScript,
    Config,
    Connection,
    DeleteScript,
    Event,
    GetScript,
    HaveSpace,
    InvalidCommand,
    ListScripts,
    Logout,
    No,
    Noop,
    Ok,
    Phase,
    PutScript,
    RenameScript,
    SetActive,
    StartTls,
    Unauthenticate,
    name_problem,
    write_string,
)
from sansmail.managesieve._readers import String, Token, scan_line


def _authenticated(**kwargs: object) -> Connection:
    conn = greeted(**kwargs)
    conn.receive_data(b'AUTHENTICATE "PLAIN" "AGEAYg=="\r\n')
    assert events_of(conn) == [Authenticate(mechanism="PLAIN", initial_response=b"\0a\0b")]
    conn.send(Ok())
    return conn


def _one(conn: Connection, data: bytes) -> Event:
    conn.receive_data(data)
    events = events_of(conn)
    assert len(events) == 1, events
    return events[0]


PARSES_UNAUTHENTICATED = [
    (b"CAPABILITY\r\n", Capability()),
    (b"capability\r\n", Capability()),
    (b"STARTTLS\r\n", StartTls()),
    (b"LOGOUT\r\n", Logout()),
    (b"NOOP\r\n", Noop()),
    (b'NOOP "x y"\r\n', Noop(tag="x y")),
    (b'AUTHENTICATE "PLAIN"\r\n', Authenticate(mechanism="PLAIN")),
    (b'AUTHENTICATE "PLAIN" ""\r\n', Authenticate(mechanism="PLAIN", initial_response=b"")),
    (b'AUTHENTICATE "scram-sha-256"\r\n', Authenticate(mechanism="SCRAM-SHA-256")),
]

PARSES_AUTHENTICATED = [
    (b'HAVESPACE "a" 0\r\n', HaveSpace(name="a", size=0)),
    (b'HAVESPACE "a" 4294967295\r\n', HaveSpace(name="a", size=4294967295)),
    (b'PUTSCRIPT "a" "keep;"\r\n', PutScript(name="a", content=b"keep;")),
    (b'PUTSCRIPT "a" {0+}\r\n\r\n', PutScript(name="a", content=b"")),
    (b'PUTSCRIPT "a" {5}\r\nkeep;\r\n', PutScript(name="a", content=b"keep;")),
    (b"PUTSCRIPT {1+}\r\na {2+}\r\n\r\n\r\n", PutScript(name="a", content=b"\r\n")),
    (b'PUTSCRIPT "a\\\\b\\"c" ""\r\n', PutScript(name='a\\b"c', content=b"")),
    (b'CHECKSCRIPT "keep;"\r\n', CheckScript(content=b"keep;")),
    (b"CHECKSCRIPT {3+}\r\n\xff\x00\r\r\n", CheckScript(content=b"\xff\x00\r")),
    (b"LISTSCRIPTS\r\n", ListScripts()),
    (b'SETACTIVE "a"\r\n', SetActive(name="a")),
    (b'SETACTIVE ""\r\n', SetActive(name="")),
    (b'GETSCRIPT "\xc3\xa9t\xc3\xa9"\r\n', GetScript(name="\u00e9t\u00e9")),
    (b'DELETESCRIPT "a"\r\n', DeleteScript(name="a")),
    (b'RENAMESCRIPT "a" "b"\r\n', RenameScript(old_name="a", new_name="b")),
    (b"UNAUTHENTICATE\r\n", Unauthenticate()),
    (b"Capability\r\n", Capability()),
    (b"NOOP\r\n", Noop()),
    (b"LOGOUT\r\n", Logout()),
]


@pytest.mark.parametrize(("data", "event"), PARSES_UNAUTHENTICATED)
def test_parses_before_authentication(data: bytes, event: Event) -> None:
    assert _one(greeted(), data) == event


@pytest.mark.parametrize(("data", "event"), PARSES_AUTHENTICATED)
def test_parses_once_authenticated(data: bytes, event: Event) -> None:
    assert _one(_authenticated(), data) == event
    # Byte by byte, the same event.
    conn = _authenticated()
    got: list[Event] = []
    for i in range(len(data)):
        conn.receive_data(data[i : i + 1])
        got += events_of(conn)
    assert got == [event]


REFUSED_UNAUTHENTICATED = [
    b"FOO\r\n",
    b"\r\n",
    b" NOOP\r\n",
    b"NOOP  \r\n",
    b"NOOP \r\n",
    b'"NOOP"\r\n',
    b"NOOP x\r\n",
    b'NOOP "a" "b"\r\n',
    b'NOOP "\\n"\r\n',  # only \" and \\ may be escaped
    b'NOOP "unterminated\r\n',
    b'NOOP "\xff"\r\n',
    b"NOOP {3\r\n",
    b"NOOP {99999999999+}\r\n",
    b'PUTSCRIPT "a" {5+}\r\nkeep;\r\n',  # not before authentication; literal dropped
    b"LISTSCRIPTS\r\n",
    b"UNAUTHENTICATE\r\n",
    b"AUTHENTICATE PLAIN\r\n",  # the mechanism is a string
    b'AUTHENTICATE "PL AIN"\r\n',
    b'AUTHENTICATE "PLAIN" "not base64!"\r\n',
    b'AUTHENTICATE "PLAIN" "a" "b"\r\n',
    b"STARTTLS now\r\n",
    b"CAPABILITY {1+}\r\nx\r\n",
    b"FOO {4+}\r\nLIST\r\n",
]

REFUSED_AUTHENTICATED = [
    b'AUTHENTICATE "PLAIN"\r\n',
    b"STARTTLS\r\n",
    b'HAVESPACE "a"\r\n',
    b'HAVESPACE "a" -1\r\n',
    b'HAVESPACE "a" 4294967296\r\n',
    b'HAVESPACE "a" "1"\r\n',
    b"HAVESPACE a 1\r\n",
    b'PUTSCRIPT "a"\r\n',
    b'PUTSCRIPT "" "keep;"\r\n',
    b'PUTSCRIPT "a\x01b" "keep;"\r\n',
    b'PUTSCRIPT "a\xc2\x85" "keep;"\r\n',  # U+0085, §1.6
    b'PUTSCRIPT "e\xcc\x81" "keep;"\r\n',  # not NFC
    b'PUTSCRIPT "\xe2\x80\xa8" "keep;"\r\n',  # U+2028
    b'PUTSCRIPT "' + b"a" * 513 + b'" "keep;"\r\n',
    b'PUTSCRIPT "a" {5+}\r\nkeep;x\r\n',  # no space after the literal
    b'PUTSCRIPT "a" {5+} "b"\r\n',
    b"CHECKSCRIPT\r\n",
    b"LISTSCRIPTS x\r\n",
    b"SETACTIVE\r\n",
    b'GETSCRIPT ""\r\n',
    b'DELETESCRIPT "a" "b"\r\n',
    b'RENAMESCRIPT "a"\r\n',
    b'RENAMESCRIPT "a" ""\r\n',
]


def _refused(conn: Connection, data: bytes) -> None:
    event = _one(conn, data)
    assert isinstance(event, InvalidCommand), event
    assert isinstance(event.reply_hint, No)
    assert conn.send(event.reply_hint).startswith(b"NO ")
    assert conn.our_state is Phase.COMMAND
    # The session goes on: the next command is read normally.
    assert _one(conn, b"NOOP\r\n") == Noop()


@pytest.mark.parametrize("data", REFUSED_UNAUTHENTICATED)
def test_refused_before_authentication(data: bytes) -> None:
    _refused(greeted(), data)


@pytest.mark.parametrize("data", REFUSED_AUTHENTICATED)
def test_refused_once_authenticated(data: bytes) -> None:
    _refused(_authenticated(), data)


def test_oversized_literal_is_dropped_and_answered_maxsize() -> None:
    conn = _authenticated(config=Config(max_literal=1024))
    conn.receive_data(b'PUTSCRIPT "big" {2000+}\r\n')
    assert events_of(conn) == []
    for _ in range(20):
        conn.receive_data(b"x" * 100)
        assert events_of(conn) == []
        assert len(conn.trailing_data[0]) == 0  # dropped as it arrives, never kept
    conn.receive_data(b"\r\n")
    (event,) = events_of(conn)
    assert isinstance(event, InvalidCommand)
    assert conn.send(event.reply_hint) == b'NO (QUOTA/MAXSIZE) "too large"\r\n'
    # Within the limit, the same command is read.
    conn.receive_data(b'PUTSCRIPT "big" {1024+}\r\n' + b"x" * 1024 + b"\r\n")
    assert events_of(conn) == [PutScript(name="big", content=b"x" * 1024)]


def test_literals_of_one_command_count_together() -> None:
    conn = _authenticated(config=Config(max_literal=1024))
    conn.receive_data(b"RENAMESCRIPT {600+}\r\n" + b"a" * 600 + b" {600+}\r\n" + b"b" * 600)
    conn.receive_data(b"\r\n")
    (event,) = events_of(conn)
    assert isinstance(event, InvalidCommand)


def test_unauthenticated_literal_is_never_buffered() -> None:
    conn = greeted()
    conn.receive_data(b'PUTSCRIPT "a" {100000+}\r\n')
    conn.receive_data(b"x" * 100000)
    assert events_of(conn) == []
    assert conn.trailing_data[0] == b""
    conn.receive_data(b"\r\n")
    (event,) = events_of(conn)
    assert isinstance(event, InvalidCommand)
    assert event.reply_hint.text == "authenticate first"


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("ok", None),
        ("with space", None),
        ("", "empty script name"),
        ("a\tb", "control character in a script name"),
        ("a\x7f", "control character in a script name"),
        ("a\ufeff", "control character in a script name"),
        ("e\u0301", "script name not in Unicode normalization form C"),
    ],
)
def test_name_rules(name: str, problem: str | None) -> None:
    assert name_problem(name) == problem


@given(value=st.binary(max_size=1500))
def test_strings_round_trip(value: bytes) -> None:
    # What the writer quotes (or makes a literal of), the reader gives back unchanged.
    tokens: list[Token] = []
    wire = b"NOOP " + write_string(value)
    literal = scan_line(wire.split(b"\r\n", 1)[0], tokens, continuation=False)
    if literal is None:
        assert tokens[1] == value
        assert type(tokens[1]) is String
    else:
        assert literal == len(value)
        assert wire.endswith(b"\r\n" + value)
