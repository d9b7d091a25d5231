"""Literals (RFC 9051 §4.3, RFC 7888, RFC 3516): split at every byte, the continuation
decision, LITERAL+ and LITERAL- caps, refusals the client never sends data for, and the
octets of a literal never being taken for commands."""

from __future__ import annotations

import pytest
from imap_helpers import (
    CAPABILITIES,
    GREETING,
    byte_chunks,
    commands,
    default_answer,
    run,
    server,
)

from sansmail import SERVER, LocalProtocolError
from sansmail.imap import (
    NONSYNC_LITERAL_MINUS,
    Append,
    Config,
    Connection,
    ConnectionClosed,
    Continuation,
    Event,
    InvalidCommand,
    LiteralRequested,
    Login,
    Noop,
    Response,
    ResponseCode,
    Tagged,
    UntaggedStatus,
)

MESSAGE = b"From: a@example.test\r\nSubject: {5}\r\n\r\na LOGOUT\r\n* OK fake\r\n"
SCRIPT = (
    b"a1 LOGIN {4}\r\nfred {6+}\r\nsecret\r\n"
    b"a2 APPEND INBOX (\\Seen) {%d}\r\n" % len(MESSAGE) + MESSAGE + b"\r\n"
    b"a3 NOOP\r\n"
)


def test_literals_split_at_every_byte_give_the_same_events() -> None:
    whole, out_whole, error, _ = run([SCRIPT])
    assert error is None
    assert commands(whole) == [
        Login(tag="a1", userid="fred", password="secret"),
        Append(tag="a2", mailbox="INBOX", flags=("\\Seen",), message=MESSAGE),
        Noop(tag="a3"),
    ]
    assert [e for e in whole if isinstance(e, LiteralRequested)] == [
        LiteralRequested(tag="a1", command="LOGIN", size=4),
        LiteralRequested(tag="a2", command="APPEND", size=len(MESSAGE)),
    ]
    split, out_split, error, _ = run(byte_chunks(SCRIPT))
    assert error is None
    assert split == whole
    assert out_split == out_whole
    for cut in range(len(SCRIPT)):
        events, out, error, _ = run([SCRIPT[:cut], SCRIPT[cut:]])
        assert (events, out, error) == (whole, out_whole, None), cut


def test_the_continuation_goes_out_only_when_the_application_says_so() -> None:
    conn = Connection(SERVER)
    conn.send(GREETING)
    conn.receive_data(b"a LOGIN {4}\r\n")
    assert conn.next_event() == LiteralRequested(tag="a", command="LOGIN", size=4)
    assert conn.next_event().name == "PAUSED"  # type: ignore[union-attr]
    assert conn.send(Continuation(text="ready")) == b"+ ready\r\n"
    conn.receive_data(b"fred bob\r\n")
    assert conn.next_event() == Login(tag="a", userid="fred", password="bob")


def refuse_literals(status: str) -> object:
    def answer(conn: Connection, event: Event) -> list[Response]:
        if isinstance(event, LiteralRequested):
            return [Tagged(tag=event.tag, status=status, text="no literal for you")]  # type: ignore[arg-type]
        return default_answer(conn, event)

    return answer


@pytest.mark.parametrize("status", ["NO", "BAD"])
def test_a_refused_literal_ends_the_command_and_the_next_one_parses(status: str) -> None:
    # The client does not send the literal (RFC 9051 §4.3), so what follows is a command.
    events, out, error, _ = run(
        [b"a1 APPEND INBOX {10}\r\na2 NOOP\r\n"],
        answer=refuse_literals(status),  # type: ignore[arg-type]
        conn=server("authenticated"),
    )
    assert error is None
    assert commands(events) == [Noop(tag="a2")]
    assert out.endswith(b"a1 " + status.encode() + b" no literal for you\r\na2 OK done\r\n")


def test_ok_does_not_answer_a_literal_request() -> None:
    conn = Connection(SERVER)
    conn.send(GREETING)
    conn.receive_data(b"a LOGIN {4}\r\n")
    conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.send(Tagged(tag="a", status="OK", text="hmm"))


def test_append_over_the_size_limit_is_refused_before_the_client_sends_it() -> None:
    config = Config(max_message_size=1000)
    events, out, error, _ = run(
        [b"a1 LOGIN a b\r\na2 APPEND INBOX {5000}\r\na3 NOOP\r\n"], config=config
    )
    assert error is None
    refused = events[1]
    assert isinstance(refused, InvalidCommand)
    assert refused.reply_hint == Tagged(
        tag="a2", status="NO", code=ResponseCode(name="TOOBIG"), text="APPEND command too big"
    )
    assert commands(events)[-1] == Noop(tag="a3")
    assert b"\r\n+ " not in out


def test_other_commands_over_the_size_limit_get_bad() -> None:
    events, _out, error, _ = run([b"a1 LOGIN {2000000}\r\na2 NOOP\r\n"])
    assert error is None
    assert isinstance(events[0], InvalidCommand)
    assert events[0].reply_hint.status == "BAD"
    assert events[1] == Noop(tag="a2")


def test_a_literal_of_a_refused_command_is_never_asked_for() -> None:
    for line in [b"a1 BOGUS {5}\r\n", b"a1 SELECT {5}\r\n", b"+ NOOP {5}\r\n"]:
        events, out, error, _ = run([line + b"a2 NOOP\r\n"])
        assert error is None
        assert not any(isinstance(e, LiteralRequested) for e in events), line
        assert isinstance(events[0], InvalidCommand)
        assert events[1] == Noop(tag="a2")
        assert b"+ go ahead" not in out


