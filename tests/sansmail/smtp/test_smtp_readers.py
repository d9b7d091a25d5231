"""The readers: command lines into events, DATA and BDAT content into MessageData.

Every content reader is fed whole, byte by byte, and with trailing data behind it
(h11's test_io idea): all three must give the same events and leave the trailing bytes
untouched."""

from __future__ import annotations

import pytest
from smtp_helpers import AUTH_EHLO_LINES, feed, greeted, merged, min_chunk

from sansmail import RemoteProtocolError
from sansmail._linebuffer import LineBuffer
from sansmail.mail.address import Address
from sansmail.smtp import (
    Config,
    EndOfChunk,
    EndOfMessage,
    Event,
    Hello,
    Help,
    InvalidCommand,
    InvalidMessage,
    Mail,
    MessageData,
    Noop,
    Rcpt,
    Verify,
    encode_xtext,
)
from sansmail.smtp._readers import BdatReader, ContentFilter, DataReader

ENDS = (EndOfMessage, EndOfChunk, InvalidMessage)


def run_reader(make, data: bytes, trailing: bytes = b"", bytewise: bool = False):  # type: ignore[no-untyped-def]
    """Feed `data` + `trailing` (whole or byte by byte) until the reader ends; return the
    merged events and every byte it left unread."""
    reader = make()
    buf = LineBuffer()
    events: list[Event] = []
    wire = data + trailing
    pieces = [wire[i : i + 1] for i in range(len(wire))] if bytewise and wire else [wire]
    for i, piece in enumerate(pieces):
        buf.append(piece)
        while (event := reader(buf)) is not None:
            events.append(event)
            if isinstance(event, ENDS):
                return merged(events), bytes(buf) + b"".join(pieces[i + 1 :])
    return merged(events), bytes(buf)


def data_reader(config: Config | None = None, limit: int = 10**6):  # type: ignore[no-untyped-def]
    return lambda: DataReader(ContentFilter(config or Config(), limit))


def check_all_ways(make, data: bytes) -> list[Event]:  # type: ignore[no-untyped-def]
    whole, rest = run_reader(make, data)
    assert rest == b""
    trailing = b"MAIL FROM:<x@y>\r\n\n.\r\n"
    for size in (1, 8192):  # hand out every byte at once, or gather
        with min_chunk(size):
            assert run_reader(make, data, bytewise=True) == (whole, b"")
            assert run_reader(make, data, trailing=trailing) == (whole, trailing)
            assert run_reader(make, data, trailing=trailing, bytewise=True) == (whole, trailing)
    return whole


# --- DATA ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "content"),
    [
        (b".\r\n", b""),  # the DATA line's CRLF is the first CRLF of the marker
        (b"a\r\n.\r\n", b"a\r\n"),
        (b"..\r\n.\r\n", b".\r\n"),  # a stuffed lone dot
        (b"..a\r\nb\r\n...c\r\n.\r\n", b".a\r\nb\r\n..c\r\n"),
        (b"a.b\r\n.a\r\n.\r\n", b"a.b\r\na\r\n"),  # RFC 5321 §4.5.2: first dot dropped
        (b"\r\n\r\n.\r\n", b"\r\n\r\n"),
        (b"x" * 20000 + b"\r\n.\r\n", b"x" * 20000 + b"\r\n"),
        (b"a\r\n" * 5000 + b".\r\n", b"a\r\n" * 5000),
    ],
)
def test_data_reader(wire: bytes, content: bytes) -> None:
    events = check_all_ways(data_reader(), wire)
    expected: list[Event] = [MessageData(data=content)] if content else []
    assert events == [*expected, EndOfMessage()]


@pytest.mark.parametrize(
    ("wire", "content"),
    [
        (b"a\nb\r\n.\r\n", b"a\r\nb\r\n"),
        (b"a\n..b\r\n.\r\n", b"a\r\n.b\r\n"),  # a bare LF ends a line for stuffing too
        (b"a\n.\r\n.\r\n", b"a\r\n\r\n"),  # "\n.\r\n" is content, not the end
        (b"\n\n\r\n.\r\n", b"\r\n\r\n\r\n"),
    ],
)
def test_bare_lf_is_normalised(wire: bytes, content: bytes) -> None:
    assert check_all_ways(data_reader(), wire) == [MessageData(data=content), EndOfMessage()]


