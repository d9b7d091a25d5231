"""The lockstep base the SMTP, POP3 and IMAP server cores share: the same sticky errors,
the same `send` guard and the same invalid-command limit in all three, each ending the
session with its own last word."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sansmail import NEED_DATA, SERVER, LocalProtocolError, RemoteProtocolError, imap, pop3, smtp
from sansmail._lockstep import LockstepServer


def _smtp(limit: int) -> Any:
    conn = smtp.Connection(SERVER, config=smtp.Config(max_invalid_commands=limit))
    conn.send(smtp.Reply(code=220, lines="mx.example ESMTP"))
    return conn


def _pop3(limit: int) -> Any:
    conn = pop3.Connection(SERVER, config=pop3.Config(max_invalid_commands=limit))
    conn.send(pop3.Ok(text="ready"))
    return conn


def _imap(limit: int) -> Any:
    conn = imap.Connection(SERVER, config=imap.Config(max_invalid_commands=limit))
    conn.send(imap.UntaggedStatus(status="OK", text="ready"))
    return conn


# core -> (greeted connection with a limit, an invalid command line, the closing hint)
CORES: dict[str, tuple[Callable[[int], Any], bytes, object]] = {
    "smtp": (
        _smtp,
        b"FROB\r\n",
        smtp.Reply(code=421, lines="Too many errors; closing", enhanced="4.7.0"),
    ),
    "pop3": (_pop3, b"FROB\r\n", pop3.Err(text="too many invalid commands, closing")),
    "imap": (
        _imap,
        b"t FROB\r\n",
        imap.UntaggedStatus(status="BYE", text="too many invalid commands, closing"),
    ),
}


@pytest.mark.parametrize("name", list(CORES))
@pytest.mark.parametrize("limit", [0, 1, 3])
def test_the_invalid_command_limit_is_the_same_everywhere(name: str, limit: int) -> None:
    make, line, hint = CORES[name]
    conn = make(limit)
    for _ in range(limit):
        conn.receive_data(line)
        event = conn.next_event()
        assert type(event).__name__ == "InvalidCommand", event
        conn.send(event.reply_hint)
    conn.receive_data(line)
    with pytest.raises(RemoteProtocolError, match=f"more than {limit} invalid commands") as info:
        conn.next_event()
    assert info.value.reply_hint == hint
    assert info.value.__suppress_context__  # the refusal that tipped it is not the cause
    assert conn.their_state.name == "ERROR"
    with pytest.raises(RemoteProtocolError, match="already broke"):
        conn.next_event()  # sticky
    conn.send(info.value.reply_hint)  # the last word
    assert conn.our_state.name == "CLOSED"
    with pytest.raises(LocalProtocolError, match="the session is closed"):
        conn.send(info.value.reply_hint)
    assert conn.our_state.name == "ERROR"


@pytest.mark.parametrize("name", list(CORES))
def test_nothing_is_sent_after_send_failed(name: str) -> None:
    make, line, _hint = CORES[name]
    conn = make(5)
    conn.receive_data(line)
    event = conn.next_event()
    conn.send_failed()
    assert conn.our_state.name == "ERROR"
    with pytest.raises(LocalProtocolError, match="can't send after an error on our side"):
        conn.send(event.reply_hint)
    with pytest.raises(LocalProtocolError, match="failed on our side"):
        conn.next_event()


@pytest.mark.parametrize("name", list(CORES))
def test_a_refused_send_breaks_our_side_for_good(name: str) -> None:
    make, _line, _hint = CORES[name]
    conn = make(5)
    assert conn.next_event() is NEED_DATA
    with pytest.raises(LocalProtocolError):
        conn.send(object())  # not a response of this protocol, and none is owed
    assert conn.our_state.name == "ERROR"
    assert conn.their_state.name == "COMMAND"


def test_the_base_needs_both_halves() -> None:
    assert LockstepServer.__abstractmethods__ == frozenset({"_next_event", "_send"})
