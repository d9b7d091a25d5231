"""The SMTP client core byte for byte: replies (whole, split at every byte, malformed,
bounded), the FIFO of pending commands, what may be sent when, content, BDAT, AUTH,
STARTTLS and 421."""

from __future__ import annotations

import pytest

import sansmail.smtp
from sansmail import CLIENT, NEED_DATA, PAUSED, LocalProtocolError, RemoteProtocolError
from sansmail.mail.address import Address
from sansmail.sasl import RemoteSASLError
from sansmail.smtp import (
    Auth,
    AuthCancel,
    AuthResponse,
    Bdat,
    ClientConnection,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Hello,
    Help,
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
    Verify,
    challenge_data,
    encode_xtext,
)

A = Address(local_part="a", domain="a.example")
B = Address(local_part="b", domain="b.example")
EHLO_REPLY = (
    b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
    b"250-CHUNKING\r\n250-DSN\r\n250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n"
    b"250 AUTH PLAIN SCRAM-SHA-256\r\n"
)


def reply(conn: ClientConnection, data: bytes) -> Reply:
    conn.receive_data(data)
    event = conn.next_event()
    assert isinstance(event, Reply), event
    return event


def greeted(ehlo: bytes = EHLO_REPLY) -> ClientConnection:
    """A client that got the greeting, sent EHLO and read `ehlo` (250 lines)."""
    conn = ClientConnection()
    reply(conn, b"220 mx.example ESMTP\r\n")
    assert conn.send(Hello(domain="client.example")) == b"EHLO client.example\r\n"
    reply(conn, ehlo)
    return conn


PLAIN_EHLO = b"250-mx.example\r\n250 8BITMIME\r\n"  # no PIPELINING, no enhanced codes


# --- API ---------------------------------------------------------------------------------


def test_public_names_of_the_client_role() -> None:
    for name in ("ClientConnection", "challenge_data", "encode_xtext"):
        assert name in sansmail.smtp.__all__
        assert getattr(sansmail.smtp, name) is not None


def test_roles_and_initial_state() -> None:
    conn = ClientConnection()
    assert conn.our_role is CLIENT
    assert conn.our_state is Phase.GREETING
    assert conn.pending == (None,)
    assert conn.next_event() is NEED_DATA
    with pytest.raises(ValueError):
        ClientConnection(max_reply_line=100)


# --- Replies -----------------------------------------------------------------------------


def test_greeting_and_ehlo_reply_set_extensions() -> None:
    conn = greeted()
    assert conn.our_state is Phase.COMMAND
    assert conn.stage is Stage.READY
    assert conn.esmtp
    assert conn.pipelining
    assert conn.extensions["SIZE"] == "1000"
    assert conn.extensions["AUTH"] == "PLAIN SCRAM-SHA-256"
    assert isinstance(conn.answered, Hello)


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (b"220 mx ready\r\n", Reply(code=220, lines="mx ready")),
        (b"220\r\n", Reply(code=220, lines="")),
        (b"220 \r\n", Reply(code=220, lines="")),
        (b"220-one\r\n220-\r\n220 three\r\n", Reply(code=220, lines=("one", "", "three"))),
        # Non-UTF-8 text (an old server in Latin-1) and NUL: readable, not fatal.
        (b"220 caf\xe9 \x00\r\n", Reply(code=220, lines="caf\ufffd \ufffd")),
        ("220 ça va\r\n".encode(), Reply(code=220, lines="ça va")),
    ],
)
def test_greeting_forms_whole_and_split_at_every_byte(wire: bytes, expected: Reply) -> None:
    for cut in range(1, len(wire) + 1):
        conn = ClientConnection()
        conn.receive_data(wire[:cut])
        if cut < len(wire):
            assert conn.next_event() is NEED_DATA
            conn.receive_data(wire[cut:])
        assert conn.next_event() == expected
    conn = ClientConnection()
    for i in range(len(wire)):
        assert conn.next_event() is NEED_DATA
        conn.receive_data(wire[i : i + 1])
    assert conn.next_event() == expected


