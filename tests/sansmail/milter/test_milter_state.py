"""The milter client's tables, enumerated: every (stage, command) pair is sent or refused
exactly as `ORDER` says, every declinable step has its NO and NR flag, and the package
exports what it says."""

from __future__ import annotations

import pytest
from milter_helpers import ScriptedMilter, talk

import sansmail.milter
from sansmail import LocalProtocolError
from sansmail.milter import (
    Abort,
    Body,
    Command,
    Connect,
    Connection,
    Data,
    EndOfHeaders,
    EndOfMessage,
    Family,
    Header,
    Helo,
    Mail,
    Negotiate,
    Quit,
    QuitNewConnection,
    Rcpt,
    Stage,
    Unknown,
    body_chunks,
    fold,
)
from sansmail.milter._state import DECLINE, NEVER_ANSWERED, NO_REPLY, ORDER, VERDICTS

ONE_OF_EACH: list[Command] = [
    Negotiate(),
    Connect(hostname="h", family=Family.UNKNOWN),
    Helo(name="h"),
    Mail(sender="<a@b>"),
    Rcpt(recipient="<c@d>"),
    Data(),
    Header(name="X", value="y"),
    EndOfHeaders(),
    Body(data=b"x"),
    EndOfMessage(),
    Abort(),
    Unknown(command="X"),
    Quit(),
    QuitNewConnection(),
]

# The commands that lead from OPTIONS to each stage.
PATHS: dict[Stage, list[Command]] = {
    Stage.OPTIONS: [],
    Stage.CONNECT: ONE_OF_EACH[:1],
    Stage.SESSION: ONE_OF_EACH[:2],
    Stage.ENVELOPE: ONE_OF_EACH[:4],
    Stage.RECIPIENTS: ONE_OF_EACH[:5],
    Stage.DATA: ONE_OF_EACH[:6],
    Stage.HEADERS: ONE_OF_EACH[:7],
    Stage.BODY: ONE_OF_EACH[:8],
    Stage.CLOSED: [*ONE_OF_EACH[:1], Quit()],
}


@pytest.mark.parametrize("stage", list(Stage))
@pytest.mark.parametrize("command", ONE_OF_EACH, ids=lambda c: type(c).__name__)
def test_order_table_is_what_send_enforces(stage: Stage, command: Command) -> None:
    milter = ScriptedMilter()
    conn = Connection()
    for step in PATHS[stage]:
        talk(conn, milter, step)
    assert conn.stage is stage
    after = ORDER.get((stage, type(command)))
    if after is None:
        with pytest.raises(LocalProtocolError):
            conn.send(command)
    else:
        talk(conn, milter, command)
        assert conn.stage is after


def test_every_step_a_milter_can_decline_it_can_also_leave_unanswered() -> None:
    assert set(DECLINE) == set(NO_REPLY)
    assert len(set(DECLINE.values()) | set(NO_REPLY.values())) == 18
    answered = set(VERDICTS)
    assert answered == set(DECLINE) | {EndOfMessage}
    assert not answered & NEVER_ANSWERED


def test_exports() -> None:
    names = sansmail.milter.__all__
    assert len(set(names)) == len(names) == 57
    for name in names:
        assert getattr(sansmail.milter, name) is not None


def test_fold_needs_a_verdict() -> None:
    with pytest.raises(ValueError, match="no verdict"):
        fold([])
    with pytest.raises(ValueError, match="not part"):
        fold([Data()])


def test_body_chunks() -> None:
    assert list(body_chunks(b"")) == []
    assert list(body_chunks(b"abcde", 2)) == [b"ab", b"cd", b"e"]
    assert [len(c) for c in body_chunks(b"x" * 70000)] == [65535, 4465]
    with pytest.raises(ValueError, match="size"):
        list(body_chunks(b"x", 65536))
