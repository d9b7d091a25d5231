"""The state tables, enumerated: every (stage, command), every (command, response)."""

from __future__ import annotations

import pytest

import sansmail.pop3
from sansmail import SERVER, LocalProtocolError
from sansmail.pop3 import (
    Auth,
    AuthCancel,
    AuthResponse,
    Capa,
    Challenge,
    Connection,
    ConnectionClosed,
    Dele,
    Err,
    Event,
    InvalidCommand,
    List,
    Noop,
    Ok,
    Pass,
    Phase,
    Quit,
    Retr,
    Rset,
    Stage,
    Stat,
    Stls,
    Top,
    Uidl,
    User,
)
from sansmail.pop3._state import ALLOWED, COMMANDS, RECEIVE, SEND, STAGE_AFTER, is_multiline

# One line per command; PASS is sent after an accepted USER.
LINES: dict[type[Event], bytes] = {
    User: b"USER a",
    Pass: b"PASS b",
    Auth: b"AUTH PLAIN",
    Capa: b"CAPA",
    Stls: b"STLS",
    Stat: b"STAT",
    List: b"LIST",
    Retr: b"RETR 1",
    Top: b"TOP 1 1",
    Dele: b"DELE 1",
    Noop: b"NOOP",
    Rset: b"RSET",
    Uidl: b"UIDL",
    Quit: b"QUIT",
}

# RFC 1939 §4, §5, §7; RFC 2449 §5; RFC 2595 §4; RFC 5034 §4, written out by hand.
EXPECTED = {
    Stage.AUTHORIZATION: {User, Pass, Auth, Capa, Stls, Quit},
    Stage.TRANSACTION: {Stat, List, Retr, Top, Dele, Noop, Rset, Uidl, Capa, Quit},
    Stage.UPDATE: set(),
}


def test_allowed_table_matches_the_rfcs() -> None:
    assert set(LINES) == set(COMMANDS)
    for stage in Stage:
        assert {kind for kind in COMMANDS if (stage, kind) in ALLOWED} == EXPECTED[stage]


def _connection(stage: Stage) -> Connection:
    conn = Connection(SERVER)
    conn.send(Ok())
    if stage is Stage.TRANSACTION:
        conn.receive_data(b"USER a\r\nPASS b\r\n")
        for _ in range(2):
            conn.next_event()
            conn.send(Ok())
    return conn


@pytest.mark.parametrize("stage", [Stage.AUTHORIZATION, Stage.TRANSACTION])
@pytest.mark.parametrize("kind", COMMANDS)
def test_every_command_in_every_stage(stage: Stage, kind: type[Event]) -> None:
    conn = _connection(stage)
    if kind is Pass and stage is Stage.AUTHORIZATION:
        conn.receive_data(b"USER a\r\n")
        conn.next_event()
        conn.send(Ok())
    conn.receive_data(LINES[kind] + b"\r\n")
    event = conn.next_event()
    if kind in EXPECTED[stage]:
        assert type(event) is kind
    else:
        assert isinstance(event, InvalidCommand)
        assert conn.send(event.reply_hint).startswith(b"-ERR ")
    assert conn.our_state is not Phase.ERROR


def test_receive_table_phases() -> None:
    for (phase, kind), after in RECEIVE.items():
        assert phase in (Phase.COMMAND, Phase.AUTH, Phase.CLOSED)
        if kind is ConnectionClosed:
            assert after is Phase.CLOSED
        else:
            assert after is Phase.REPLY


def _answerable(kind: type[Event]) -> Connection:
    """A connection owing the answer to a `kind` event."""
    conn = _connection(Stage.AUTHORIZATION)
    script = {
        AuthResponse: (b"AUTH PLAIN\r\n", Challenge(), b"\r\n"),
        AuthCancel: (b"AUTH PLAIN\r\n", Challenge(), b"*\r\n"),
        InvalidCommand: (b"BOGUS\r\n", None, None),
    }
    if kind in script:
        first, answer, second = script[kind]
        conn.receive_data(first)
        if answer is not None and second is not None:
            conn.next_event()
            conn.send(answer)
            conn.receive_data(second)
    else:
        if kind in EXPECTED[Stage.TRANSACTION] - EXPECTED[Stage.AUTHORIZATION]:
            conn = _connection(Stage.TRANSACTION)
        elif kind is Pass:
            conn.receive_data(b"USER a\r\n")
            conn.next_event()
            conn.send(Ok())
        conn.receive_data(LINES[kind] + b"\r\n")
    assert type(conn.next_event()) is kind
    return conn


ANSWERED = [*COMMANDS, AuthResponse, AuthCancel, InvalidCommand]


@pytest.mark.parametrize(
    "response", [Ok(text="1 2"), Err(), Challenge()], ids=["ok", "err", "challenge"]
)
@pytest.mark.parametrize("kind", ANSWERED)
def test_every_response_to_every_command(kind: type[Event], response: Event) -> None:
    conn = _answerable(kind)
    after = SEND.get((kind, type(response)))
    if after is None:
        with pytest.raises(LocalProtocolError):
            conn.send(response)  # type: ignore[arg-type]
        assert conn.our_state is Phase.ERROR
        return
    conn.send(response)  # type: ignore[arg-type]
    command = conn._answering if False else None
    del command
    if type(response) is Ok and kind in (Capa, List, Uidl, Retr, Top):
        assert conn.our_state is Phase.MULTILINE
    else:
        assert conn.our_state is after


def test_send_table_never_opens_multiline_itself() -> None:
    assert Phase.MULTILINE not in SEND.values()
    assert is_multiline(List())
    assert not is_multiline(List(msg=1))
    assert is_multiline(Uidl())
    assert not is_multiline(Uidl(msg=1))
    assert all(is_multiline(e) for e in (Retr(msg=1), Top(msg=1, lines=0), Capa()))
    assert not any(is_multiline(e) for e in (Stat(), Dele(msg=1), Noop(), Quit(), User(name="a")))


def test_stage_after_table() -> None:
    assert set(STAGE_AFTER.values()) == {Stage.TRANSACTION}
    assert {kind for (_, kind, _) in STAGE_AFTER} == {Pass, Auth, AuthResponse}
    # A challenge or an -ERR never logs anybody in.
    for kind in (Pass, Auth, AuthResponse):
        conn = _answerable(kind)
        conn.send(Err())
        assert conn.stage is Stage.AUTHORIZATION
        conn = _answerable(kind)
        conn.send(Ok())
        assert conn.stage is Stage.TRANSACTION


def test_exports_are_pinned() -> None:
    assert sorted(sansmail.pop3.__all__) == sorted(
        [
            "Auth", "AuthCancel", "AuthResponse", "Capa", "Challenge", "Config",
            "Connection", "ConnectionClosed", "Dele", "EndOfMultiline", "Err", "Event",
            "InvalidCommand", "List", "MultilineData", "Noop", "Ok", "Pass", "Phase",
            "Quit", "Retr", "Rset", "Stage", "Stat", "Stls", "Top", "Uidl", "User",
            "capability_listing",
        ]
    )  # fmt: skip
    for name in sansmail.pop3.__all__:
        assert getattr(sansmail.pop3, name) is not None