@pytest.mark.parametrize(
    "wire",
    [
        b"22 short\r\n",
        b"2x0 letters\r\n",
        b"220_bad separator\r\n",
        b"199 too low\r\n",
        b"600 too high\r\n",
        b"220-first\r\n250 other code\r\n",
        b"220 bare LF\n",
        b"220 bare\rCR\r\n",
    ],
)
def test_malformed_replies_are_fatal(wire: bytes) -> None:
    conn = ClientConnection()
    conn.receive_data(wire)
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    assert conn.their_state is Phase.ERROR
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.send(Quit())


def test_reply_lines_longer_than_512_are_accepted_up_to_the_cap() -> None:
    conn = ClientConnection()
    text = b"x" * (4096 - 6)
    assert reply(conn, b"220 " + text + b"\r\n").lines == (text.decode(),)
    conn = ClientConnection()
    conn.receive_data(b"220 " + text + b"x\r\n")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    # The cap holds while the line is still arriving: memory stays bounded.
    conn = ClientConnection(max_reply_line=600)
    conn.receive_data(b"220 " + b"y" * 700)
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_reply_line_count_is_capped() -> None:
    conn = ClientConnection(max_reply_lines=3)
    assert reply(conn, b"220-a\r\n220-b\r\n220 c\r\n").lines == ("a", "b", "c")
    conn = ClientConnection(max_reply_lines=3)
    conn.receive_data(b"220-a\r\n220-b\r\n220-c\r\n")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_eof_between_replies_and_inside_one() -> None:
    conn = ClientConnection()
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), ConnectionClosed)
    assert conn.our_state is Phase.CLOSED
    with pytest.raises(LocalProtocolError):
        conn.send(Hello(domain="c"))
    conn = ClientConnection()
    conn.receive_data(b"220-first line\r\n")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    conn = ClientConnection()
    conn.receive_data(b"220 no line end")
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"more")


def test_enhanced_codes_are_split_off_except_on_greeting_and_ehlo() -> None:
    conn = greeted()
    conn.send(Noop())
    assert reply(conn, b"250 2.0.0 OK\r\n") == Reply(code=250, lines="OK", enhanced="2.0.0")
    conn.send(Noop())
    got = reply(conn, b"550-5.1.1 no such\r\n550 5.1.1 user\r\n")
    assert got == Reply(code=550, lines=("no such", "user"), enhanced="5.1.1")
    conn.send(Noop())
    assert reply(conn, b"250 2.0.0\r\n") == Reply(code=250, lines="", enhanced="2.0.0")
    conn.send(Noop())
    # A code of another class is text, not a status.
    assert reply(conn, b"550 4.1.1 odd\r\n") == Reply(code=550, lines="4.1.1 odd")
    conn.send(Noop())
    assert reply(conn, b"250 2.0.0  two spaces\r\n").lines == (" two spaces",)
    conn.send(Noop())
    assert reply(conn, b"250 2.0.0000 x\r\n").lines == ("2.0.0000 x",)  # four digits: text
    # Greeting / EHLO replies keep their text (RFC 2034 §3).
    conn.send(Hello(domain="c"))
    again = reply(conn, b"250-2.0.0 mx\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n")
    assert again.enhanced is None
    assert again.lines[0] == "2.0.0 mx"
    # 3xx never carries one.
    conn.send(Mail(reverse_path=A))
    conn.send(Rcpt(forward_path=B))
    conn.send(Data())
    reply(conn, b"250 2.1.0 ok\r\n")
    reply(conn, b"250 2.1.5 ok\r\n")
    assert reply(conn, b"354 2.0.0 go\r\n") == Reply(code=354, lines="2.0.0 go")


def test_enhanced_codes_are_read_without_the_extension_too() -> None:
    # aiosmtpd and others write codes without advertising ENHANCEDSTATUSCODES.
    conn = greeted(PLAIN_EHLO)
    conn.send(Noop())
    assert reply(conn, b"250 2.0.0 OK\r\n") == Reply(code=250, lines="OK", enhanced="2.0.0")
    conn.send(Noop())
    assert reply(conn, b"250 OK\r\n") == Reply(code=250, lines="OK")


