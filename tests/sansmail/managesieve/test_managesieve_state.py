"""The state tables, enumerated: every (stage, command), every (command, answer)."""

from __future__ import annotations

import pytest
from managesieve_helpers import CAPABILITIES, events_of, greeted

import sansmail.managesieve
from sansmail import LocalProtocolError
from sansmail.managesieve import (
    Authenticate,
    Bye,
    Capabilities,
    Challenge,
    Connection,
    Event,
    InvalidCommand,
    No,
    Ok,
    Phase,
    SaslCancel,
    SaslResponse,
    Script,
    ScriptList,
    Stage,
)
from sansmail.managesieve._readers import KINDS
from sansmail.managesieve._state import ALLOWED, COMMANDS, RECEIVE, SEND, STAGE_AFTER

# One well-formed line per command.
LINES: dict[type[Event], bytes] = {
    kind: {
        b"AUTHENTICATE": b'AUTHENTICATE "PLAIN"',
        b"HAVESPACE": b'HAVESPACE "a" 1',
        b"PUTSCRIPT": b'PUTSCRIPT "a" "keep;"',
        b"CHECKSCRIPT": b'CHECKSCRIPT "keep;"',
        b"SETACTIVE": b'SETACTIVE "a"',
        b"GETSCRIPT": b'GETSCRIPT "a"',
        b"DELETESCRIPT": b'DELETESCRIPT "a"',
        b"RENAMESCRIPT": b'RENAMESCRIPT "a" "b"',
    }.get(word, word)
    + b"\r\n"
    for word, kind in KINDS.items()
}

ANSWERS: list[Event] = [
    Ok(),
    No(),
    Bye(),
    CAPABILITIES,
    ScriptList(names=()),
    Script(content=b"keep;"),
    Challenge(),
]


def test_every_command_has_a_line() -> None:
    assert set(LINES) == set(COMMANDS)


def _at(stage: Stage) -> Connection:
    conn = greeted()
    if stage is Stage.AUTHENTICATED:
        conn.receive_data(b'AUTHENTICATE "PLAIN" "AGEAYg=="\r\n')
        events_of(conn)
        conn.send(Ok())
    assert conn.stage is stage
    return conn


@pytest.mark.parametrize("stage", list(Stage))
@pytest.mark.parametrize("kind", COMMANDS, ids=lambda kind: kind.__name__)
def test_allowed(stage: Stage, kind: type[Event]) -> None:
    conn = _at(stage)
    conn.receive_data(LINES[kind])
    (event,) = events_of(conn)
    if (stage, kind) in ALLOWED:
        assert type(event) is kind
    else:
        assert isinstance(event, InvalidCommand)


@pytest.mark.parametrize("answer", ANSWERS, ids=lambda a: type(a).__name__)
@pytest.mark.parametrize(
    "kind", [*COMMANDS, SaslResponse, SaslCancel], ids=lambda kind: kind.__name__
)
def test_send(kind: type[Event], answer: Event) -> None:
    if kind in (SaslResponse, SaslCancel):
        conn = _at(Stage.NON_AUTHENTICATED)
        conn.receive_data(b'AUTHENTICATE "PLAIN"\r\n')
        events_of(conn)
        conn.send(Challenge())
        conn.receive_data(b'"*"\r\n' if kind is SaslCancel else b'""\r\n')
    else:
        stage = next(s for s in Stage if (s, kind) in ALLOWED)
        conn = _at(stage)
        conn.receive_data(LINES[kind])
    (event,) = events_of(conn)
    assert type(event) is kind
    before = conn.stage
    phase = SEND.get((kind, type(answer)))
    if phase is None:
        with pytest.raises(LocalProtocolError):
            conn.send(answer)  # type: ignore[arg-type]
        return
    conn.send(answer)  # type: ignore[arg-type]
    assert conn.our_state is phase
    assert conn.stage is STAGE_AFTER.get((before, kind, type(answer)), before)


def test_tables_name_only_known_events() -> None:
    events = set(sansmail.managesieve.__all__)
    for phase, kind in RECEIVE:
        assert isinstance(phase, Phase)
        assert kind.__name__ in events
    for answered, kind in SEND:
        assert answered is None or answered.__name__ in events
        assert kind.__name__ in events
    assert (Phase.COMMAND, Authenticate) in RECEIVE
    assert SEND[None, Capabilities] is Phase.COMMAND


def test_public_names() -> None:
    assert sorted(sansmail.managesieve.__all__) == sansmail.managesieve.__all__
    for name in sansmail.managesieve.__all__:
        assert hasattr(sansmail.managesieve, name)