def test_bare_lf_rejected_on_request() -> None:
    [event] = check_all_ways(data_reader(Config(bare_lf="reject")), b"a\nb\r\n.\r\n")
    assert isinstance(event, InvalidMessage)
    assert event.reply_hint.code == 550
    assert event.reply_hint.enhanced == "5.6.0"


@pytest.mark.parametrize("wire", [b"a\rb\r\n.\r\n", b"\r\r\n.\r\n", b"a\r\n\r.\r\n.\r\n"])
def test_bare_cr_refuses_after_reading_to_the_end(wire: bytes) -> None:
    [event] = check_all_ways(data_reader(), wire)
    assert isinstance(event, InvalidMessage)
    assert "bare CR" in event.reason


def test_oversized_message_is_read_to_its_end_then_refused() -> None:
    wire = b"0123456789\r\n" * 100 + b".\r\n"
    events = check_all_ways(data_reader(limit=500), wire)
    assert isinstance(events[-1], InvalidMessage)
    assert events[-1].reply_hint.code == 552
    assert events[-1].reply_hint.enhanced == "5.3.4"
    assert len(b"".join(e.data for e in events if isinstance(e, MessageData))) <= 500


def test_exactly_at_the_size_limit_is_fine() -> None:
    events = check_all_ways(data_reader(limit=12), b"0123456789\r\n.\r\n")
    assert events[-1] == EndOfMessage()


@pytest.mark.parametrize(("length", "ok"), [(1000, True), (1001, False)])
def test_text_line_hard_cap(length: int, ok: bool) -> None:
    config = Config(max_text_line=1000)
    short = b"y" * 10 + b"\r\n"
    line = b"x" * (length - 2) + b"\r\n"
    for wire in (line + b".\r\n", short + line + short + b".\r\n", short * 900 + line + b".\r\n"):
        events = check_all_ways(data_reader(config, limit=10**6), wire)
        assert (events[-1] == EndOfMessage()) is ok, events[-1]
        if not ok:
            assert events[-1].reply_hint.code == 500  # type: ignore[attr-defined]


def test_a_long_line_inside_one_huge_chunk_is_found() -> None:
    config = Config(max_text_line=1000)
    wire = b"a\r\n" + b"x" * 3000 + b"\r\n" + b"b\r\n" * 10 + b".\r\n"
    events, _ = run_reader(data_reader(config, limit=10**6), wire)
    assert isinstance(events[-1], InvalidMessage)


def test_data_reader_gathers_small_reads() -> None:
    reader = DataReader(ContentFilter(Config(), 10**6))
    buf = LineBuffer()
    for _ in range(100):
        buf.append(b"line\r\n")
        assert reader(buf) is None  # well under the gathering threshold
    buf.append(b"z" * 9000)
    event = reader(buf)
    assert isinstance(event, MessageData)
    assert event.data.startswith(b"line\r\n" * 100)


# --- BDAT ------------------------------------------------------------------------------


def bdat_reader(size: int, last: bool, content: ContentFilter | None = None):  # type: ignore[no-untyped-def]
    return lambda: BdatReader(content or ContentFilter(Config(), 10**6), size, last)


@pytest.mark.parametrize("last", [True, False])
@pytest.mark.parametrize("body", [b"", b"x", b"hello\r\n.\r\n", b"a" * 20000])
def test_bdat_reader_reads_exactly_size_octets(body: bytes, last: bool) -> None:
    events = check_all_ways(bdat_reader(len(body), last), body)
    expected: list[Event] = [MessageData(data=body)] if body else []
    assert events == [*expected, EndOfMessage() if last else EndOfChunk()]


def test_bdat_crlf_split_across_chunks_is_still_a_crlf() -> None:
    content = ContentFilter(Config(bare_lf="reject"), 10**6)
    first, _ = run_reader(bdat_reader(3, False, content), b"ab\r")
    assert first == [MessageData(data=b"ab"), EndOfChunk()]
    second, _ = run_reader(bdat_reader(3, True, content), b"\ncd")
    assert second == [MessageData(data=b"\r\ncd"), EndOfMessage()]


def test_bdat_trailing_cr_at_the_end_is_bare() -> None:
    events, _ = run_reader(bdat_reader(3, True), b"ab\r")
    assert isinstance(events[-1], InvalidMessage)


# --- Command lines ------------------------------------------------------------------------


A = Address(local_part="a", domain="b.example")
C = Address(local_part="c", domain="d.example")