# --- The FIFO and pipelining -----------------------------------------------------------


def test_pipelined_group_replies_are_matched_in_order() -> None:
    conn = greeted()
    wire = conn.send(Mail(reverse_path=A, parameters={"SIZE": "10"}))
    wire += conn.send(Rcpt(forward_path=B))
    wire += conn.send(Rcpt(forward_path=A))
    wire += conn.send(Data())
    assert wire == (
        b"MAIL FROM:<a@a.example> SIZE=10\r\nRCPT TO:<b@b.example>\r\n"
        b"RCPT TO:<a@a.example>\r\nDATA\r\n"
    )
    assert [type(e) for e in conn.pending] == [Mail, Rcpt, Rcpt, Data]
    assert conn.our_state is Phase.REPLY  # DATA is last in its group
    with pytest.raises(LocalProtocolError):
        conn.send(Noop())
    conn = greeted()
    for event in (Mail(reverse_path=A), Rcpt(forward_path=B), Rcpt(forward_path=A), Data()):
        conn.send(event)
    conn.receive_data(b"250 2.1.0 ok\r\n550 5.1.1 no\r\n250 2.1.5 ok\r\n354 go\r\n")
    seen = []
    while isinstance(event := conn.next_event(), Reply):
        seen.append((type(conn.answered).__name__, event.code))
    assert seen == [("Mail", 250), ("Rcpt", 550), ("Rcpt", 250), ("Data", 354)]
    assert conn.our_state is Phase.DATA
    assert conn.stage is Stage.RCPT


def test_without_pipelining_every_command_waits_for_its_reply() -> None:
    conn = greeted(PLAIN_EHLO)
    conn.send(Mail(reverse_path=A))
    assert conn.our_state is Phase.REPLY
    with pytest.raises(LocalProtocolError, match="RFC 2920"):
        conn.send(Rcpt(forward_path=B))
    assert conn.our_state is Phase.ERROR  # a refused send breaks our side for good


def test_a_reply_nobody_asked_for_is_fatal_but_421_is_not() -> None:
    conn = greeted()
    conn.receive_data(b"250 surprise\r\n")
    with pytest.raises(RemoteProtocolError, match="no command pending"):
        conn.next_event()
    conn = greeted()
    assert reply(conn, b"421 4.4.2 idle too long\r\n").code == 421
    assert conn.answered is None
    assert conn.our_state is Phase.CLOSED
    with pytest.raises(LocalProtocolError):
        conn.send(Mail(reverse_path=A))


def test_421_ends_the_session_whatever_it_answers() -> None:
    conn = greeted()
    conn.send(Mail(reverse_path=A))
    conn.send(Rcpt(forward_path=B))
    conn.receive_data(b"421 4.3.2 shutting down\r\n")
    assert conn.next_event() == Reply(code=421, lines="shutting down", enhanced="4.3.2")
    assert isinstance(conn.answered, Mail)
    assert conn.pending == ()
    assert conn.our_state is Phase.CLOSED
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"junk after the close is ignored\r\n")
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), ConnectionClosed)
    # A 421 greeting, too.
    conn = ClientConnection()
    assert reply(conn, b"421 busy\r\n").code == 421
    assert conn.our_state is Phase.CLOSED


@pytest.mark.parametrize(
    ("command", "wire"),
    [
        (Mail(reverse_path=A), b"354 no\r\n"),
        (Data(), b"250 no\r\n"),
        (Rcpt(forward_path=B), b"334 \r\n"),
        (Noop(), b"354 x\r\n"),
    ],
)
def test_replies_the_server_tables_forbid_are_fatal(
    command: sansmail.smtp.Event, wire: bytes
) -> None:
    conn = greeted()
    if isinstance(command, Rcpt | Data):
        conn.send(Mail(reverse_path=A))
        reply(conn, b"250 ok\r\n")
    if isinstance(command, Data):
        conn.send(Rcpt(forward_path=B))
        reply(conn, b"250 ok\r\n")
    conn.send(command)
    conn.receive_data(wire)
    with pytest.raises(RemoteProtocolError, match="not a valid reply"):
        conn.next_event()


