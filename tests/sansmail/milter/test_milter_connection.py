"""The milter client core against a scripted milter: a whole conversation, the
negotiation's variants, every modification, what a verdict settles, and every refusal
ending in the core's protocol error."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from milter_helpers import ScriptedMilter, events_until_idle, talk

from sansmail import NEED_DATA, PAUSED, LocalProtocolError, RemoteProtocolError
from sansmail.milter import (
    DEFAULT_ACTIONS,
    DEFAULT_PROTOCOL,
    Abort,
    Accept,
    Action,
    AddHeader,
    AddRecipient,
    Body,
    ChangeHeader,
    ChangeSender,
    Command,
    Config,
    Connect,
    Connection,
    ConnectionClosed,
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
    Modification,
    Negotiate,
    Negotiated,
    Phase,
    Progress,
    ProtocolFlag,
    Quarantine,
    Quit,
    QuitNewConnection,
    Rcpt,
    Reject,
    ReplaceBody,
    ReplyCode,
    Scope,
    Skip,
    Stage,
    Tempfail,
    Unknown,
    encode,
    fold,
)

CONNECT = Connect(hostname="client.example", family=Family.INET, port=40000, address="192.0.2.7")
HELO = Helo(name="client.example")
MAIL = Mail(sender="<alice@example.org>", parameters=("SIZE=42",))
RCPT = Rcpt(recipient="<bob@example.net>")
HEADERS = [Header(name="From", value="alice@example.org"), Header(name="Subject", value="hi")]
BODY = Body(data=b"Hello Bob\r\n")


def negotiated(milter: ScriptedMilter, offer: Negotiate | None = None) -> Connection:
    conn = Connection()
    [event] = talk(conn, milter, offer or Negotiate())
    assert isinstance(event, Negotiated)
    return conn


def to_end_of_message(conn: Connection, milter: ScriptedMilter) -> None:
    for command in (CONNECT, HELO, MAIL, RCPT, Data(), *HEADERS, EndOfHeaders(), BODY):
        assert talk(conn, milter, command) in ([], [Continue()])


def all_flags_milter(**kw: object) -> ScriptedMilter:
    return ScriptedMilter(actions=DEFAULT_ACTIONS & ~Action.SETSYMLIST, **kw)  # type: ignore[arg-type]


# --- a whole conversation ----------------------------------------------------------------


def test_a_whole_conversation_byte_for_byte() -> None:
    milter = ScriptedMilter(
        actions=Action.ADDHDRS | Action.CHGBODY | Action.SETSYMLIST,
        protocol=ProtocolFlag.SKIP,
        macros={MacroStage.EOM: ("i",)},
        script={
            EndOfMessage: [
                Progress(),
                AddHeader(name="X-Scanned", value="yes"),
                ReplaceBody(data=b"Hello "),
                ReplaceBody(data=b"world\r\n"),
                Continue(),
            ]
        },
    )
    conn = Connection()
    assert conn.send(Negotiate()) == b"\0\0\0\x0dO\0\0\0\x06\0\0\x01\xff\0\x0f\xf7\xff"
    assert conn.awaiting == Negotiate()
    assert conn.next_event() is NEED_DATA
    conn.receive_data(milter.take(b"\0\0\0\x0dO\0\0\0\x06\0\0\x01\xff\0\x0f\xf7\xff"))
    [outcome] = events_until_idle(conn)
    assert outcome == Negotiated(
        version=6,
        actions=Action.ADDHDRS | Action.CHGBODY | Action.SETSYMLIST,
        protocol=ProtocolFlag.SKIP,
        macros={MacroStage.EOM: ("i",)},
    )
    assert conn.negotiated == outcome
    assert conn.next_event() is PAUSED

    macros = Macros(stage=MacroStage.CONNECT, values=(("j", "mx.example"),))
    sent = conn.send(macros)
    assert sent == b"\0\0\0\x0fDCj\0mx.example\0"
    assert conn.awaiting is None
    assert milter.take(sent) == b""
    sent = conn.send(CONNECT)
    assert sent == b"\0\0\0\x1dCclient.example\x004\x9c\x40192.0.2.7\0"
    conn.receive_data(milter.take(sent))
    assert events_until_idle(conn) == [Continue()]
    to_end_of_message_rest = (HELO, MAIL, RCPT, Data(), *HEADERS, EndOfHeaders(), BODY)
    for command in to_end_of_message_rest:
        assert talk(conn, milter, command) == [Continue()]
    assert milter.take(conn.send(Macros(stage=MacroStage.EOM, values=(("i", "Q1"),)))) == b""
    events = talk(conn, milter, EndOfMessage())
    assert fold(events).body == b"Hello world\r\n"
    assert fold(events).modifications == (AddHeader(name="X-Scanned", value="yes"),)
    assert fold(events).delivers
    assert conn.stage is Stage.SESSION
    assert conn.send(Quit()) == b"\0\0\0\x01Q"
    assert conn.phase is Phase.CLOSED
    assert conn.next_event() is PAUSED
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()
    assert milter.seen == [
        CONNECT,
        HELO,
        MAIL,
        RCPT,
        Data(),
        *HEADERS,
        EndOfHeaders(),
        BODY,
        EndOfMessage(),
    ]
    assert [m.stage for m in milter.macros] == [MacroStage.CONNECT, MacroStage.EOM]


def test_two_messages_and_an_abort() -> None:
    milter = all_flags_milter()
    conn = negotiated(milter)
    to_end_of_message(conn, milter)
    assert talk(conn, milter, EndOfMessage()) == [Continue()]
    assert talk(conn, milter, MAIL) == [Continue()]
    assert talk(conn, milter, RCPT) == [Continue()]
    assert talk(conn, milter, Abort()) == []
    assert conn.stage is Stage.SESSION
    assert talk(conn, milter, Unknown(command="XYZZY")) == [Continue()]
    assert talk(conn, milter, MAIL) == [Continue()]
    assert milter.seen[-4:] == [RCPT, Abort(), Unknown(command="XYZZY"), MAIL]


def test_quit_new_connection_starts_over_at_connect() -> None:
    milter = all_flags_milter()
    conn = negotiated(milter)
    talk(conn, milter, CONNECT)
    talk(conn, milter, QuitNewConnection())
    assert conn.stage is Stage.CONNECT
    with pytest.raises(LocalProtocolError):
        conn.send(HELO)


# --- negotiation -------------------------------------------------------------------------


def test_no_reply_flags_mean_no_wait() -> None:
    nr = (
        ProtocolFlag.NR_CONN
        | ProtocolFlag.NR_HELO
        | ProtocolFlag.NR_MAIL
        | ProtocolFlag.NR_RCPT
        | ProtocolFlag.NR_DATA
        | ProtocolFlag.NR_HDR
        | ProtocolFlag.NR_EOH
        | ProtocolFlag.NR_BODY
        | ProtocolFlag.NR_UNKN
    )
    milter = ScriptedMilter(protocol=nr)
    conn = negotiated(milter)
    for command in (CONNECT, HELO, MAIL, RCPT, Data(), *HEADERS, EndOfHeaders(), BODY):
        assert conn.send(command) != b""
        assert conn.awaiting is None
        assert conn.next_event() is PAUSED
    sent = conn.send(EndOfMessage())
    assert conn.awaiting == EndOfMessage()  # end of message is always answered
    conn.receive_data(milter.take(sent))
    assert events_until_idle(conn) == [Continue()]


def test_declined_steps_are_not_sent_nor_their_macros() -> None:
    no = (
        ProtocolFlag.NOCONNECT
        | ProtocolFlag.NOHELO
        | ProtocolFlag.NORCPT
        | ProtocolFlag.NODATA
        | ProtocolFlag.NOHDRS
        | ProtocolFlag.NOEOH
        | ProtocolFlag.NOBODY
        | ProtocolFlag.NOUNKNOWN
    )
    milter = ScriptedMilter(protocol=no)
    conn = negotiated(milter)
    assert not conn.wants(Connect)
    assert conn.wants(Mail)
    assert conn.send(Macros(stage=MacroStage.CONNECT, values=(("j", "x"),))) == b""
    for command in (CONNECT, HELO, Unknown(command="X")):
        assert conn.send(command) == b""
        assert conn.awaiting is None
    assert conn.send(Macros(stage=MacroStage.ENVFROM, values=(("i", "x"),))) != b""
    assert talk(conn, milter, MAIL) == [Continue()]
    for command in (RCPT, Data(), *HEADERS, EndOfHeaders(), BODY):
        assert conn.send(command) == b""
    assert talk(conn, milter, EndOfMessage()) == [Continue()]
    assert milter.seen == [MAIL, EndOfMessage()]


def test_bits_beyond_the_offer_are_ignored_and_reported() -> None:
    offer = Negotiate(actions=Action.ADDHDRS, protocol=ProtocolFlag.NOHELO)
    milter = ScriptedMilter(
        actions=Action.ADDHDRS | Action.CHGBODY | Action(0x4000),
        protocol=ProtocolFlag.NOHELO | ProtocolFlag.RCPT_REJ | ProtocolFlag(0x40000000),
    )
    conn = Connection()
    [event] = talk(conn, milter, offer)
    assert event == Negotiated(
        version=6,
        actions=Action.ADDHDRS,
        protocol=ProtocolFlag.NOHELO,
        macros={},
        unoffered_actions=Action.CHGBODY | Action(0x4000),
        unoffered_protocol=ProtocolFlag.RCPT_REJ | ProtocolFlag(0x40000000),
    )


def test_an_old_milter_version_is_accepted() -> None:
    conn = negotiated(ScriptedMilter(version=2))
    assert conn.negotiated is not None
    assert conn.negotiated.version == 2


@pytest.mark.parametrize("version", [0, 1, 7])
def test_versions_outside_2_to_6_are_refused(version: int) -> None:
    conn = Connection()
    with pytest.raises(RemoteProtocolError, match="version"):
        talk(conn, ScriptedMilter(version=version), Negotiate())
    assert conn.phase is Phase.ERROR


def test_macro_lists_need_setsymlist() -> None:
    milter = ScriptedMilter(macros={MacroStage.HELO: ("{tls_version}",)})
    with pytest.raises(RemoteProtocolError, match="SETSYMLIST"):
        talk(Connection(), milter, Negotiate())


@pytest.mark.parametrize(
    "offer",
    [
        Negotiate(version=5),
        Negotiate(protocol=DEFAULT_PROTOCOL | ProtocolFlag.MDS_1M),
        Negotiate(macros={MacroStage.HELO: ("j",)}),
    ],
)
def test_offers_this_core_cannot_keep(offer: Negotiate) -> None:
    with pytest.raises(LocalProtocolError):
        Connection().send(offer)


# --- modifications -----------------------------------------------------------------------

MODIFICATIONS: list[tuple[Modification, Action]] = [
    (AddHeader(name="X-A", value="1"), Action.ADDHDRS),
    (InsertHeader(index=0, name="X-A", value="1"), Action.ADDHDRS),
    (ChangeHeader(index=1, name="Subject", value="new"), Action.CHGHDRS),
    (ChangeHeader(index=1, name="Subject", value=""), Action.CHGHDRS),
    (AddRecipient(recipient="<c@example.com>"), Action.ADDRCPT),
    (AddRecipient(recipient="<c@example.com>", parameters="NOTIFY=NEVER"), Action.ADDRCPT_PAR),
    (DeleteRecipient(recipient="<bob@example.net>"), Action.DELRCPT),
    (ChangeSender(sender="<bounce@example.org>"), Action.CHGFROM),
    (ChangeSender(sender="<>", parameters="SIZE=1"), Action.CHGFROM),
    (ReplaceBody(data=b"x\r\n"), Action.CHGBODY),
    (Quarantine(reason="looks like spam"), Action.QUARANTINE),
]


@pytest.mark.parametrize(("modification", "action"), MODIFICATIONS)
def test_every_modification_when_negotiated(modification: Modification, action: Action) -> None:
    milter = ScriptedMilter(
        actions=action, script={EndOfMessage: [modification, Progress(), Accept()]}
    )
    conn = negotiated(milter)
    to_end_of_message(conn, milter)
    events = talk(conn, milter, EndOfMessage())
    assert events == [modification, Progress(), Accept()]
    outcome = fold(events)
    if isinstance(modification, Quarantine):
        assert outcome.quarantine == modification.reason
    elif isinstance(modification, ReplaceBody):
        assert outcome.body == modification.data
    else:
        assert outcome.modifications == (modification,)


@pytest.mark.parametrize(("modification", "action"), MODIFICATIONS)
def test_every_modification_refused_when_not_negotiated(
    modification: Modification, action: Action
) -> None:
    milter = ScriptedMilter(
        actions=DEFAULT_ACTIONS & ~action & ~Action.SETSYMLIST,
        script={EndOfMessage: [modification, Continue()]},
    )
    conn = negotiated(milter)
    to_end_of_message(conn, milter)
    with pytest.raises(RemoteProtocolError, match=action.name or ""):
        talk(conn, milter, EndOfMessage())
    assert conn.phase is Phase.ERROR
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.send(Quit())


@pytest.mark.parametrize(("modification", "_action"), MODIFICATIONS)
@pytest.mark.parametrize("command", [CONNECT, HELO, MAIL, RCPT, Data(), HEADERS[0], BODY])
def test_modifications_only_at_end_of_message(
    modification: Modification, _action: Action, command: Command
) -> None:
    milter = all_flags_milter(
        protocol=ProtocolFlag.SKIP, script={type(command): [modification, Continue()]}
    )
    conn = negotiated(milter)
    with pytest.raises(RemoteProtocolError, match="before end of message"):
        to_end_of_message(conn, milter)


def test_limits_on_modifications_and_replaced_body() -> None:
    config = Config(max_modifications=2, max_replaced_body=70000)
    script = {EndOfMessage: [AddHeader(name="X", value="1")] * 3 + [Continue()]}
    milter = all_flags_milter(script=script)
    conn = Connection(config=config)
    talk(conn, milter, Negotiate())
    to_end_of_message(conn, milter)
    with pytest.raises(RemoteProtocolError, match="max_modifications"):
        talk(conn, milter, EndOfMessage())

    script = {EndOfMessage: [ReplaceBody(data=b"x" * 65535)] * 2 + [Continue()]}
    milter = all_flags_milter(script=script)
    conn = Connection(config=config)
    talk(conn, milter, Negotiate())
    to_end_of_message(conn, milter)
    with pytest.raises(RemoteProtocolError, match="max_replaced_body"):
        talk(conn, milter, EndOfMessage())


# --- what verdicts settle ----------------------------------------------------------------


@pytest.mark.parametrize(
    "verdict", [Accept(), Reject(), Tempfail(), ReplyCode(code=554, lines=("go away",))]
)
@pytest.mark.parametrize("at", [CONNECT, HELO])
def test_a_connection_verdict_ends_the_milter_s_part(verdict: Event, at: Command) -> None:
    milter = all_flags_milter(script={type(at): [verdict]})
    conn = negotiated(milter)
    for command in (CONNECT, HELO):
        events = talk(conn, milter, command)
        if command is at:
            assert events == [verdict]
            break
    assert conn.settled is Scope.CONNECTION
    rest = [HELO, Macros(stage=MacroStage.ENVFROM, values=()), MAIL, RCPT, Data(), *HEADERS]
    for command in (*rest, EndOfHeaders(), BODY, EndOfMessage(), Abort()):
        assert conn.send(command) == b""
        assert conn.awaiting is None
    assert conn.send(Quit()) == encode(Quit())


def test_a_recipient_refusal_is_about_that_recipient() -> None:
    answers = iter([[Reject()], [Continue()]])
    milter = all_flags_milter(script={Rcpt: lambda _c: next(answers)})
    conn = negotiated(milter)
    for command in (CONNECT, HELO, MAIL):
        talk(conn, milter, command)
    assert talk(conn, milter, RCPT) == [Reject()]
    assert conn.settled is None
    assert talk(conn, milter, Rcpt(recipient="<carol@example.net>")) == [Continue()]


@pytest.mark.parametrize("verdict", [Accept(), Discard(), Reject(), Tempfail()])
def test_a_message_verdict_skips_the_rest_of_the_message(verdict: Event) -> None:
    milter = all_flags_milter(script={Data: [verdict]})
    conn = negotiated(milter)
    for command in (CONNECT, HELO, MAIL, RCPT):
        talk(conn, milter, command)
    assert talk(conn, milter, Data()) == [verdict]
    assert conn.settled is Scope.MESSAGE
    for command in (*HEADERS, EndOfHeaders(), BODY, EndOfMessage()):
        assert conn.send(command) == b""
    assert conn.settled is None
    assert talk(conn, milter, MAIL) == [Continue()]
    assert milter.seen[-2:] == [Data(), MAIL]


def test_a_new_mail_after_a_refused_one_needs_no_abort() -> None:
    answers = iter([[Reject()], [Continue()]])
    milter = all_flags_milter(script={Mail: lambda _c: next(answers)})
    conn = negotiated(milter)
    talk(conn, milter, CONNECT)
    assert talk(conn, milter, MAIL) == [Reject()]
    assert talk(conn, milter, MAIL) == [Continue()]
    assert conn.settled is None


def test_an_accepted_message_is_still_aborted() -> None:
    milter = all_flags_milter(script={Rcpt: [Accept()]})
    conn = negotiated(milter)
    for command in (CONNECT, HELO, MAIL):
        talk(conn, milter, command)
    assert talk(conn, milter, RCPT) == [Accept()]
    assert conn.send(RCPT) == b""
    assert conn.send(Abort()) == encode(Abort())


def test_skip_stops_the_body_not_the_end_of_message() -> None:
    milter = all_flags_milter(protocol=ProtocolFlag.SKIP, script={Body: [Skip()]})
    conn = negotiated(milter)
    for command in (CONNECT, HELO, MAIL, RCPT, Data(), EndOfHeaders()):
        talk(conn, milter, command)
    assert talk(conn, milter, BODY) == [Skip()]
    assert conn.send(BODY) == b""
    assert talk(conn, milter, EndOfMessage()) == [Continue()]
    assert milter.seen.count(BODY) == 1


# --- refusals ----------------------------------------------------------------------------


def at_rcpt(**kw: object) -> tuple[Connection, ScriptedMilter]:
    milter = all_flags_milter(**kw)
    conn = negotiated(milter)
    for command in (CONNECT, HELO, MAIL):
        talk(conn, milter, command)
    return conn, milter


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (struct.pack(">I", 70000) + b"b", "over the limit"),
        (b"\0\0\0\0", "length 0"),
        (b"\0\0\0\x01z", "unknown code"),
        (b"\0\0\0\x014", "unknown code"),
        (b"\0\0\0\x02cx", "data where none"),
        (encode(AddHeader(name="X", value="1")), "before end of message"),
        (encode(Progress()), "before end of message"),
        (encode(Skip()), "Skip"),
        (encode(Negotiate()), "Negotiate"),
        (b"\0\0\0\x05y250\0", "malformed"),
    ],
)
def test_refused_replies(raw: bytes, match: str) -> None:
    conn, _milter = at_rcpt()
    conn.send(RCPT)
    conn.receive_data(raw)
    with pytest.raises(RemoteProtocolError, match=match):
        conn.next_event()
    assert conn.phase is Phase.ERROR
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_discard_is_not_a_connection_verdict() -> None:
    milter = all_flags_milter(script={Connect: [Discard()]})
    conn = negotiated(milter)
    with pytest.raises(RemoteProtocolError, match="Discard"):
        talk(conn, milter, CONNECT)


def test_skip_needs_its_flag_even_at_a_body_chunk() -> None:
    milter = all_flags_milter(script={Body: [Skip()]})
    conn = negotiated(milter)
    with pytest.raises(RemoteProtocolError, match="SMFIP_SKIP"):
        to_end_of_message(conn, milter)


def test_a_reply_nobody_asked_for() -> None:
    conn, _milter = at_rcpt()
    conn.receive_data(encode(Continue()))
    with pytest.raises(RemoteProtocolError, match="no reply was owed"):
        conn.next_event()


def test_end_of_file_while_a_reply_is_owed() -> None:
    conn, _milter = at_rcpt()
    conn.send(RCPT)
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="before answering"):
        conn.next_event()


def test_end_of_file_inside_a_packet() -> None:
    conn, _milter = at_rcpt()
    conn.send(Abort())
    conn.receive_data(encode(Continue())[:3])
    assert conn.next_event() is PAUSED
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="inside a packet"):
        conn.next_event()


def test_end_of_file_when_nothing_is_owed_is_an_event() -> None:
    conn, _milter = at_rcpt()
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()
    assert conn.phase is Phase.CLOSED


@pytest.mark.parametrize(
    "command", [CONNECT, HELO, MAIL, Data(), HEADERS[0], EndOfHeaders(), BODY, EndOfMessage()]
)
def test_commands_out_of_order(command: Command) -> None:
    conn, _milter = at_rcpt()  # after MAIL: only RCPT, ABORT, UNKNOWN or QUIT
    with pytest.raises(LocalProtocolError, match="out of order"):
        conn.send(command)
    assert conn.phase is Phase.ERROR


def test_nothing_before_negotiation_and_nothing_while_waiting() -> None:
    conn = Connection()
    with pytest.raises(LocalProtocolError):
        conn.send(CONNECT)
    conn = Connection()
    with pytest.raises(LocalProtocolError):
        conn.send(Macros(stage=MacroStage.CONNECT, values=()))
    conn = Connection()
    conn.send(Negotiate())
    with pytest.raises(LocalProtocolError, match="waiting"):
        conn.send(CONNECT)


def test_nothing_after_quit_and_a_failed_send_is_final() -> None:
    conn, _milter = at_rcpt()
    conn.send(Quit())
    with pytest.raises(LocalProtocolError, match="closed"):
        conn.send(MAIL)
    conn, _milter = at_rcpt()
    conn.send_failed()
    assert conn.phase is Phase.ERROR
    with pytest.raises(LocalProtocolError):
        conn.send(RCPT)


def test_data_after_end_of_file_is_a_caller_bug() -> None:
    conn = Connection()
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"x")


# --- properties --------------------------------------------------------------------------

END_OF_MESSAGE_REPLIES = [
    Progress(),
    AddHeader(name="X-A", value="1"),
    ChangeHeader(index=2, name="Subject", value="s"),
    InsertHeader(index=0, name="X-B", value="2\r\n 3"),
    AddRecipient(recipient="<c@example.com>"),
    AddRecipient(recipient="<d@example.com>", parameters="NOTIFY=NEVER"),
    DeleteRecipient(recipient="<bob@example.net>"),
    ChangeSender(sender="<x@example.org>", parameters=None),
    ReplaceBody(data=b"body " * 100),
    Quarantine(reason="q"),
]


def at_end_of_message() -> Connection:
    milter = all_flags_milter()
    conn = negotiated(milter)
    to_end_of_message(conn, milter)
    conn.send(EndOfMessage())
    return conn


@given(
    st.lists(st.sampled_from(END_OF_MESSAGE_REPLIES), max_size=8),
    st.sampled_from([Continue(), Accept(), Reject(), ReplyCode(code=550, lines=("5.7.1 x",))]),
    st.data(),
)
def test_any_split_of_a_reply_stream_gives_the_same_events(
    replies: list[Event], verdict: Event, data: st.DataObject
) -> None:
    stream = b"".join(encode(r) for r in [*replies, verdict])
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    conn = at_end_of_message()
    events: list[Event] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        if end > start:  # b"" would be EOF
            conn.receive_data(stream[start:end])
            events += events_until_idle(conn)
    assert events == [*replies, verdict]
    assert conn.awaiting is None


@given(st.binary(max_size=200), st.data())
def test_arbitrary_bytes_give_events_or_the_protocol_error(raw: bytes, data: st.DataObject) -> None:
    conn = at_end_of_message()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=5)))
    try:
        for start, end in zip([0, *cuts], [*cuts, len(raw)], strict=True):
            if end > start:
                conn.receive_data(raw[start:end])
                events_until_idle(conn)
        conn.receive_data(b"")
        events_until_idle(conn)
    except RemoteProtocolError:
        assert conn.phase is Phase.ERROR
