"""The state tables, enumerated: which command each stage accepts, how tagged responses
and continuations move the stage and the phase, and that any sequence of sends only ever
raises LocalProtocolError."""

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
    Compress,
    Connection,
    Continuation,
    Copy,
    Create,
    Delete,
    Enable,
    Event,
    Expunge,
    Fetch,
    GetQuota,
    GetQuotaRoot,
    Id,
    Idle,
    InvalidCommand,
    List,
    LiteralRequested,
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
    SetQuota,
    Sort,
    Stage,
    StartTLS,
    Status,
    Store,
    Subscribe,
    Tagged,
    Thread,
    UidExpunge,
    Unselect,
    Unsubscribe,
    Untagged,
    UntaggedStatus,
)
from sansmail.imap._commands import PARSERS
from sansmail.imap._state import ALLOWED, COMMANDS, RECEIVE, SEND, STAGE_AFTER

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
    Sort: b"SORT (DATE) UTF-8 ALL",
    Thread: b"THREAD REFERENCES UTF-8 ALL",
    GetQuota: b'GETQUOTA ""',
    GetQuotaRoot: b"GETQUOTAROOT INBOX",
    SetQuota: b'SETQUOTA "" (STORAGE 512)',
    Compress: b"COMPRESS DEFLATE",
}
STAGES = {
    Stage.NOT_AUTHENTICATED: "not-authenticated",
    Stage.AUTHENTICATED: "authenticated",
    Stage.SELECTED: "selected",
}


def test_every_command_type_has_a_parser_and_a_line() -> None:
    assert set(LINES) == set(COMMANDS)
    assert {kind for kind, _parse in PARSERS.values()} == set(COMMANDS)


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("kind", COMMANDS, ids=lambda k: k.__name__)
def test_allowed_is_what_the_parser_enforces(stage: Stage, kind: type[Command]) -> None:
    conn = server(STAGES[stage])
    events, _out, error, _ = run([b"t " + LINES[kind] + b"\r\n"], conn=conn, eof=False)
    assert error is None
    event = next(e for e in events if isinstance(e, Command | InvalidCommand))
    if (stage, kind) in ALLOWED:
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
    assert (Stage.NOT_AUTHENTICATED, Login) in ALLOWED
    assert (Stage.AUTHENTICATED, Login) not in ALLOWED
    assert (Stage.AUTHENTICATED, Enable) in ALLOWED
    assert (Stage.SELECTED, Enable) not in ALLOWED  # RFC 5161 §3.1
    assert (Stage.SELECTED, Append) in ALLOWED
    assert (Stage.AUTHENTICATED, Fetch) not in ALLOWED
    assert all((s, Logout) in ALLOWED for s in STAGES)
    assert all((Stage.LOGOUT, k) not in ALLOWED for k in COMMANDS)


# IDLE is answered after DONE and LOGOUT needs its BYE first; both are tested elsewhere.
ANSWERABLE = [
    (stage, kind, status)
    for stage in STAGES
    for kind in COMMANDS
    for status in ("OK", "NO", "BAD")
    if (stage, kind) in ALLOWED and kind not in (Idle, Logout)
]


@pytest.mark.parametrize(("stage", "kind", "status"), ANSWERABLE, ids=str)
def test_stage_after_each_tagged_response(stage: Stage, kind: type[Command], status: str) -> None:
    conn = server(STAGES[stage])
    conn.receive_data(b"t " + LINES[kind] + b"\r\n")
    event = conn.next_event()
    assert isinstance(event, kind), event
    conn.send(Tagged(tag="t", status=status, text="x"))  # type: ignore[arg-type]
    assert conn.stage is STAGE_AFTER.get((stage, kind, status), stage)
    assert conn.our_state is SEND[kind, status]


# --- SEND, through the connection: every answer to everything that can be answered ---------

ANSWERED: list[type[Event]] = [*COMMANDS, InvalidCommand, LiteralRequested]


def owing(kind: type[Event]) -> Connection:
    """A connection that has just handed out a `kind` event, tagged "t"."""
    if kind is LiteralRequested:
        conn = server("authenticated")
        conn.receive_data(b"t APPEND x {3}\r\n")
    elif kind is InvalidCommand:
        conn = server("selected")
        conn.receive_data(b"t FROB\r\n")
    else:
        stage = next(stage for stage in STAGES if (stage, kind) in ALLOWED)
        conn = server(STAGES[stage])
        conn.receive_data(b"t " + LINES[kind] + b"\r\n")
    assert type(conn.next_event()) is kind
    return conn


@pytest.mark.parametrize("key", ["OK", "NO", "BAD", "+"])
@pytest.mark.parametrize("kind", ANSWERED, ids=lambda k: k.__name__)
def test_every_answer_is_what_send_says(kind: type[Event], key: str) -> None:
    conn = owing(kind)
    if kind is Logout and key == "OK":
        conn.send(UntaggedStatus(status="BYE", text="bye"))  # RFC 9051 §6.1.3
    response: Tagged | Continuation
    if key == "+":
        response = Continuation(text="go")
    else:
        response = Tagged(tag="t", status=key, text="x")  # type: ignore[arg-type]
    after = SEND.get((kind, key))
    if after is None:
        with pytest.raises(LocalProtocolError):
            conn.send(response)
        assert conn.our_state is Phase.ERROR
    else:
        conn.send(response)
        assert conn.our_state is after


def test_tables_are_consistent() -> None:
    for (phase, kind), after in RECEIVE.items():
        assert isinstance(phase, Phase)
        assert isinstance(after, Phase)
        assert kind is not None
    for kind in COMMANDS:
        assert RECEIVE[Phase.COMMAND, kind] is Phase.REPLY
    for (stage, kind, status), after in STAGE_AFTER.items():
        assert (stage, kind) in ALLOWED
        assert status in ("OK", "NO", "BAD")
        assert after in Stage
    # RFC 9051 §7.1: every command may end OK, NO or BAD; a refusal stays a refusal.
    assert all((kind, status) in SEND for kind in COMMANDS for status in ("OK", "NO", "BAD"))
    assert (InvalidCommand, "OK") not in SEND
    assert (LiteralRequested, "OK") not in SEND
    assert {kind for kind, key in SEND if key == "+"} == {Authenticate, Idle, LiteralRequested}
    assert {key: after for key, after in SEND.items() if after is not Phase.COMMAND} == {
        (StartTLS, "OK"): Phase.TLS_PENDING,
        (Compress, "OK"): Phase.COMPRESS_PENDING,
        (Logout, "OK"): Phase.CLOSED,
        (Authenticate, "+"): Phase.AUTH,
        (Idle, "+"): Phase.IDLE,
    }


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
        if conn.our_state is Phase.COMPRESS_PENDING:
            pending = conn.start_compression()  # an identity "compression"
            if pending:
                conn.receive_data(pending)