# --- What may be sent when ------------------------------------------------------------


def test_nothing_before_the_greeting() -> None:
    conn = ClientConnection()
    with pytest.raises(LocalProtocolError, match="greeting"):
        conn.send(Hello(domain="c"))


def test_command_order_is_checked_against_the_projected_stage() -> None:
    conn = ClientConnection()
    reply(conn, b"220 hi\r\n")
    with pytest.raises(LocalProtocolError, match="NEED_HELLO"):
        conn.send(Mail(reverse_path=A))
    conn = greeted()
    with pytest.raises(LocalProtocolError, match="out of sequence"):
        conn.send(Rcpt(forward_path=B))
    conn = greeted()
    conn.send(Mail(reverse_path=A))
    with pytest.raises(LocalProtocolError):
        conn.send(Mail(reverse_path=A))  # nested MAIL, even pipelined
    conn = greeted()
    conn.send(Mail(reverse_path=A))
    with pytest.raises(LocalProtocolError):
        conn.send(Data())  # no recipient in the group


def test_failed_mail_keeps_the_stage_and_rset_pipelines() -> None:
    conn = greeted()
    conn.send(Mail(reverse_path=A))
    conn.send(Rcpt(forward_path=B))
    conn.send(Reset())
    conn.send(Mail(reverse_path=A))
    conn.receive_data(b"550 no\r\n503 no\r\n250 ok\r\n250 ok\r\n")
    codes = []
    while isinstance(event := conn.next_event(), Reply):
        codes.append(event.code)
    assert codes == [550, 503, 250, 250]
    assert conn.stage is Stage.MAIL


def test_after_a_5xx_greeting_only_quit() -> None:
    conn = ClientConnection()
    reply(conn, b"554 go away\r\n")
    assert conn.stage is Stage.REFUSED
    assert conn.send(Quit()) == b"QUIT\r\n"
    conn = ClientConnection()
    reply(conn, b"554 go away\r\n")
    with pytest.raises(LocalProtocolError):
        conn.send(Hello(domain="c"))


def test_nothing_after_quit() -> None:
    conn = greeted()
    conn.send(Quit())
    with pytest.raises(LocalProtocolError):
        conn.send(Noop())
    conn = greeted()
    conn.send(Quit())
    assert reply(conn, b"221 2.0.0 bye\r\n").code == 221
    assert conn.our_state is Phase.CLOSED
    with pytest.raises(LocalProtocolError, match="closed"):
        conn.send(Noop())


def test_extensions_must_have_been_offered() -> None:
    for event in (
        Mail(reverse_path=A, parameters={"SIZE": "5"}),
        Mail(reverse_path=A, parameters={"RET": "HDRS"}),
        Mail(reverse_path=A, parameters={"X-FOO": "1"}),
        StartTLS(),
        Auth(mechanism="PLAIN"),
    ):
        conn = greeted(PLAIN_EHLO)
        with pytest.raises(LocalProtocolError):
            conn.send(event)
    conn = greeted(PLAIN_EHLO)
    conn.send(Mail(reverse_path=A))
    reply(conn, b"250 ok\r\n")
    conn.send(Rcpt(forward_path=B))
    reply(conn, b"250 ok\r\n")
    with pytest.raises(LocalProtocolError, match="CHUNKING"):
        conn.send(Bdat(size=3, last=True))
    conn = greeted()
    with pytest.raises(LocalProtocolError, match="not offered"):
        conn.send(Auth(mechanism="LOGIN"))


def test_helo_fallback_leaves_no_extensions() -> None:
    conn = ClientConnection()
    reply(conn, b"220 old\r\n")
    conn.send(Hello(domain="c.example"))
    assert reply(conn, b"500 what?\r\n").code == 500
    assert conn.stage is Stage.NEED_HELLO
    assert conn.send(Hello(domain="c.example", extended=False)) == b"HELO c.example\r\n"
    reply(conn, b"250 old.example\r\n")
    assert conn.extensions == {}
    assert not conn.esmtp
    assert conn.stage is Stage.READY


