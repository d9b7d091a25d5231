"""Connection behaviour: lockstep and pipelining, limits, fatal errors, STARTTLS, BDAT,
EOF, and the error states of both sides."""

from __future__ import annotations

import pytest
from smtp_helpers import GREETING, OK, answer, content_of, converse, feed, greeted, server

import sansmail.smtp
from sansmail import (
    CLIENT,
    NEED_DATA,
    PAUSED,
    SERVER,
    LocalProtocolError,
    RemoteProtocolError,
)
from sansmail.smtp import (
    Bdat,
    Config,
    Connection,
    ConnectionClosed,
    Data,
    EndOfChunk,
    EndOfMessage,
    Hello,
    InvalidCommand,
    InvalidMessage,
    Mail,
    MessageData,
    Noop,
    Phase,
    Quit,
    Rcpt,
    Reply,
    Reset,
    Stage,
    StartTLS,
)

MAIL = b"MAIL FROM:<a@b.example>\r\n"
RCPT = b"RCPT TO:<c@d.example>\r\n"


def test_public_names_are_pinned() -> None:
    assert sorted(sansmail.smtp.__all__) == sorted(
        [
            "Auth", "AuthCancel", "AuthResponse",
            "Bdat", "ClientConnection", "challenge_data", "encode_xtext",
            "Config", "Connection", "ConnectionClosed", "Data", "EndOfChunk",
            "EndOfMessage", "Event", "Hello", "Help", "InvalidAuthResponse", "InvalidCommand",
            "InvalidMessage",
            "Mail", "MessageData", "Noop", "Phase", "Quit", "Rcpt", "Reply", "Reset",
            "serialize_reply",
            "Stage", "StartTLS", "Verify",
        ]
    )  # fmt: skip
    for name in sansmail.smtp.__all__:
        assert getattr(sansmail.smtp, name) is not None


def test_client_role_is_its_own_class() -> None:
    with pytest.raises(NotImplementedError, match="ClientConnection"):
        Connection(CLIENT)


def test_config_validates() -> None:
    with pytest.raises(ValueError):
        Config(max_command_line=100)
    with pytest.raises(ValueError):
        Config(max_text_line=999)
    with pytest.raises(ValueError):
        Config(bare_lf="strip")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Config(512)  # type: ignore[misc]  # keyword-only
    assert Config().command_line_cap > 512


# --- Lockstep and pipelining ------------------------------------------------------------


def test_client_talking_before_the_greeting_waits() -> None:
    conn = Connection(SERVER)
    conn.receive_data(b"EHLO eager.example\r\n")
    assert conn.next_event() is PAUSED
    assert conn.trailing_data == (b"EHLO eager.example\r\n", False)
    conn.send(GREETING)
    assert conn.next_event() == Hello(domain="eager.example")


def test_pipelined_commands_wait_for_each_reply_and_replies_keep_order() -> None:
    conn = greeted()
    conn.receive_data(MAIL + RCPT + b"RCPT TO:<e@f.example>\r\nDATA\r\n")
    seen = []
    wire = b""
    for reply in [OK, OK, Reply(code=550, lines="no"), Reply(code=354, lines="go")]:
        event = conn.next_event()
        seen.append(type(event))
        assert conn.next_event() is PAUSED  # nothing more until we answer
        wire += conn.send(reply)
    assert seen == [Mail, Rcpt, Rcpt, Data]
    assert wire == (b"250 2.0.0 OK\r\n250 2.0.0 OK\r\n550 5.0.0 no\r\n354 go\r\n")
    assert conn.next_event() is NEED_DATA


