"""The transition tables, enumerated: every (phase, reply) pair is either what SEND says
or a LocalProtocolError, and every (stage, command) pair is served (ALLOWED) or gets what
REFUSALS says."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smtp_helpers import GREETING, OK, answer, feed, greeted, server

from sansmail import NEED_DATA, PAUSED, SERVER, LocalProtocolError
from sansmail.smtp import (
    Auth,
    Bdat,
    Connection,
    ConnectionClosed,
    Data,
    Event,
    Hello,
    Help,
    InvalidCommand,
    Mail,
    Noop,
    Phase,
    Quit,
    Rcpt,
    Reply,
    Reset,
    Stage,
    StartTLS,
    Verify,
)
from sansmail.smtp._codes import NOT_IMPLEMENTED
from sansmail.smtp._state import ALLOWED, COMMANDS, RECEIVE, REFUSALS, SEND, STAGE_AFTER

STARTTLS_LINES = ("mx.example", "STARTTLS", "CHUNKING", "ENHANCEDSTATUSCODES", "AUTH PLAIN")


def pending(lines: list[bytes], extensions: tuple[str, ...] = STARTTLS_LINES) -> Connection:
    """A server that answered every line but the last with `answer()`; the last one's
    event is now waiting for a reply."""
    conn = greeted(lines=extensions)
    for i, line in enumerate(lines):
        events = feed(conn, line)
        assert events, line
        if i < len(lines) - 1:
            for event in events:
                reply = answer(event)
                if reply is not None:
                    conn.send(reply)
    assert conn.our_state is Phase.REPLY
    return conn


MAIL = b"MAIL FROM:<a@b.example>\r\n"
RCPT = b"RCPT TO:<c@d.example>\r\n"

# How to reach "a reply to X is owed", for each X a reply can answer.
SCENARIOS: dict[str, Callable[[], Connection]] = {
    "greeting": lambda: Connection(SERVER),
    "Hello": lambda: pending([b"EHLO again.example\r\n"]),
    "StartTLS": lambda: pending([b"STARTTLS\r\n"]),
    "Mail": lambda: pending([MAIL]),
    "Rcpt": lambda: pending([MAIL, RCPT]),
    "Data": lambda: pending([MAIL, RCPT, b"DATA\r\n"]),
    "EndOfMessage": lambda: pending([MAIL, RCPT, b"DATA\r\n", b"hi\r\n.\r\n"]),
    "InvalidMessage": lambda: pending([MAIL, RCPT, b"DATA\r\n", b"h\ri\r\n.\r\n"]),
    "EndOfChunk": lambda: pending([MAIL, RCPT, b"BDAT 2\r\nhi"]),
    "Reset": lambda: pending([b"RSET\r\n"]),
    "Noop": lambda: pending([b"NOOP\r\n"]),
    "Verify": lambda: pending([b"VRFY someone\r\n"]),
    "Help": lambda: pending([b"HELP\r\n"]),
    "Quit": lambda: pending([b"QUIT\r\n"]),
    "InvalidCommand": lambda: pending([b"FROB\r\n"]),
    "Auth": lambda: pending([b"AUTH PLAIN\r\n"]),
    "AuthResponse": lambda: pending([b"AUTH PLAIN\r\n", b"AHUAcA==\r\n"]),
    "AuthCancel": lambda: pending([b"AUTH PLAIN\r\n", b"*\r\n"]),
    "InvalidAuthResponse": lambda: pending([b"AUTH PLAIN\r\n", b"not base64\r\n"]),
}

CODES = [211, 214, 220, 221, 235, 250, 251, 252, 334, 354, 421, 450, 451, 452, 454]
CODES += [500, 501, 502, 503, 504, 521, 550, 551, 552, 553, 554, 555]


def expected_phase(kind: str, code: int) -> Phase | None:
    if code == 421:
        return Phase.CLOSED  # RFC 5321 §3.8: any time
    for key, phase in SEND.items():
        name = "greeting" if key[0] is None else key[0].__name__
        if name == kind and key[1] in (code, code // 100):
            return phase
    return None


def test_every_scenario_reaches_the_reply_it_names() -> None:
    names = {"greeting"} | {k.__name__ for k, _ in SEND if k is not None}
    assert names == set(SCENARIOS)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(sorted(SCENARIOS)), code=st.sampled_from(CODES))
def test_each_reply_is_legal_per_table_or_a_local_error(kind: str, code: int) -> None:
    conn = SCENARIOS[kind]()
    reply = Reply(code=code, lines="text")
    phase = expected_phase(kind, code)
    if phase is None:
        with pytest.raises(LocalProtocolError):
            conn.send(reply)
        assert conn.our_state is Phase.ERROR
        with pytest.raises(LocalProtocolError):
            conn.send(OK)  # sticky
    else:
        assert conn.send(reply).startswith(str(code).encode())
        assert conn.our_state is phase


@pytest.mark.parametrize("code", [250, 354, 220, 221, 550])
def test_no_reply_is_owed_while_the_client_talks(code: int) -> None:
    conn = greeted()
    assert conn.next_event() is NEED_DATA
    assert conn.our_state is Phase.COMMAND
    with pytest.raises(LocalProtocolError, match="no command is waiting"):
        conn.send(Reply(code=code, lines="x"))


def test_421_closes_from_any_live_phase() -> None:
    for conn in (Connection(SERVER), greeted(), pending([MAIL, RCPT, b"DATA\r\n"])):
        assert conn.send(Reply(code=421, lines="bye")).startswith(b"421")
        assert conn.our_state is Phase.CLOSED
        with pytest.raises(LocalProtocolError, match="closed"):
            conn.send(Reply(code=421, lines="again"))


def test_receive_table_is_complete_for_content_phases() -> None:
    phases = {phase for phase, _ in RECEIVE}
    assert phases == {Phase.COMMAND, Phase.DATA, Phase.BDAT, Phase.AUTH, Phase.CLOSED}
    for phase in phases:
        assert (phase, ConnectionClosed) in RECEIVE  # EOF is possible wherever we read
    assert all(isinstance(v, Phase) for v in RECEIVE.values())


def test_allowed_and_refusals_split_every_stage_and_command() -> None:
    pairs = {(stage, kind) for stage in Stage for kind in COMMANDS}
    assert ALLOWED | set(REFUSALS) == pairs
    assert not ALLOWED & set(REFUSALS)
    assert all(key[0] in Stage for key in STAGE_AFTER)


# --- ALLOWED and REFUSALS, through the connection: each stage, each command ------------

COMMAND_LINES: dict[type[Event], bytes] = {
    Hello: b"EHLO again.example\r\n",
    StartTLS: b"STARTTLS\r\n",
    Auth: b"AUTH PLAIN\r\n",
    Mail: MAIL,
    Rcpt: RCPT,
    Data: b"DATA\r\n",
    Bdat: b"BDAT 1\r\nx",
    Reset: b"RSET\r\n",
    Noop: b"NOOP\r\n",
    Verify: b"VRFY x\r\n",
    Help: b"HELP\r\n",
    Quit: b"QUIT\r\n",
}


def test_command_lines_cover_every_command() -> None:
    assert set(COMMAND_LINES) == set(COMMANDS)


def at_stage(stage: Stage) -> Connection:
    if stage is Stage.REFUSED:
        conn = Connection(SERVER)
        conn.send(Reply(code=554, lines="no service"))
        return conn
    if stage is Stage.NEED_HELLO:
        return server()
    conn = greeted(lines=STARTTLS_LINES)
    script = {
        Stage.READY: [],
        Stage.MAIL: [MAIL],
        Stage.RCPT: [MAIL, RCPT],
        Stage.BDAT: [MAIL, RCPT, b"BDAT 1\r\nx"],
    }[stage]
    for line in script:
        for event in feed(conn, line):
            reply = answer(event)
            if reply is not None:
                conn.send(reply)
    assert conn.stage is stage
    return conn


@pytest.mark.parametrize("stage", list(Stage))
@pytest.mark.parametrize("kind", list(COMMANDS), ids=lambda k: k.__name__)
def test_sequence_rules_through_the_connection(stage: Stage, kind: type[Event]) -> None:
    conn = at_stage(stage)
    events = feed(conn, COMMAND_LINES[kind])
    refusal = None if (stage, kind) in ALLOWED else REFUSALS[stage, kind]
    if refusal is None and kind is StartTLS and "STARTTLS" not in conn.extensions:
        refusal = NOT_IMPLEMENTED  # not advertised: checked after the stage
    if refusal is None and kind is Bdat and "CHUNKING" not in conn.extensions:
        refusal = NOT_IMPLEMENTED
    if refusal is None:
        assert type(events[0]) is kind
    else:
        assert events == [
            InvalidCommand(
                line=COMMAND_LINES[kind].split(b"\r\n")[0],
                reason=events[0].reason,  # type: ignore[attr-defined]
                reply_hint=refusal,
            )
        ]


def test_greeting_must_come_first_and_be_220_or_5xx() -> None:
    conn = Connection(SERVER)
    conn.receive_data(b"EHLO early\r\n")
    assert conn.next_event() is PAUSED
    assert conn.send(GREETING) == b"220 mx.example ESMTP\r\n"
    assert conn.next_event() == Hello(domain="early")