# --- Command lines ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "wire"),
    [
        (Mail(reverse_path=None), b"MAIL FROM:<>\r\n"),
        (
            Mail(
                reverse_path=Address(local_part="a b", domain="x.example"),
                parameters={"BODY": "8BITMIME"},
            ),
            b'MAIL FROM:<"a b"@x.example> BODY=8BITMIME\r\n',
        ),
        (
            Rcpt(forward_path=Address(local_part="Postmaster", domain="")),
            b"RCPT TO:<Postmaster>\r\n",
        ),
        (Noop(), b"NOOP\r\n"),
        (Noop(argument="x y"), b"NOOP x y\r\n"),
        (Help(), b"HELP\r\n"),
        (Help(topic="MAIL"), b"HELP MAIL\r\n"),
        (Verify(argument="jörg"), "VRFY jörg\r\n".encode()),
        (Reset(), b"RSET\r\n"),
    ],
)
def test_command_lines(event: sansmail.smtp.Event, wire: bytes) -> None:
    conn = greeted()
    if isinstance(event, Rcpt):
        conn.send(Mail(reverse_path=A))
    assert conn.send(event) == wire


@pytest.mark.parametrize(
    "event",
    [
        Hello(domain=" spaced"),
        Hello(domain="ünïcode"),
        Verify(argument=""),
        Noop(argument="ü"),
        Mail(reverse_path=Address(local_part="jörg", domain="x.example")),  # no SMTPUTF8
        Mail(reverse_path=Address(local_part="Postmaster", domain="")),
        Mail(reverse_path=A, parameters={"ENVID": "a\tb"}),
    ],
)
def test_commands_the_server_would_read_differently_are_refused(event: sansmail.smtp.Event) -> None:
    conn = greeted()
    with pytest.raises(LocalProtocolError):
        conn.send(event)


def test_utf8_envelope_needs_smtputf8_transaction() -> None:
    jorg = Address(local_part="jörg", domain="x.example")
    conn = greeted()
    conn.send(Mail(reverse_path=A))
    with pytest.raises(LocalProtocolError, match="SMTPUTF8"):
        conn.send(Rcpt(forward_path=jorg))
    conn = greeted()
    wire = conn.send(Mail(reverse_path=jorg, parameters={"SMTPUTF8": None}))
    assert wire == "MAIL FROM:<jörg@x.example> SMTPUTF8\r\n".encode()
    assert conn.send(Rcpt(forward_path=jorg)) == "RCPT TO:<jörg@x.example>\r\n".encode()


def test_line_length_limits() -> None:
    conn = greeted()
    with pytest.raises(LocalProtocolError, match="512"):
        conn.send(Help(topic="x" * 510))
    conn = greeted()
    # RCPT may use the parameter allowance (an ORCPT of 500 characters).
    orcpt = "rfc822;" + "x" * 493
    assert len(conn.send(Mail(reverse_path=A))) < 512
    assert len(conn.send(Rcpt(forward_path=B, parameters={"ORCPT": orcpt}))) > 512
    conn = greeted()
    # RFC 4954 §4: an initial response that makes AUTH too long must wait for the 334.
    with pytest.raises(LocalProtocolError, match="334"):
        conn.send(Auth(mechanism="PLAIN", initial_response=b"x" * 400))


def test_encode_xtext() -> None:
    assert encode_xtext(b"a+b=c d\xc3\xa9!~") == "a+2Bb+3Dc+20d+C3+A9!~"


# --- Content -----------------------------------------------------------------------------


def in_data() -> ClientConnection:
    conn = greeted()
    for event in (Mail(reverse_path=A), Rcpt(forward_path=B), Data()):
        conn.send(event)
    conn.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n")
    for _ in range(3):
        assert isinstance(conn.next_event(), Reply)
    assert conn.our_state is Phase.DATA
    return conn


def send_content(chunks: list[bytes]) -> bytes:
    conn = in_data()
    out = b"".join(conn.send(MessageData(data=chunk)) for chunk in chunks)
    return out + conn.send(EndOfMessage())