@pytest.mark.parametrize(
    ("line", "event"),
    [
        (b"EHLO client.example", Hello(domain="client.example")),
        (b"ehlo [192.0.2.1]", Hello(domain="[192.0.2.1]")),
        (b"HELO  client ", Hello(domain="client", extended=False)),
        (b"MAIL FROM:<a@b.example>", Mail(reverse_path=A)),
        (b"mail from:<a@B.EXAMPLE>", Mail(reverse_path=A)),
        (b"MAIL FROM: <a@b.example>", Mail(reverse_path=A)),  # tolerated, like Postfix
        (b"MAIL FROM:<>", Mail(reverse_path=None)),
        (
            b"MAIL FROM:<a@b.example> SIZE=100 BODY=8bitmime  SMTPUTF8",
            Mail(reverse_path=A, parameters={"SIZE": "100", "BODY": "8bitmime", "SMTPUTF8": None}),
        ),
        (
            b"MAIL FROM:<a@b.example> RET=HDRS ENVID=QQ314159",
            Mail(reverse_path=A, parameters={"RET": "HDRS", "ENVID": "QQ314159"}),
        ),
        (
            "MAIL FROM:<jörg@b.example> SMTPUTF8".encode(),
            Mail(
                reverse_path=Address(local_part="jörg", domain="b.example"),
                parameters={"SMTPUTF8": None},
            ),
        ),
        (b"VRFY Crispin", Verify(argument="Crispin")),
        (b"NOOP", Noop()),
        (b"NOOP anything at all", Noop(argument="anything at all")),
        (b"HELP mail", Help(topic="mail")),
    ],
)
def test_command_events(line: bytes, event: Event) -> None:
    conn = greeted()
    assert feed(conn, line + b"\r\n") == [event]


@pytest.mark.parametrize(
    ("line", "code", "enhanced"),
    [
        (b"FROB", 500, "5.5.2"),
        (b"", 500, "5.5.2"),
        (b" EHLO x", 500, "5.5.2"),
        (b"EXPN list", 502, "5.5.1"),
        (b"TURN", 502, "5.5.1"),
        (b"AUTH PLAIN", 502, "5.5.1"),
        (b"EHLO", 501, "5.5.4"),
        (b"HELO ", 501, "5.5.4"),
        ("EHLO héllo".encode(), 501, "5.5.4"),
        (b"EHLO a\x00b", 500, "5.5.2"),
        (b"VRFY", 501, "5.5.4"),
        (b"RSET now", 501, "5.5.4"),
        (b"QUIT please", 501, "5.5.4"),
        (b"DATA x", 503, "5.5.1"),  # sequence first: no transaction
        (b"RCPT TO:<c@d.example>", 503, "5.5.1"),
        (b"MAIL <a@b.example>", 501, "5.5.4"),
        (b"MAIL FROM:a@b.example", 501, "5.1.7"),
        (b"MAIL FROM:<a@>", 501, "5.1.7"),
        (b"MAIL FROM:<Postmaster>", 501, "5.1.7"),
        (b"MAIL FROM:<a@b.example>junk", 501, "5.5.4"),
        (b"MAIL FROM:<a@b.example> FOO=bar", 555, "5.5.4"),
        (b"MAIL FROM:<a@b.example> SIZE=10 SIZE=10", 501, "5.5.4"),
        (b"MAIL FROM:<a@b.example> SIZE=ten", 501, "5.5.4"),
        (b"MAIL FROM:<a@b.example> SIZE=", 501, "5.5.4"),
        (b"MAIL FROM:<a@b.example> SIZE=1000001", 552, "5.3.4"),
        (b"MAIL FROM:<a@b.example> BODY=BINARYMIME", 501, "5.5.4"),
        (b"MAIL FROM:<a@b.example> SMTPUTF8=yes", 501, "5.5.4"),
        (b"MAIL FROM:<a@b.example> =x", 501, "5.5.4"),
        ("MAIL FROM:<jörg@b.example>".encode(), 553, "5.6.7"),  # no SMTPUTF8 parameter
        (b"MAIL FROM:<\xff@b.example> SMTPUTF8", 501, "5.5.4"),  # not UTF-8
        (b"STARTTLS", 502, "5.5.1"),  # not advertised
        (b"STARTTLS now", 501, "5.5.4"),
        (b"NOOP \xc3\xa9", 501, "5.5.4"),
        (b"EHLO " + b"x" * 600, 500, "5.5.2"),  # over 512: only MAIL/RCPT may be longer
    ],
)
def test_invalid_commands(line: bytes, code: int, enhanced: str) -> None:
    conn = greeted()
    [event] = feed(conn, line + b"\r\n")
    assert isinstance(event, InvalidCommand), event
    assert event.line == line
    assert (event.reply_hint.code, event.reply_hint.enhanced) == (code, enhanced), event.reason