def test_a_whole_session_pipelined_in_one_read() -> None:
    session = (
        b"EHLO c.example\r\n" + MAIL + RCPT + b"DATA\r\n"
        b"Subject: hi\r\n\r\n..dotted\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n"
    )
    events, wire = converse([session])
    assert [type(e) for e in events] == [
        Hello, Mail, Rcpt, Data, MessageData, EndOfMessage, Reset, Noop, Quit,
    ]  # fmt: skip
    assert content_of(events) == b"Subject: hi\r\n\r\n.dotted\r\n"
    ehlo_lines = len(answer(Hello(domain="x")).lines)  # type: ignore[union-attr]
    assert wire.count(b"\r\n") == 8 + ehlo_lines - 1  # one reply per command
    assert wire.endswith(b"221 2.0.0 bye\r\n")


# --- Transactions -----------------------------------------------------------------------


def test_second_ehlo_resets_the_transaction() -> None:
    conn = greeted()
    feed(conn, MAIL)
    conn.send(OK)
    assert conn.stage is Stage.MAIL
    feed(conn, b"EHLO again.example\r\n")
    conn.send(Reply(code=250, lines="mx"))
    assert conn.stage is Stage.READY
    [event] = feed(conn, RCPT)
    assert isinstance(event, InvalidCommand)
    assert event.reply_hint.code == 503


def test_rset_resets_and_refused_mail_opens_nothing() -> None:
    conn = greeted()
    feed(conn, MAIL)
    conn.send(Reply(code=550, lines="not you"))
    assert conn.stage is Stage.READY
    feed(conn, MAIL)
    conn.send(OK)
    feed(conn, RCPT)
    conn.send(OK)
    assert conn.stage is Stage.RCPT
    feed(conn, b"RSET\r\n")
    conn.send(OK)
    assert conn.stage is Stage.READY


def test_data_without_accepted_recipients() -> None:
    conn = greeted()
    feed(conn, MAIL)
    conn.send(OK)
    feed(conn, RCPT)
    conn.send(Reply(code=550, lines="unknown"))
    [event] = feed(conn, b"DATA\r\n")
    assert isinstance(event, InvalidCommand)
    assert (event.reply_hint.code, event.reply_hint.enhanced) == (554, "5.5.1")


def test_after_the_message_a_new_transaction_may_start() -> None:
    events, _wire = converse(
        [
            b"EHLO c\r\n",
            MAIL,
            RCPT,
            b"DATA\r\n",
            b"one\r\n.\r\n",
            MAIL,
            RCPT,
            b"DATA\r\n",
            b"two\r\n.\r\n",
        ]
    )
    assert [e for e in events if isinstance(e, EndOfMessage)] == [EndOfMessage()] * 2
    assert content_of(events) == b"one\r\ntwo\r\n"


def test_greeting_554_leaves_only_quit() -> None:
    conn = Connection(SERVER)
    conn.send(Reply(code=554, lines="no SMTP service here"))
    for line in (b"EHLO c\r\n", b"NOOP\r\n", MAIL):
        [event] = feed(conn, line)
        assert isinstance(event, InvalidCommand)
        assert event.reply_hint.code == 503
        conn.send(event.reply_hint)
    assert feed(conn, b"QUIT\r\n") == [Quit()]
    conn.send(Reply(code=221, lines="bye"))
    assert conn.our_state is Phase.CLOSED


# --- Limits -------------------------------------------------------------------------------


def test_too_many_recipients_get_452_and_do_not_count_as_errors() -> None:
    conn = greeted(Config(max_recipients=2, max_invalid_commands=1))
    feed(conn, MAIL)
    conn.send(OK)
    for _ in range(2):
        feed(conn, RCPT)
        conn.send(OK)
    for _ in range(5):
        [event] = feed(conn, RCPT)
        assert isinstance(event, InvalidCommand)
        assert (event.reply_hint.code, event.reply_hint.enhanced) == (452, "4.5.3")
        conn.send(event.reply_hint)
    # Refused recipients do not count towards the limit; only accepted ones do.
    feed(conn, b"RSET\r\n")
    conn.send(OK)
    feed(conn, MAIL)
    conn.send(OK)
    feed(conn, RCPT)
    conn.send(Reply(code=550, lines="unknown"))
    feed(conn, RCPT)
    conn.send(OK)
    feed(conn, RCPT)
    conn.send(OK)
    [event] = feed(conn, RCPT)
    assert isinstance(event, InvalidCommand)
    assert event.reply_hint.code == 452