@pytest.mark.parametrize(
    ("content", "wire"),
    [
        (b"", b".\r\n"),
        (b"Subject: x\r\n\r\nbody\r\n", b"Subject: x\r\n\r\nbody\r\n.\r\n"),
        (b"no final newline", b"no final newline\r\n.\r\n"),
        (b".leading dot\r\n..two\r\n.\r\n", b"..leading dot\r\n...two\r\n..\r\n.\r\n"),
        (b"bare\nLF\n.dot\n", b"bare\r\nLF\r\n..dot\r\n.\r\n"),
        (b"a\r\n.", b"a\r\n..\r\n.\r\n"),
    ],
)
def test_content_is_stuffed_and_terminated_whatever_the_chunking(
    content: bytes, wire: bytes
) -> None:
    assert send_content([content]) == wire
    assert send_content([content[i : i + 1] for i in range(len(content))]) == wire
    for cut in range(len(content) + 1):
        assert send_content([content[:cut], content[cut:]]) == wire


@pytest.mark.parametrize("content", [b"bare\rCR\r\n", b"ends in CR\r", b"\r\r\n"])
def test_bare_cr_in_content_is_refused(content: bytes) -> None:
    conn = in_data()

    def send_it() -> None:
        conn.send(MessageData(data=content))
        conn.send(EndOfMessage())

    with pytest.raises(LocalProtocolError, match="CR"):
        send_it()


def test_content_only_after_354_and_the_final_reply() -> None:
    conn = greeted()
    with pytest.raises(LocalProtocolError):
        conn.send(MessageData(data=b"x"))
    conn = in_data()
    with pytest.raises(LocalProtocolError):
        conn.send(Noop())
    conn = in_data()
    conn.send(MessageData(data=b"hi\r\n"))
    conn.send(EndOfMessage())
    assert conn.pending == (EndOfMessage(),)
    # RFC 2920 §3.1: the end of the content may start a group: MAIL need not wait.
    assert conn.our_state is Phase.COMMAND
    conn.send(Mail(reverse_path=A))
    conn.receive_data(b"250 2.0.0 queued\r\n250 2.1.0 ok\r\n")
    assert reply(conn, b"").code == 250
    assert isinstance(conn.answered, EndOfMessage)
    assert reply(conn, b"").code == 250
    assert conn.stage is Stage.MAIL


def test_bdat_chunks() -> None:
    conn = greeted()
    conn.send(Mail(reverse_path=A))
    conn.send(Rcpt(forward_path=B))
    assert conn.send(Bdat(size=5)) == b"BDAT 5\r\n"
    assert conn.our_state is Phase.BDAT
    with pytest.raises(LocalProtocolError):
        ClientConnection().send(MessageData(data=b"x"))
    assert conn.send(MessageData(data=b"ab")) == b"ab"
    assert conn.send(MessageData(data=b".\r\n")) == b".\r\n"
    assert conn.our_state is Phase.COMMAND
    assert conn.send(Bdat(size=0, last=True)) == b"BDAT 0 LAST\r\n"
    conn.receive_data(b"250 ok\r\n250 ok\r\n250 ok chunk\r\n250 ok message\r\n")
    answered = []
    while isinstance(conn.next_event(), Reply):
        answered.append(conn.answered)
    assert answered[2:] == [Bdat(size=5), Bdat(size=0, last=True)]
    assert conn.stage is Stage.READY


@pytest.mark.parametrize("pieces", [[b"abc\n"], [b"ab\r", b"\ncd"], [b"abcdef"]])
def test_bdat_content_is_checked_and_counted(pieces: list[bytes]) -> None:
    conn = greeted()
    conn.send(Mail(reverse_path=A))
    conn.send(Rcpt(forward_path=B))
    conn.send(Bdat(size=4, last=True))

    def send_them() -> None:
        for piece in pieces:
            conn.send(MessageData(data=piece))

    with pytest.raises(LocalProtocolError):
        send_them()


# --- AUTH and STARTTLS --------------------------------------------------------------------


