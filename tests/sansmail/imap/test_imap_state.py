"""The state tables, enumerated: which command each state accepts, how tagged responses
move the state, and that any sequence of sends only ever raises LocalProtocolError."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from imap_helpers import run, server

from sansmail import LocalProtocolError, RemoteProtocolError, Signal
from sansmail.imap import (
    Append,
    Authenticate,
    Capability,
    Check,
    Close,
    Command,
    Continuation,
    Copy,
    Create,
    Delete,
    Enable,
    Expunge,
    Fetch,
    Id,
    Idle,
    InvalidCommand,
    List,
    Login,
    Logout,
    Lsub,
    Move,
    Namespace,
    Noop,
    Phase,
    Rename,
    Search,
    Select,
    StartTLS,
    State,
    Status,
    Store,
    Subscribe,
    Tagged,
    UidExpunge,
    Unselect,
    Unsubscribe,
    Untagged,
    UntaggedStatus,
)
from sansmail.imap._commands import COMMANDS
from sansmail.imap._state import (
    AFTER_TAGGED,
    ALLOWED,
    COMMAND_TYPES,
    CONTINUE,
    RECEIVE,
    STATE_AFTER,
)

LINES: dict[type[Command], bytes] = {
    Capability: b"CAPABILITY",
    Noop: b"NOOP",
    Logout: b"LOGOUT",
    StartTLS: b"STARTTLS",
    Authenticate: b"AUTHENTICATE PLAIN =",
    Login: b"LOGIN a b",
    Enable: b"ENABLE CONDSTORE",
    Id: b"ID NIL",
    Namespace: b"NAMESPACE",
    Select: b"SELECT INBOX",
    Create: b"CREATE x",
    Delete: b"DELETE x",
    Rename: b"RENAME a b",
    Subscribe: b"SUBSCRIBE x",
    Unsubscribe: b"UNSUBSCRIBE x",
    List: b'LIST "" *',
    Lsub: b'LSUB "" *',
    Status: b"STATUS x (MESSAGES)",
    Append: b"APPEND x {1+}\r\nx",
    Idle: b"IDLE",
    Check: b"CHECK",
    Close: b"CLOSE",
    Unselect: b"UNSELECT",
    Expunge: b"EXPUNGE",
    UidExpunge: b"UID EXPUNGE 1",
    Search: b"SEARCH ALL",
    Fetch: b"FETCH 1 FLAGS",
    Store: b"STORE 1 FLAGS ()",
    Copy: b"COPY 1 x",
    Move: b"MOVE 1 x",
}
STATES = {
    State.NOT_AUTHENTICATED: "not-authenticated",
    State.AUTHENTICATED: "authenticated",
    State.SELECTED: "selected",
}


def test_every_command_type_has_a_parser_and_a_line() -> None:
    assert set(LINES) == set(COMMAND_TYPES)
    assert {kind for kind, _parse in COMMANDS.values()} == set(COMMAND_TYPES)


@pytest.mark.parametrize("state", list(STATES))
@pytest.mark.parametrize("kind", COMMAND_TYPES, ids=lambda k: k.__name__)
def test_allowed_is_what_the_parser_enforces(state: State, kind: type[Command]) -> None:
    conn = server(STATES[state])
    events, _out, error, _ = run([b"t " + LINES[kind] + b"\r\n"], conn=conn, eof=False)
    assert error is None
    event = next(e for e in events if isinstance(e, Command | InvalidCommand))
    if (state, kind) in ALLOWED:
        assert isinstance(event, kind), event
    else:
        assert isinstance(event, InvalidCommand), event
        assert event.reply_hint == Tagged(
            tag="t", status="BAD", text=f"{COMMAND_NAME[kind]} {event.reason}"
        )


COMMAND_NAME = {
    kind: line.split(b" ")[0].decode() if not line.startswith(b"UID") else "UID EXPUNGE"
    for kind, line in LINES.items()
}


def test_allowed_matches_rfc_9051_section_6() -> None:
    # Spot checks that would catch a table typo.
    assert (State.NOT_AUTHENTICATED, Login) in ALLOWED
    assert (State.AUTHENTICATED, Login) not in ALLOWED
    assert (State.AUTHENTICATED, Enable) in ALLOWED
    assert (State.SELECTED, Enable) not in ALLOWED  # RFC 5161 §3.1
    assert (State.SELECTED, Append) in ALLOWED
    assert (State.AUTHENTICATED, Fetch) not in ALLOWED
    assert all((s, Logout) in ALLOWED for s in STATES)
    assert all((State.LOGOUT, k) not in ALLOWED for k in COMMAND_TYPES)


# IDLE is answered after DONE and LOGOUT needs its BYE first; both are tested elsewhere.
ANSWERABLE = [
    (state, kind, status)
    for state in STATES
    for kind in COMMAND_TYPES
    for status in ("OK", "NO", "BAD")
    if (state, kind) in ALLOWED and kind not in (Idle, Logout)
]


@pytest.mark.parametrize(("state", "kind", "status"), ANSWERABLE, ids=str)
def test_state_after_each_tagged_response(state: State, kind: type[Command], status: str) -> None:
    conn = server(STATES[state])
    conn.receive_data(b"t " + LINES[kind] + b"\r\n")
    event = conn.next_event()
    assert isinstance(event, kind), event
    conn.send(Tagged(tag="t", status=status, text="x"))  # type: ignore[arg-type]
    assert conn.state is STATE_AFTER.get((state, kind, status), state)
    assert conn.our_state is AFTER_TAGGED.get((kind, status), Phase.COMMAND)


def test_tables_are_consistent() -> None:
    for (phase, kind), after in RECEIVE.items():
        assert isinstance(phase, Phase)
        assert isinstance(after, Phase)
        assert kind is not None
    for kind in COMMAND_TYPES:
        assert RECEIVE[Phase.COMMAND, kind] is Phase.REPLY
    assert set(CONTINUE.values()) == {Phase.COMMAND, Phase.AUTH, Phase.IDLE}
    for (state, kind, status), after in STATE_AFTER.items():
        assert (state, kind) in ALLOWED
        assert status in ("OK", "NO", "BAD")
        assert after in State
    for (kind, status), phase in AFTER_TAGGED.items():
        assert kind in COMMAND_TYPES
        assert status == "OK"
        assert phase in (Phase.TLS_PENDING, Phase.CLOSED)


# --- any (input, response) sequence raises nothing but protocol errors ----------------------

RESPONSES = st.sampled_from(
    [
        Tagged(tag="t", status="OK", text="ok"),
        Tagged(tag="t", status="NO", text="no"),
        Tagged(tag="t", status="BAD", text="bad"),
        Tagged(tag="u", status="OK", text="other tag"),
        UntaggedStatus(status="OK", text="fine"),
        UntaggedStatus(status="BAD", text="bad"),
        UntaggedStatus(status="BYE", text="bye"),
        UntaggedStatus(status="PREAUTH", text="pre"),
        Untagged.exists(1),
        Untagged.enabled(["IMAP4rev2"]),
        Untagged.capability(["IMAP4rev1", "LITERAL+"]),
        Continuation(text="go"),
        Continuation(data=b"challenge"),
    ]
)
INPUTS = st.sampled_from(
    [b"t " + line + b"\r\n" for line in LINES.values()]
    + [b"t LOGIN {3}\r\n", b"abc\r\n", b"*\r\n", b"DONE\r\n", b"AGZvbwBiYXI=\r\n", b"\r\n", b"x"]
)


@settings(deadline=None, max_examples=300)
@given(st.lists(st.one_of(RESPONSES, INPUTS), max_size=25))
def test_any_sequence_only_raises_protocol_errors(steps: list[object]) -> None:
    conn = server("not-authenticated")
    for step in steps:
        try:
            if isinstance(step, bytes):
                conn.receive_data(step)
                for _ in range(5):
                    if isinstance(conn.next_event(), Signal):
                        break
            else:
                conn.send(step)  # type: ignore[arg-type]
        except (LocalProtocolError, RemoteProtocolError):
            return
        if conn.our_state is Phase.TLS_PENDING:
            try:
                conn.start_tls()
            except (LocalProtocolError, RemoteProtocolError):
                return