def test_invalid_command_budget_ends_the_session_with_421() -> None:
    conn = greeted(Config(max_invalid_commands=3))
    for _ in range(3):
        [event] = feed(conn, b"FROB\r\n")
        conn.send(event.reply_hint)  # type: ignore[attr-defined]
    with pytest.raises(RemoteProtocolError) as info:
        feed(conn, b"FROB\r\n")
    hint = info.value.reply_hint
    assert isinstance(hint, Reply)
    assert (hint.code, hint.enhanced) == (421, "4.7.0")
    assert conn.their_state is Phase.ERROR
    assert conn.send(hint) == b"421 4.7.0 Too many errors; closing\r\n"
    assert conn.our_state is Phase.CLOSED
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_a_delivered_message_restores_the_budget() -> None:
    conn = greeted(Config(max_invalid_commands=2))
    for _ in range(2):
        [event] = feed(conn, b"FROB\r\n")
        conn.send(event.reply_hint)  # type: ignore[attr-defined]
    for line, reply in [(MAIL, OK), (RCPT, OK), (b"DATA\r\n", Reply(code=354, lines="go"))]:
        feed(conn, line)
        conn.send(reply)
    feed(conn, b"x\r\n.\r\n")
    conn.send(OK)
    for _ in range(2):
        [event] = feed(conn, b"FROB\r\n")
        conn.send(event.reply_hint)  # type: ignore[attr-defined]


def test_size_declared_over_the_limit() -> None:
    conn = greeted(Config(max_message_size=1000))
    [event] = feed(conn, b"MAIL FROM:<a@b.example> SIZE=1001\r\n")
    assert isinstance(event, InvalidCommand)
    assert (event.reply_hint.code, event.reply_hint.enhanced) == (552, "5.3.4")


def test_oversized_message_is_read_to_its_end_before_552() -> None:
    body = b"0123456789" * 10 + b"\r\n"
    chunks = [b"EHLO c\r\n", MAIL, RCPT, b"DATA\r\n"] + [body] * 30 + [b".\r\nNOOP\r\n"]
    events, wire = converse(chunks, Config(max_message_size=1000))
    refusal = next(e for e in events if isinstance(e, InvalidMessage))
    assert refusal.reply_hint.code == 552
    assert isinstance(events[-2], Noop)  # the session goes on after the real end
    assert b"552 5.3.4" in wire
    assert len(content_of(events)) <= 1000


# --- Fatal errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"NOOP\n", b"EHLO a\nMAIL FROM:<a@b>\r\n", b"NO\rOP\r\n", b"RSET\r\r\n"],
)
def test_bare_cr_or_lf_in_a_command_line_is_fatal(data: bytes) -> None:
    conn = greeted()
    with pytest.raises(RemoteProtocolError) as info:
        feed(conn, data)
    hint = info.value.reply_hint
    assert isinstance(hint, Reply)
    assert (hint.code, hint.enhanced) == (500, "5.5.2")
    assert conn.their_state is Phase.ERROR
    assert conn.our_state is Phase.COMMAND


def test_bytes_after_quit_are_fatal() -> None:
    conn = greeted()
    conn.receive_data(b"QUIT\r\nNOOP\r\n")
    assert conn.next_event() == Quit()
    conn.send(Reply(code=221, lines="bye"))
    with pytest.raises(RemoteProtocolError, match="after QUIT"):
        conn.next_event()