def test_auth_exchange() -> None:
    conn = greeted()
    assert conn.send(Auth(mechanism="plain")) == b"AUTH PLAIN\r\n"
    challenge = reply(conn, b"334 \r\n")
    assert challenge_data(challenge) == b""
    assert conn.our_state is Phase.AUTH
    with pytest.raises(LocalProtocolError):
        greeted().send(AuthResponse(data=b"x"))
    assert conn.send(AuthResponse(data=b"\0u\0p")) == b"AHUAcA==\r\n"
    assert reply(conn, b"235 2.7.0 ok\r\n").code == 235
    assert conn.authenticated
    with pytest.raises(LocalProtocolError, match="already authenticated"):
        conn.send(Auth(mechanism="PLAIN"))


def test_auth_initial_response_and_cancel() -> None:
    conn = greeted()
    assert conn.send(Auth(mechanism="PLAIN", initial_response=b"")) == b"AUTH PLAIN =\r\n"
    reply(conn, b"334 Zm9v\r\n")
    assert conn.send(AuthCancel()) == b"*\r\n"
    assert reply(conn, b"501 5.0.0 cancelled\r\n").code == 501
    assert not conn.authenticated
    assert conn.our_state is Phase.COMMAND


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        (("Zm9v",), None),
        (("Zm9",), RemoteSASLError),
        (("a", "b"), RemoteSASLError),
        (("é",), RemoteSASLError),
    ],
)
def test_challenge_data(lines: tuple[str, ...], error: type[Exception] | None) -> None:
    reply_ = Reply(code=334, lines=lines)
    if error is None:
        assert challenge_data(reply_) == b"foo"
    else:
        with pytest.raises(error):
            challenge_data(reply_)
    with pytest.raises(ValueError):
        challenge_data(Reply(code=250, lines="x"))


def test_starttls_switch_forgets_the_ehlo_reply() -> None:
    conn = greeted()
    assert conn.send(StartTLS()) == b"STARTTLS\r\n"
    reply(conn, b"220 2.0.0 go ahead\r\n")
    assert conn.our_state is Phase.TLS_PENDING
    assert conn.next_event() is PAUSED
    with pytest.raises(LocalProtocolError):
        greeted().start_tls()
    conn.start_tls()
    assert conn.tls_active
    assert conn.extensions == {}
    assert conn.stage is Stage.NEED_HELLO
    with pytest.raises(LocalProtocolError):
        conn.send(Mail(reverse_path=A))


def test_plaintext_after_the_starttls_220_is_an_attack() -> None:
    conn = greeted()
    conn.send(StartTLS())
    conn.receive_data(b"220 go ahead\r\n250 injected\r\n")
    assert isinstance(conn.next_event(), Reply)
    assert conn.next_event() is PAUSED
    with pytest.raises(RemoteProtocolError, match="plaintext"):
        conn.start_tls()
    assert conn.their_state is Phase.ERROR


def test_starttls_refused_keeps_the_session() -> None:
    conn = greeted()
    conn.send(StartTLS())
    reply(conn, b"454 4.7.0 not now\r\n")
    assert conn.our_state is Phase.COMMAND
    assert conn.extensions  # still what EHLO said
    conn.send(Mail(reverse_path=A))


def test_no_starttls_twice() -> None:
    conn = greeted()
    conn.send(StartTLS())
    reply(conn, b"220 go\r\n")
    conn.start_tls()
    conn.send(Hello(domain="c"))
    reply(conn, b"250-mx\r\n250 STARTTLS\r\n")
    with pytest.raises(LocalProtocolError, match="already active"):
        conn.send(StartTLS())


def test_send_failed_breaks_our_side() -> None:
    conn = greeted()
    conn.send_failed()
    assert conn.our_state is Phase.ERROR
    with pytest.raises(LocalProtocolError):
        conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.send(Noop())


def test_nothing_is_sent_during_the_tls_switch() -> None:
    conn = greeted()
    conn.send(StartTLS())
    reply(conn, b"220 go\r\n")
    with pytest.raises(LocalProtocolError, match="start_tls"):
        conn.send(Hello(domain="c"))
    assert conn.trailing_data == (b"", False)
