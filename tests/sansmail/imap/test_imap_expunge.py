"""RFC 9051 §7.5.1, enforced by the writer: no untagged EXPUNGE while a FETCH, STORE or
SEARCH by sequence number is answered; their UID forms, and every other command, may
carry one."""

from __future__ import annotations

import pytest
from imap_helpers import server

from sansmail import LocalProtocolError
from sansmail.imap import Connection, Continuation, FetchResponse, Phase, Tagged, Untagged

EXPUNGE = Untagged.expunge(1)
DONE = Tagged(tag="a", status="OK", text="done")


def answering(line: bytes) -> Connection:
    """A selected connection owing the tagged response to `line` (tag "a")."""
    conn = server("selected")
    conn.receive_data(line + b"\r\n")
    event = conn.next_event()
    assert getattr(event, "tag", None) == "a", event
    return conn


@pytest.mark.parametrize(
    "line",
    [b"a FETCH 1 FLAGS", b"a STORE 1 +FLAGS (\\Seen)", b"a SEARCH ALL"],
    ids=["fetch", "store", "search"],
)
def test_no_expunge_while_answering_by_sequence_number(line: bytes) -> None:
    conn = answering(line)
    assert conn.send(Untagged.exists(3)) == b"* 3 EXISTS\r\n"
    with pytest.raises(LocalProtocolError, match=r"RFC 9051 §7\.5\.1"):
        conn.send(EXPUNGE)
    assert conn.our_state is Phase.ERROR


@pytest.mark.parametrize(
    "line",
    [
        b"a UID FETCH 1 FLAGS",
        b"a UID STORE 1 +FLAGS (\\Seen)",
        b"a UID SEARCH ALL",
        b"a NOOP",
        b"a CHECK",
        b"a EXPUNGE",
        b"a UID EXPUNGE 1",
        b"a COPY 1 x",
        b"a MOVE 1 x",
        b"a UID MOVE 1 x",
        b"a STATUS x (MESSAGES)",
    ],
)
def test_expunge_may_come_with_uid_forms_and_other_commands(line: bytes) -> None:
    conn = answering(line)
    assert conn.send(EXPUNGE) == b"* 1 EXPUNGE\r\n"
    assert conn.send(DONE) == b"a OK done\r\n"
    assert conn.our_state is Phase.COMMAND


def test_the_rule_lasts_as_long_as_the_command() -> None:
    conn = server("selected")
    conn.receive_data(b"a FETCH 1 FLAGS\r\nb NOOP\r\nc IDLE\r\n")
    conn.next_event()
    conn.send(FetchResponse(number=1, items=(("FLAGS", []),)))
    conn.send(DONE)
    conn.next_event()
    assert conn.send(EXPUNGE) == b"* 1 EXPUNGE\r\n"  # NOOP may carry it
    conn.send(Tagged(tag="b", status="OK", text="done"))
    conn.next_event()
    conn.send(Continuation(text="idling"))
    assert conn.send(EXPUNGE) == b"* 1 EXPUNGE\r\n"  # so may IDLE (RFC 2177 §3)