def test_parameters_need_their_extension_advertised() -> None:
    conn = greeted(lines=("mx",))
    for param in (b"SIZE=10", b"BODY=8BITMIME", b"SMTPUTF8", b"RET=FULL"):
        [event] = feed(conn, b"MAIL FROM:<a@b.example> " + param + b"\r\n")
        assert isinstance(event, InvalidCommand)
        assert event.reply_hint.code == 555
        conn.send(event.reply_hint)
    [event] = feed(conn, "MAIL FROM:<jörg@b.example> SMTPUTF8".encode() + b"\r\n")
    assert isinstance(event, InvalidCommand)
    assert event.reply_hint.code == 553


def rcpt_events(mail: bytes, rcpt: bytes) -> list[Event]:
    conn = greeted()
    [event] = feed(conn, mail + b"\r\n")
    assert isinstance(event, Mail), event
    conn.send(conn_ok := __import__("smtp_helpers").OK)
    assert conn_ok
    return feed(conn, rcpt + b"\r\n")


@pytest.mark.parametrize(
    ("rcpt", "event"),
    [
        (b"RCPT TO:<c@d.example>", Rcpt(forward_path=C)),
        (b"RCPT TO: <c@d.example>", Rcpt(forward_path=C)),
        (b"RCPT TO:<Postmaster>", Rcpt(forward_path=Address(local_part="Postmaster", domain=""))),
        (b"RCPT TO:<@hop.example:c@d.example>", Rcpt(forward_path=C)),  # source route dropped
        (
            b"RCPT TO:<c@d.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c@d.example",
            Rcpt(
                forward_path=C,
                parameters={"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;c@d.example"},
            ),
        ),
    ],
)
def test_rcpt(rcpt: bytes, event: Event) -> None:
    assert rcpt_events(b"MAIL FROM:<a@b.example>", rcpt) == [event]


@pytest.mark.parametrize(
    ("mail", "rcpt", "code", "enhanced"),
    [
        (b"MAIL FROM:<a@b.example>", b"RCPT TO:<>", 501, "5.1.3"),
        (b"MAIL FROM:<a@b.example>", b"RCPT TO:<c@>", 501, "5.1.3"),
        (b"MAIL FROM:<a@b.example>", b"RCPT <c@d.example>", 501, "5.5.4"),
        (b"MAIL FROM:<a@b.example>", "RCPT TO:<jörg@d.example>".encode(), 553, "5.6.7"),
        (b"MAIL FROM:<a@b.example>", b"RCPT TO:<c@d.example> SIZE=1", 555, "5.5.4"),
    ],
)
def test_rcpt_refusals(mail: bytes, rcpt: bytes, code: int, enhanced: str) -> None:
    [event] = rcpt_events(mail, rcpt)
    assert isinstance(event, InvalidCommand)
    assert (event.reply_hint.code, event.reply_hint.enhanced) == (code, enhanced)


def test_utf8_recipient_in_an_smtputf8_transaction() -> None:
    [event] = rcpt_events(b"MAIL FROM:<a@b.example> SMTPUTF8", "RCPT TO:<jörg@d.example>".encode())
    assert event == Rcpt(forward_path=Address(local_part="jörg", domain="d.example"))


def test_mail_line_may_use_the_parameter_allowance() -> None:
    # A long sender, an AUTH= naming it and a full-length ENVID (RFC 3461 §4.4: 100)
    # pass 512 octets; the parameter allowance of RFC 5321 §4.5.3.1.4 takes them.
    conn = greeted(lines=AUTH_EHLO_LINES)
    sender = "+" * 64 + "@" + "b" * 63 + "." + "c" * 63 + ".example"
    envid = "x" * 100
    auth = encode_xtext(sender.encode())
    line = f"MAIL FROM:<{sender}> AUTH={auth} RET=HDRS ENVID={envid}".encode()
    assert len(line) > 512
    [event] = feed(conn, line + b"\r\n")
    assert isinstance(event, Mail)
    assert event.parameters["ENVID"] == envid


def test_command_over_the_hard_cap_is_fatal() -> None:
    conn = greeted()
    with pytest.raises(RemoteProtocolError) as info:
        feed(conn, b"MAIL FROM:<a@b.example> ENVID=" + b"x" * 2000)
    assert info.value.reply_hint.code == 500  # type: ignore[attr-defined]