def test_http_request_is_fatal() -> None:
    conn = server()
    with pytest.raises(RemoteProtocolError) as info:
        feed(conn, b"POST / HTTP/1.1\r\nHost: x\r\n\r\nMAIL FROM:<a@b>\r\n")
    assert info.value.reply_hint.code == 221  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "line", [b"BDAT\r\n", b"BDAT x\r\n", b"BDAT -1\r\n", b"BDAT 1" + b"0" * 20 + b"\r\n"]
)
def test_bdat_without_a_usable_size_is_fatal(line: bytes) -> None:
    conn = greeted()
    with pytest.raises(RemoteProtocolError) as info:
        feed(conn, line)
    assert info.value.reply_hint.code == 501  # type: ignore[attr-defined]


def test_receiving_after_eof_is_a_local_error() -> None:
    conn = greeted()
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"NOOP\r\n")


def test_send_failed_breaks_our_side_for_good() -> None:
    conn = greeted()
    feed(conn, b"NOOP\r\n")
    conn.send_failed()
    assert conn.our_state is Phase.ERROR
    with pytest.raises(LocalProtocolError):
        conn.send(OK)
    with pytest.raises(LocalProtocolError):
        conn.next_event()


def test_send_accepts_only_replies() -> None:
    conn = greeted()
    feed(conn, b"NOOP\r\n")
    with pytest.raises(LocalProtocolError):
        conn.send(Noop())  # type: ignore[arg-type]


# --- EOF ------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"NOO", MAIL + b"RCPT TO:<c@d.exa", b"BDAT 10\r\nabc"])
def test_eof_anywhere_in_a_command_is_connection_closed(data: bytes) -> None:
    events, _ = converse([b"EHLO c\r\n" + data], eof=True)
    assert isinstance(events[-1], ConnectionClosed)


def test_eof_inside_data_is_connection_closed() -> None:
    events, _ = converse([b"EHLO c\r\n", MAIL, RCPT, b"DATA\r\n", b"half a messa"])
    assert isinstance(events[-1], ConnectionClosed)
    assert not [e for e in events if isinstance(e, EndOfMessage)]


def test_eof_waits_for_the_pending_reply() -> None:
    conn = greeted()
    conn.receive_data(b"NOOP\r\n")
    conn.receive_data(b"")
    assert conn.next_event() == Noop()
    assert conn.next_event() is PAUSED
    conn.send(OK)
    assert conn.next_event() == ConnectionClosed()
    assert conn.their_state is Phase.CLOSED
    assert conn.next_event() == ConnectionClosed()


# --- STARTTLS -----------------------------------------------------------------------------

TLS_EHLO = ("mx.example", "STARTTLS", "PIPELINING", "ENHANCEDSTATUSCODES")


def tls_pending(extra: bytes = b"") -> Connection:
    conn = greeted(lines=TLS_EHLO)
    assert feed(conn, b"STARTTLS\r\n" + extra) == [StartTLS()]
    assert conn.send(Reply(code=220, lines="ready")) == b"220 2.0.0 ready\r\n"
    assert conn.our_state is Phase.TLS_PENDING
    return conn


def test_starttls_resets_the_session() -> None:
    conn = tls_pending()
    assert conn.next_event() is PAUSED
    conn.start_tls()
    assert conn.tls_active
    assert not conn.esmtp
    assert conn.extensions == {}
    assert conn.stage is Stage.NEED_HELLO
    [event] = feed(conn, MAIL)
    assert isinstance(event, InvalidCommand)
    assert event.reply_hint.code == 503
    conn.send(event.reply_hint)
    feed(conn, b"EHLO c\r\n")
    with pytest.raises(LocalProtocolError, match="STARTTLS"):
        conn.send(Reply(code=250, lines=TLS_EHLO))  # RFC 3207 §4.2


def test_starttls_twice_is_out_of_sequence() -> None:
    conn = tls_pending()
    conn.start_tls()
    feed(conn, b"EHLO c\r\n")
    conn.send(Reply(code=250, lines=("mx.example", "PIPELINING")))
    [event] = feed(conn, b"STARTTLS\r\n")
    assert isinstance(event, InvalidCommand)
    assert event.reply_hint.code == 503


