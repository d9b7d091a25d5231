"""Every milter command and reply, byte for byte (libmilter's mfdef.h layouts), read back
to the same event; and what the readers refuse."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sansmail.milter import (
    Abort,
    Accept,
    Action,
    AddHeader,
    AddRecipient,
    Body,
    ChangeHeader,
    ChangeSender,
    Command,
    Connect,
    Continue,
    Data,
    DeleteRecipient,
    Discard,
    EndOfHeaders,
    EndOfMessage,
    Event,
    Family,
    Header,
    Helo,
    InsertHeader,
    Macros,
    MacroStage,
    Mail,
    Negotiate,
    Progress,
    ProtocolFlag,
    Quarantine,
    Quit,
    QuitNewConnection,
    Rcpt,
    Reject,
    ReplaceBody,
    ReplyCode,
    Skip,
    Tempfail,
    Unknown,
    encode,
    read_command,
    read_reply,
)
from sansmail.milter._wire import COMMAND_CODES, REPLY_CODES, Malformed, PacketBuffer


def packet(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


COMMANDS: list[tuple[Command, bytes]] = [
    (
        Negotiate(),
        b"O" + struct.pack(">III", 6, 0x1FF, 0xFF7FF),
    ),
    (
        Negotiate(actions=Action.ADDHDRS, protocol=ProtocolFlag.NOHELO | ProtocolFlag.SKIP),
        b"O\0\0\0\x06\0\0\0\x01\0\0\x04\x02",
    ),
    (
        Macros(stage=MacroStage.CONNECT, values=(("j", "mx.example"), ("{daemon_name}", "s"))),
        b"DCj\0mx.example\0{daemon_name}\0s\0",
    ),
    (Macros(stage=MacroStage.EOM, values=(("i", "4Q1"),)), b"DEi\x004Q1\0"),
    (Macros(stage=MacroStage.EOH, values=()), b"DN"),
    (
        Connect(hostname="mail.example", family=Family.INET, port=25, address="192.0.2.1"),
        b"Cmail.example\x004\x00\x19192.0.2.1\0",
    ),
    (
        Connect(hostname="[2001:db8::1]", family=Family.INET6, port=587, address="2001:db8::1"),
        b"C[2001:db8::1]\x006\x02\x4b2001:db8::1\0",
    ),
    (
        Connect(hostname="localhost", family=Family.UNIX, address="/run/s"),
        b"Clocalhost\0L\0\0/run/s\0",
    ),
    (Connect(hostname="unknown", family=Family.UNKNOWN), b"Cunknown\0U"),
    (Helo(name="client.example"), b"Hclient.example\0"),
    (Mail(sender="<a@example.org>"), b"M<a@example.org>\0"),
    (
        Mail(sender="<>", parameters=("SIZE=100", "BODY=8BITMIME")),
        b"M<>\0SIZE=100\0BODY=8BITMIME\0",
    ),
    (
        Rcpt(recipient="<b@example.net>", parameters=("NOTIFY=NEVER",)),
        b"R<b@example.net>\0NOTIFY=NEVER\0",
    ),
    (Data(), b"T"),
    (Header(name="Subject", value="hello\r\n world"), b"LSubject\0hello\r\n world\0"),
    (EndOfHeaders(), b"N"),
    (Body(data=b"line\r\n"), b"Bline\r\n"),
    (Body(data=b""), b"B"),
    (EndOfMessage(), b"E"),
    (Abort(), b"A"),
    (Unknown(command="XFOO bar"), b"UXFOO bar\0"),
    (Quit(), b"Q"),
    (QuitNewConnection(), b"K"),
]

REPLIES: list[tuple[Event, bytes]] = [
    (
        Negotiate(
            actions=Action.ADDHDRS | Action.SETSYMLIST,
            protocol=ProtocolFlag.NR_HDR,
            macros={MacroStage.CONNECT: ("j", "{daemon_name}"), MacroStage.EOM: ("i",)},
        ),
        b"O\0\0\0\x06\0\0\x01\x01\0\0\0\x80\0\0\0\x00j {daemon_name}\0\0\0\0\x05i\0",
    ),
    (Continue(), b"c"),
    (Accept(), b"a"),
    (Reject(), b"r"),
    (Tempfail(), b"t"),
    (Discard(), b"d"),
    (Skip(), b"s"),
    (Progress(), b"p"),
    (ReplyCode(code=550, lines=("5.7.1 no thanks",)), b"y550 5.7.1 no thanks\0"),
    (
        ReplyCode(code=451, lines=("4.7.1 try", "4.7.1 later")),
        b"y451-4.7.1 try\r\n451 4.7.1 later\0",
    ),
    (AddHeader(name="X-Spam", value="yes"), b"hX-Spam\0yes\0"),
    (ChangeHeader(index=1, name="Subject", value=""), b"m\0\0\0\x01Subject\0\0"),
    (InsertHeader(index=0, name="X-First", value="1"), b"i\0\0\0\x00X-First\x001\0"),
    (AddRecipient(recipient="<c@example.com>"), b"+<c@example.com>\0"),
    (
        AddRecipient(recipient="<c@example.com>", parameters="NOTIFY=NEVER"),
        b"2<c@example.com>\0NOTIFY=NEVER\0",
    ),
    (DeleteRecipient(recipient="<b@example.net>"), b"-<b@example.net>\0"),
    (ChangeSender(sender="<new@example.org>"), b"e<new@example.org>\0"),
    (ChangeSender(sender="<>", parameters="SIZE=1"), b"e<>\0SIZE=1\0"),
    (ReplaceBody(data=b"new body\r\n"), b"bnew body\r\n"),
    (Quarantine(reason="spam"), b"qspam\0"),
]


@pytest.mark.parametrize(("event", "payload"), COMMANDS)
def test_commands_byte_for_byte_and_back(event: Command, payload: bytes) -> None:
    assert encode(event) == packet(payload)
    assert read_command(payload[0], payload[1:]) == event


@pytest.mark.parametrize(("event", "payload"), REPLIES)
def test_replies_byte_for_byte_and_back(event: Event, payload: bytes) -> None:
    assert encode(event) == packet(payload)
    assert read_reply(payload[0], payload[1:]) == event


def test_every_code_is_covered() -> None:
    assert {chr(p[0]) for _, p in COMMANDS} == COMMAND_CODES == set("ODCHMRTLNBEAUQK")
    assert {chr(p[0]) for _, p in REPLIES} == REPLY_CODES == set("Ocartdspyhmi+2-ebq")


@pytest.mark.parametrize(
    ("code", "data"),
    [
        ("z", b""),  # unknown reply
        ("4", b""),  # Sendmail's internal SMFIR_SHUTDOWN is not for the wire
        ("c", b"x"),  # data where none belongs
        ("y", b"550 no NUL"),
        ("y", b"250 2.0.0 ok\0"),  # a milter cannot make us say 2xx
        ("y", b"hello\0"),
        ("y", b"550-a\r\n551 b\0"),  # codes differ
        ("y", b"550 a\r\n550 b\0"),  # continuation without "-"
        ("y", b"550 caf\xc3\xa9\0"),  # not ASCII
        ("y", b"550 a\0b\0"),
        ("h", b"X-A\0"),
        ("h", b"X-A\0v\0extra\0"),
        ("h", b"Bad Name\0v\0"),
        ("h", b"X-A\0v\r\nBcc: smuggled\0"),  # a second header in a value
        ("h", b"X-A\0v\nBcc: x\0"),
        ("m", b"\0\0\0"),
        ("m", b"\0\0\0\x01Subject\0"),
        ("i", b""),
        ("+", b"\0"),  # empty address
        ("+", b"<a@b>"),
        ("2", b"<a@b>\0p\0q\0"),
        ("-", b""),
        ("e", b""),
        ("q", b"reason"),
        ("b", b"x" * 65536),  # more than one chunk
        ("O", b"\0\0\0\x06\0\0\0\0"),  # short
        ("O", b"\0\0\0\x06\0\0\0\0\0\0\0\0\0\0\0\x09x\0"),  # unknown macro stage
        ("O", b"\0\0\0\x06\0\0\0\0\0\0\0\0\0\0\0\x01x"),  # list not terminated
        ("O", b"\0\0\0\x06\0\0\0\0\0\0\0\0\0\0"),  # truncated stage number
        ("O", b"\0\0\0\x06\0\0\0\0\0\0\0\0\0\0\0\x01x\0\0\0\0\x01y\0"),  # stage twice
    ],
)
def test_malformed_replies(code: str, data: bytes) -> None:
    with pytest.raises(Malformed):
        read_reply(ord(code), data)


@pytest.mark.parametrize(
    ("code", "data"),
    [
        ("C", b"host\0"),
        ("C", b"host\0X\0\0a\0"),
        ("C", b"host\x004\0"),
        ("C", b"host\0Uextra"),
        ("D", b""),
        ("D", b"Zi\0v\0"),
        ("D", b"Ci\0"),
        ("M", b""),
        ("T", b"x"),
        ("a", b""),  # a reply is not a command
    ],
)
def test_malformed_commands(code: str, data: bytes) -> None:
    with pytest.raises(Malformed):
        read_command(ord(code), data)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Helo(name="a\0b"),
        lambda: Header(name="Sub ject", value="x"),
        lambda: Header(name="X", value="a\nb"),
        lambda: Body(data=b"x" * 65536),
        lambda: ReplyCode(code=250, lines=("ok",)),
        lambda: ReplyCode(code=599, lines=()),
        lambda: ReplyCode(code=560, lines=("x",)),
        lambda: ReplyCode(code=550, lines=("a\r\nb",)),
        lambda: Connect(hostname="h", family=Family.UNKNOWN, port=25),
        lambda: Connect(hostname="h", family=Family.INET, port=70000, address="a"),
        lambda: Mail(sender="<>", parameters=("",)),
        lambda: Macros(stage=MacroStage.HELO, values=(("", "v"),)),
        lambda: Negotiate(macros={MacroStage.HELO: ("a b",)}),
        lambda: ChangeHeader(index=-1, name="X", value=""),
    ],
)
def test_events_refuse_what_would_not_frame(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


def test_buffer_refuses_an_oversized_length_before_the_data() -> None:
    buffer = PacketBuffer(max_packet=100)
    buffer.feed(struct.pack(">I", 101))
    with pytest.raises(Malformed, match="over the limit"):
        buffer.next_packet()


def test_buffer_refuses_an_empty_packet() -> None:
    buffer = PacketBuffer(max_packet=100)
    buffer.feed(b"\0\0\0\0")
    with pytest.raises(Malformed, match="length 0"):
        buffer.next_packet()


def test_buffer_waits_for_whole_packets() -> None:
    buffer = PacketBuffer(max_packet=100)
    whole = packet(b"hX\0y\0") + packet(b"c")
    for byte in whole[:-1]:
        buffer.feed(bytes([byte]))
    assert buffer.next_packet() == (ord("h"), b"X\0y\0")
    assert buffer.next_packet() is None
    buffer.feed(whole[-1:])
    assert buffer.next_packet() == (ord("c"), b"")
    assert len(buffer) == 0


# No surrogates: a milter sends bytes, and a lone surrogate is no text it could send.
_text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=20)
_name = st.from_regex(r"[!-9;-~]{1,10}", fullmatch=True)
_word = st.text(
    st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=1, max_size=10
)
_line = st.from_regex(r"[ -~]{0,20}", fullmatch=True)

REPLY_EVENTS = st.one_of(
    st.sampled_from([Continue(), Accept(), Reject(), Tempfail(), Discard(), Skip(), Progress()]),
    st.builds(
        ReplyCode,
        code=st.sampled_from([421, 450, 451, 550, 553, 554]),
        lines=st.lists(_line, min_size=1, max_size=3).map(tuple),
    ),
    st.builds(AddHeader, name=_name, value=_line),
    st.builds(ChangeHeader, index=st.integers(0, 2**32 - 1), name=_name, value=_line),
    st.builds(InsertHeader, index=st.integers(0, 2**32 - 1), name=_name, value=_line),
    st.builds(AddRecipient, recipient=_word, parameters=st.none() | _text),
    st.builds(DeleteRecipient, recipient=_word),
    st.builds(ChangeSender, sender=_text, parameters=st.none() | _text),
    st.builds(ReplaceBody, data=st.binary(max_size=50)),
    st.builds(Quarantine, reason=_text),
)


@given(REPLY_EVENTS)
def test_any_reply_reads_back_as_itself(event: Event) -> None:
    raw = encode(event)
    assert read_reply(raw[4], raw[5:]) == event


@given(st.integers(0, 255), st.binary(max_size=64))
def test_arbitrary_reply_bytes_give_an_event_or_malformed(code: int, data: bytes) -> None:
    try:
        event = read_reply(code, data)
    except Malformed:
        return
    raw = encode(event)
    # What decodes, encodes to a packet that decodes the same (surrogateescape keeps any
    # bytes; a bare "550" comes back as "550 ", a macro list with single spaces).
    assert read_reply(raw[4], raw[5:]) == event


def test_bare_reply_code_reads() -> None:
    assert read_reply(ord("y"), b"550\0") == ReplyCode(code=550, lines=("",))