def test_non_synchronizing_literals_of_refused_commands_are_skipped_not_executed() -> None:
    hidden = b"x LOGOUT\r\n"
    data = b"a1 SELECT {%d+}\r\n" % len(hidden) + hidden + b" more\r\na2 NOOP\r\n"
    events, out, error, _ = run([data])
    assert error is None
    assert isinstance(events[0], InvalidCommand)
    assert events[0].tag == "a1"
    assert events[1] == Noop(tag="a2")
    assert b"BYE" not in out


def test_literal_octets_are_never_parsed_as_commands() -> None:
    payload = b"a9 LOGOUT\r\n"
    data = b"a1 LOGIN fred {%d}\r\n" % len(payload) + payload + b"\r\na2 NOOP\r\n"
    events, _out, error, _ = run([data])
    assert error is None
    assert commands(events) == [
        Login(tag="a1", userid="fred", password="a9 LOGOUT\r\n"),
        Noop(tag="a2"),
    ]


def test_literal_minus_caps_non_synchronizing_literals_at_4096() -> None:
    greeting = UntaggedStatus(
        status="OK",
        code=ResponseCode.capability([c for c in CAPABILITIES if c != "LITERAL+"] + ["LITERAL-"]),
        text="hi",
    )
    fits = b"x" * NONSYNC_LITERAL_MINUS
    events, _out, error, _ = run([b"a1 LOGIN fred {4096+}\r\n" + fits + b"\r\n"], greeting=greeting)
    assert error is None
    assert commands(events) == [Login(tag="a1", userid="fred", password="x" * 4096)]
    events, out, error, conn = run([b"a1 LOGIN fred {4097+}\r\n"], greeting=greeting)
    assert error is not None
    assert error.reply_hint == UntaggedStatus(
        status="BYE",
        code=ResponseCode(name="TOOBIG"),
        text="non-synchronizing literal over the limit, closing",
    )
    assert out.endswith(b"* BYE [TOOBIG] non-synchronizing literal over the limit, closing\r\n")
    assert conn.their_state.name == "ERROR"


def test_literal_plus_allows_large_non_synchronizing_literals_up_to_the_command_limit() -> None:
    message = b"y" * 100_000
    events, _out, error, _ = run(
        [b"a1 LOGIN a b\r\na2 APPEND INBOX {100000+}\r\n" + message + b"\r\n"]
    )
    assert error is None
    assert commands(events)[1] == Append(tag="a2", mailbox="INBOX", message=message)
    # Over the message size limit, even LITERAL+ ends the session: the octets are coming.
    config = Config(max_message_size=1000)
    events, _out, error, _ = run([b"a1 LOGIN a b\r\na2 APPEND INBOX {100000+}\r\n"], config=config)
    assert error is not None
    assert error.reply_hint.status == "BYE"  # type: ignore[union-attr]


def test_too_many_literals() -> None:
    config = Config(max_literals=4)
    # Four literals are let through; the client stops at the refused fifth.
    many = b"a1 ID ({1}\r\nk {1}\r\nv {1}\r\nk {1}\r\nv {1}\r\na2 NOOP\r\n"
    events, _out, error, _ = run([many], config=config)
    assert error is None
    assert isinstance(commands(events)[0], InvalidCommand)
    assert commands(events)[0].reason == "too many literals"
    assert commands(events)[1] == Noop(tag="a2")
    plus = b"a1 ID (" + b" ".join(b"{1+}\r\nk {1+}\r\nv" for _ in range(3)) + b")\r\n"
    _events, _out, error, _ = run([plus], config=config)
    assert error is not None


@pytest.mark.parametrize(
    "line",
    [b"a LOGIN {99999999999999999999}\r\n", b"a LOGIN {9223372036854775808+}\r\n"],
)
def test_an_absurd_literal_size_ends_the_session(line: bytes) -> None:
    _events, out, error, _ = run([line])
    assert error is not None
    assert out.endswith(b"* BYE unreadable literal size, closing\r\n")


def test_brace_words_that_are_not_literals_are_syntax_errors() -> None:
    for line in [
        b"a LOGIN {abc}\r\n",
        b"a LOGIN {-1}\r\n",
        b"a LOGIN {5} x\r\n",
        b"a LOGIN {}\r\n",
    ]:
        events, _out, error, _ = run([line])
        assert error is None
        assert isinstance(events[0], InvalidCommand), line


def test_eof_inside_a_literal_is_a_close() -> None:
    events, _out, error, _ = run([b"a1 LOGIN {10+}\r\nfre"])
    assert error is None
    assert events == [ConnectionClosed()]


def test_literal8_is_read_like_a_literal() -> None:
    data = b"a1 LOGIN a b\r\na2 APPEND x ~{4}\r\n\x00\r\n\x01\r\n"
    events, _out, error, _ = run(byte_chunks(data))
    assert error is None
    assert LiteralRequested(tag="a2", command="APPEND", size=4, binary=True) in events
    assert commands(events)[1] == Append(
        tag="a2", mailbox="x", message=b"\x00\r\n\x01", binary=True
    )


def test_line_limits_and_bare_newlines_end_the_session() -> None:
    config = Config(max_line_length=8192)
    _events, out, error, _ = run([b"a NOOP " + b"x" * 9000], config=config)
    assert error is not None
    assert out.endswith(b"* BYE [TOOBIG] command line too long, closing\r\n")
    _events, out, error, _ = run([b"a NOOP\nb NOOP\r\n"])
    assert error is not None
    assert out.endswith(b"* BYE bare CR or LF in a command, closing\r\n")
    # A bare LF inside a literal is data, not a line end.
    events, _out, error, _ = run([b"a LOGIN {3+}\r\na\nb c\r\n"])
    assert error is None
    assert commands(events) == [Login(tag="a", userid="a\nb", password="c")]


def test_server_helper_reaches_states() -> None:
    assert server("authenticated").stage.name == "AUTHENTICATED"