def test_plaintext_pipelined_after_starttls_is_an_attack() -> None:
    conn = tls_pending(extra=b"MAIL FROM:<evil@x.example>\r\n")
    assert conn.next_event() is PAUSED  # never parsed
    with pytest.raises(RemoteProtocolError) as info:
        conn.start_tls()
    assert info.value.reply_hint.code == 421  # type: ignore[attr-defined]
    assert conn.their_state is Phase.ERROR


def test_plaintext_arriving_during_the_handshake_is_refused_too() -> None:
    conn = tls_pending()
    conn.receive_data(b"RSET\r\n")
    with pytest.raises(RemoteProtocolError):
        conn.start_tls()


def test_start_tls_outside_the_switch_is_a_local_error() -> None:
    conn = greeted(lines=TLS_EHLO)
    with pytest.raises(LocalProtocolError):
        conn.start_tls()


def test_starttls_refused_by_the_application_goes_on_in_plaintext() -> None:
    conn = greeted(lines=TLS_EHLO)
    feed(conn, b"STARTTLS\r\n")
    conn.send(Reply(code=454, lines="TLS not available"))
    assert conn.our_state is Phase.COMMAND
    assert not conn.tls_active


# --- BDAT (RFC 3030) ------------------------------------------------------------------------


def bdat_session(*chunks: bytes, config: Config | None = None) -> tuple[list, bytes]:  # type: ignore[type-arg]
    return converse([b"EHLO c\r\n", MAIL, RCPT, *chunks], config)


def test_bdat_chunks_of_various_sizes() -> None:
    events, _wire = bdat_session(
        b"BDAT 5\r\nhello", b"BDAT 2\r\n\r\n", b"BDAT 0\r\n", b"BDAT 6 LAST\r\nworld!"
    )
    assert [type(e) for e in events[3:]] == [
        Bdat, MessageData, EndOfChunk, Bdat, MessageData, EndOfChunk, Bdat, EndOfChunk,
        Bdat, MessageData, EndOfMessage, ConnectionClosed,
    ]  # fmt: skip
    assert content_of(events) == b"hello\r\nworld!"
    assert events[3] == Bdat(size=5)
    assert events[-4] == Bdat(size=6, last=True)


def test_bdat_0_last_ends_the_message() -> None:
    events, _ = bdat_session(b"BDAT 3\r\nabc", b"BDAT 0 LAST\r\n")
    assert events[-3:] == [Bdat(size=0, last=True), EndOfMessage(), ConnectionClosed()]


def test_bdat_octets_are_not_commands() -> None:
    events, _ = bdat_session(b"BDAT 12 LAST\r\nQUIT\r\nRSET\r\n", b"NOOP\r\n")
    assert content_of(events) == b"QUIT\r\nRSET\r\n"
    assert isinstance(events[-2], Noop)


def test_bdat_without_mail_is_consumed_then_refused() -> None:
    events, _wire = converse([b"EHLO c\r\nBDAT 12\r\nRSET\r\nQUIT\r\nNOOP\r\n"])
    [refusal] = [e for e in events if isinstance(e, InvalidCommand)]
    assert refusal.reply_hint.code == 503
    assert refusal.line == b"BDAT 12"
    assert [type(e) for e in events] == [Hello, InvalidCommand, Noop, ConnectionClosed]


def test_bdat_not_advertised_is_consumed_then_refused() -> None:
    conn = greeted(lines=("mx.example",))
    feed(conn, MAIL)
    conn.send(OK)
    feed(conn, RCPT)
    conn.send(OK)
    [event] = feed(conn, b"BDAT 4\r\nQUIT")
    assert isinstance(event, InvalidCommand)
    assert event.reply_hint.code == 502


def test_data_after_bdat_is_refused() -> None:
    conn = greeted()
    for line in (MAIL, RCPT):
        feed(conn, line)
        conn.send(OK)
    feed(conn, b"BDAT 3\r\nabc")
    conn.send(OK)
    [event] = feed(conn, b"DATA\r\n")
    assert isinstance(event, InvalidCommand)
    assert (event.reply_hint.code, event.reply_hint.enhanced) == (503, "5.5.1")


def test_bdat_over_the_size_limit_keeps_reading_and_refuses_at_last() -> None:
    events, wire = bdat_session(
        b"BDAT 600\r\n" + b"x" * 600,
        b"BDAT 600\r\n" + b"y" * 600,
        b"BDAT 1 LAST\r\nz",
        config=Config(max_message_size=1000),
    )
    assert [type(e) for e in events if not isinstance(e, MessageData)][3:] == [
        Bdat, EndOfChunk, Bdat, EndOfChunk, Bdat, InvalidMessage, ConnectionClosed,
    ]  # fmt: skip
    assert b"552 5.3.4" in wire


def test_chunks_pipelined_behind_a_refused_chunk_are_dropped() -> None:
    conn = greeted(Config(max_invalid_commands=0))
    for line in (MAIL, RCPT):
        feed(conn, line)
        conn.send(OK)
    conn.receive_data(b"BDAT 3\r\nabcBDAT 3\r\ndefBDAT 3 LAST\r\nghiRSET\r\n")
    assert [type(e) for e in drain_all(conn)] == [Bdat, MessageData, EndOfChunk]
    conn.send(Reply(code=452, lines="disk full"))
    for _ in range(2):
        [event] = drain_all(conn)
        assert isinstance(event, InvalidCommand)
        assert event.reply_hint.code == 503
        conn.send(event.reply_hint)  # not counted: the budget of 0 would end the session
    assert drain_all(conn) == [Reset()]


def drain_all(conn: Connection) -> list:  # type: ignore[type-arg]
    out = []
    while (event := conn.next_event()) not in (NEED_DATA, PAUSED):
        out.append(event)
    return out


def test_bare_cr_in_data_refuses_and_the_session_goes_on() -> None:
    events, wire = converse([b"EHLO c\r\n", MAIL, RCPT, b"DATA\r\n", b"a\rb\r\n.\r\nNOOP\r\n"])
    assert any(isinstance(e, InvalidMessage) for e in events)
    assert b"550 5.6.0" in wire
    assert isinstance(events[-2], Noop)


def test_trailing_data() -> None:
    conn = greeted()
    conn.receive_data(b"NOOP\r\nRS")
    conn.next_event()
    assert conn.trailing_data == (b"RS", False)


def test_421_during_data_stops_reading_content() -> None:
    conn = greeted()
    for line, reply in [(MAIL, OK), (RCPT, OK), (b"DATA\r\n", Reply(code=354, lines="go"))]:
        feed(conn, line)
        conn.send(reply)
    conn.receive_data(b"x" * 10000)
    assert conn.send(Reply(code=421, lines="shutting down")) == b"421 4.0.0 shutting down\r\n"
    assert conn.next_event() is PAUSED
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()


def test_command_line_limit_is_512_octets_with_crlf() -> None:
    conn = greeted()
    line = b"NOOP " + b"x" * (512 - 2 - 5)
    assert feed(conn, line + b"\r\n") == [Noop(argument="x" * 505)]
    conn.send(OK)
    [event] = feed(conn, line + b"x\r\n")
    assert isinstance(event, InvalidCommand)
    assert (event.reply_hint.code, event.reply_hint.text) == (500, "Line too long")
    conn.send(event.reply_hint)
    # Past the hard cap the line is not even buffered: the session ends.
    with pytest.raises(RemoteProtocolError):
        feed(conn, b"NOOP " + b"x" * conn.config.command_line_cap)
