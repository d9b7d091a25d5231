"""MilterCheck without sockets: each stage's conversation is carried, as the adapter
does, to a scripted milter that reads the packets with the core's own reader and answers
from a script in bytes; then the check's verdict for the stage is compared with what
Postfix's smtpd would say."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import pytest

from sansmail import smtp
from sansmail.config import Config, MilterConfig
from sansmail.mail.address import parse_address
from sansmail.mail.headeredit import HeaderEdit
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
    Rcpt,
    Reject,
    ReplaceBody,
    Reply,
    ReplyCode,
    Skip,
    Tempfail,
    encode,
    read_command,
)
from sansmail.milter._state import DECLINE, NO_REPLY
from sansmail.milter._wire import PacketBuffer
from sansmail.sessions.smtpd import Stage, Transaction
from sansmail.sessions.smtpd._milters import (
    OFFERED_ACTIONS,
    MilterCheck,
    MilterConversation,
    milter_checks,
)
from sansmail.smtp import Reply as SmtpReply

ADDRESS = ("127.0.0.1", 8891)
NO_FLAGS = ProtocolFlag(0)
MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"Subject:  two spaces\r\n"
    b"X-Folded: first\r\n\tsecond\r\n"
    b"\r\n"
    b"body line\r\n"
)
Answer = Callable[[Command], Iterable[Reply]] | Iterable[Reply]


class ScriptedMilter:
    """The milter end: `take(bytes)` reads the MTA's packets and returns its answers as
    bytes. It answers what it negotiated to answer, from `script` (Continue when not
    scripted), and asserts it is never sent a step it declined."""

    def __init__(
        self,
        *,
        actions: Action = OFFERED_ACTIONS,
        protocol: ProtocolFlag = NO_FLAGS,
        macros: Mapping[MacroStage, tuple[str, ...]] | None = None,
        script: Mapping[type[Command], Answer] | None = None,
    ) -> None:
        self.reply = Negotiate(actions=actions, protocol=protocol, macros=macros or {})
        self.script = dict(script or {})
        self.buffer = PacketBuffer(1 << 20)
        self.seen: list[Command] = []
        self.macros: dict[MacroStage, dict[str, str]] = {}
        self.offer: Negotiate | None = None

    def take(self, data: bytes) -> bytes:
        self.buffer.feed(data)
        out = b""
        while (packet := self.buffer.next_packet()) is not None:
            command = read_command(*packet)
            out += b"".join(encode(reply) for reply in self.answer(command))
        return out

    def answer(self, command: Command) -> Iterable[Reply]:
        if isinstance(command, Negotiate):
            self.offer = command
            return [self.reply]
        if isinstance(command, Macros):
            self.macros[command.stage] = dict(command.values)
            return []
        self.seen.append(command)
        kind = type(command)
        declined = DECLINE.get(kind)
        assert declined is None or declined not in self.reply.protocol, f"{command!r} declined"
        if isinstance(command, Abort | Quit):
            return []
        flag = NO_REPLY.get(kind)
        if flag is not None and flag in self.reply.protocol:
            return []
        answer = self.script.get(kind, [Continue()])
        return list(answer(command)) if callable(answer) else list(answer)

    def kinds(self) -> list[type[Command]]:
        return [type(command) for command in self.seen]


@attrs.define
class FakeSession:
    """What a check sees of a session (SessionView), set by hand."""

    client_ip: str = "192.0.2.7"
    client_port: int = 40000
    helo: str = ""
    user: str | None = None
    tls: str | None = None
    transaction: Transaction | None = None
    trusted: bool = False
    client_name: str | None = None
    findings: dict[str, Any] = attrs.Factory(dict)
    # Beyond SessionView: used when a session has them.
    server_ip: str | None = None
    auth_mechanism: str | None = None


def carry(conversation: Any, milter: ScriptedMilter | None) -> None:
    """The adapter's loop; a None milter is one that is down."""
    assert isinstance(conversation, MilterConversation)
    if milter is None:
        conversation.failed("cannot connect: Connection refused")
        return
    while not conversation.done:
        data = conversation.data_to_send()
        answer = milter.take(data)
        if conversation.done:
            assert not answer, "the milter answered what it should not"
            break
        assert answer, "the milter owes a reply"
        conversation.receive_data(answer)


class Run:
    """One session through one MilterCheck, stage by stage."""

    def __init__(self, check: MilterCheck, milter: ScriptedMilter | None) -> None:
        self.check = check
        self.milter = milter
        self.session = FakeSession()

    def stage(self, stage: Stage, command: smtp.Event | None = None) -> Any:
        inquiries = self.check.inquiries(stage, self.session, command)
        for conversation in inquiries:
            carry(conversation, self.milter)
        self.asked = len(inquiries)
        return self.check.check(stage, self.session)

    def connect(self) -> Any:
        return self.stage(Stage.CONNECT)

    def helo(self, name: str = "client.example") -> Any:
        verdict = self.stage(Stage.HELO, smtp.Hello(domain=name))
        self.session.helo = name
        return verdict

    def mail(self, sender: str = "alice@example.org", **parameters: str | None) -> Any:
        path = parse_address(sender) if sender else None
        verdict = self.stage(Stage.MAIL, smtp.Mail(reverse_path=path, parameters=parameters))
        if verdict is None or verdict.reply is None:
            self.session.transaction = Transaction(queue_id="4QueueID", reverse_path=path)
        return verdict

    def rcpt(self, recipient: str = "bob@example.test") -> Any:
        path = parse_address(recipient)
        verdict = self.stage(Stage.RCPT, smtp.Rcpt(forward_path=path))
        if verdict is None or verdict.reply is None:
            tx = self.session.transaction
            assert tx is not None
            tx.rcpt.append(path)
        return verdict

    def data(self, message: bytes = MESSAGE) -> Any:
        tx = self.session.transaction
        assert tx is not None
        if self.check.wants_message(self.session):
            tx.message = bytearray(message)
        verdict = self.stage(Stage.END_OF_DATA)
        self.session.transaction = None
        return verdict

    def through_rcpt(self) -> None:
        assert self.connect() is None
        assert self.helo() is None
        assert self.mail() is None
        assert self.rcpt() is None


def make_check(default_action: str = "tempfail") -> MilterCheck:
    return MilterCheck(
        address=ADDRESS,
        default_action=default_action,
        hostname="mx.example.test",
        local_domains=frozenset({"example.test"}),
    )


def reply_of(verdict: Any) -> tuple[int, str | None, str]:
    assert verdict is not None
    assert verdict.reply is not None
    return verdict.reply.code, verdict.reply.enhanced, verdict.reply.text


# --- the steps ---------------------------------------------------------------------------


def test_a_whole_session_sends_every_step_with_postfix_macros() -> None:
    milter = ScriptedMilter()
    run = Run(make_check(), milter)
    run.session.client_name = "client.example.org"
    run.session.tls = "TLSv1.3 TLS_AES_256_GCM_SHA384"
    run.session.user = "alice@example.test"
    run.session.auth_mechanism = "PLAIN"
    run.session.server_ip = "192.0.2.25"
    run.through_rcpt()
    assert run.rcpt("carol@far.test") is None
    assert run.data() is None
    assert milter.kinds() == [
        Connect,
        Helo,
        Mail,
        Rcpt,
        Rcpt,
        Data,
        Header,
        Header,
        Header,
        EndOfHeaders,
        Body,
        EndOfMessage,
    ]
    connect, helo, mail, rcpt, rcpt2, *_ = milter.seen
    assert connect == Connect(
        hostname="client.example.org", family=Family.INET, port=40000, address="192.0.2.7"
    )
    assert helo == Helo(name="client.example")
    assert mail == Mail(sender="<alice@example.org>")
    assert rcpt == Rcpt(recipient="<bob@example.test>")
    assert milter.seen[6:9] == [
        Header(name="From", value="Alice <alice@example.org>"),
        Header(name="Subject", value=" two spaces"),  # only the first space goes
        Header(name="X-Folded", value="first\n\tsecond"),  # folds as LF, Sendmail's form
    ]
    assert milter.seen[10] == Body(data=b"body line\r\n")
    assert milter.macros[MacroStage.CONNECT] == {
        "j": "mx.example.test",
        "{daemon_name}": "mx.example.test",
        "v": "sansmail",
        "{client_addr}": "192.0.2.7",
        "{client_name}": "client.example.org",
        "_": "client.example.org [192.0.2.7]",
        "{client_port}": "40000",
        "{if_addr}": "192.0.2.25",
    }
    assert milter.macros[MacroStage.HELO] == {
        "{tls_version}": "TLSv1.3",
        "{cipher}": "TLS_AES_256_GCM_SHA384",
    }
    assert milter.macros[MacroStage.ENVFROM] == {
        "{mail_addr}": "alice@example.org",
        "{auth_authen}": "alice@example.test",
        "{auth_type}": "PLAIN",
    }
    # The last RCPT's macros: a remote recipient.
    assert milter.macros[MacroStage.ENVRCPT] == {
        "{rcpt_addr}": "carol@far.test",
        "{rcpt_host}": "far.test",
        "{rcpt_mailer}": "smtp",
        "i": "4QueueID",
    }
    assert rcpt2 == Rcpt(recipient="<carol@far.test>")
    for stage in (MacroStage.DATA, MacroStage.EOH, MacroStage.EOM):
        assert milter.macros[stage] == {"i": "4QueueID"}


def test_the_offer_holds_every_change_a_verdict_can_carry() -> None:
    milter = ScriptedMilter()
    Run(make_check(), milter).connect()
    assert milter.offer is not None
    offered = milter.offer.actions
    for action in (
        Action.ADDHDRS,
        Action.CHGHDRS,
        Action.CHGBODY,
        Action.QUARANTINE,
        Action.ADDRCPT,
        Action.ADDRCPT_PAR,
        Action.DELRCPT,
        Action.CHGFROM,
    ):
        assert action in offered
    assert ProtocolFlag.SKIP in milter.offer.protocol


def test_mail_sends_esmtp_parameters_and_the_null_sender() -> None:
    milter = ScriptedMilter()
    run = Run(make_check(), milter)
    run.connect()
    run.mail("", SIZE="1000", BODY="8BITMIME")
    assert milter.seen[-1] == Mail(sender="<>", parameters=("SIZE=1000", "BODY=8BITMIME"))
    assert milter.macros[MacroStage.ENVFROM] == {"{mail_addr}": ""}


def test_an_unverified_client_is_named_by_its_address_in_brackets() -> None:
    milter = ScriptedMilter()
    run = Run(make_check(), milter)
    run.session.client_ip = "2001:db8::7"
    run.connect()
    assert milter.seen[0] == Connect(
        hostname="[2001:db8::7]", family=Family.INET6, port=40000, address="2001:db8::7"
    )
    assert milter.macros[MacroStage.CONNECT]["_"] == "unknown [2001:db8::7]"


def test_declined_steps_are_not_sent_and_unanswered_ones_not_awaited() -> None:
    protocol = (
        ProtocolFlag.NOHELO
        | ProtocolFlag.NOHDRS
        | ProtocolFlag.NOEOH
        | ProtocolFlag.NODATA
        | ProtocolFlag.NR_CONN
        | ProtocolFlag.NR_RCPT
    )
    milter = ScriptedMilter(protocol=protocol)
    run = Run(make_check(), milter)
    run.through_rcpt()
    assert run.data() is None
    assert milter.kinds() == [Connect, Mail, Rcpt, Body, EndOfMessage]


def test_a_milter_that_wants_no_content_does_not_hold_the_message() -> None:
    milter = ScriptedMilter(protocol=ProtocolFlag.NOHDRS | ProtocolFlag.NOBODY)
    run = Run(make_check(), milter)
    run.through_rcpt()
    assert not run.check.wants_message(run.session)
    assert run.data() is None
    assert milter.kinds()[-3:] == [Data, EndOfHeaders, EndOfMessage]


def test_the_milter_macro_lists_choose_the_macros() -> None:
    wanted = {MacroStage.CONNECT: ("{client_addr}", "client_name", "{if_name}")}
    milter = ScriptedMilter(actions=OFFERED_ACTIONS, macros=wanted)
    run = Run(make_check(), milter)
    run.connect()
    # Either spelling of a name; a macro we do not know is left out.
    assert milter.macros[MacroStage.CONNECT] == {
        "{client_addr}": "192.0.2.7",
        "client_name": "unknown",
    }


def test_a_long_body_goes_in_chunks_and_skip_ends_them() -> None:
    body = b"x" * 70_000 + b"\r\n" + b"y" * 70_000 + b"\r\n"
    milter = ScriptedMilter(protocol=ProtocolFlag.SKIP)
    run = Run(make_check(), milter)
    run.through_rcpt()
    assert run.data(b"Subject: big\r\n\r\n" + body) is None
    chunks = [c.data for c in milter.seen if isinstance(c, Body)]
    assert [len(c) for c in chunks] == [65535, 65535, 8934]
    assert b"".join(chunks) == body

    milter = ScriptedMilter(protocol=ProtocolFlag.SKIP, script={Body: [Skip()]})
    run = Run(make_check(), milter)
    run.through_rcpt()
    assert run.data(b"Subject: big\r\n\r\n" + body) is None
    assert milter.kinds()[-3:] == [EndOfHeaders, Body, EndOfMessage]


def test_the_header_ends_at_a_line_that_is_no_field() -> None:
    milter = ScriptedMilter()
    run = Run(make_check(), milter)
    run.through_rcpt()
    run.data(b"Subject: a\0b\r\nnot a field\r\nSubject: after\r\n")
    headers = [c for c in milter.seen if isinstance(c, Header)]
    assert headers == [Header(name="Subject", value="a b")]
    [body] = [c for c in milter.seen if isinstance(c, Body)]
    assert body.data == b"not a field\r\nSubject: after\r\n"


# --- the verdicts --------------------------------------------------------------------------


def test_reject_at_rcpt_refuses_that_recipient_only() -> None:
    def some(command: Command) -> list[Reply]:
        assert isinstance(command, Rcpt)
        return [Reject()] if "spamtrap" in command.recipient else [Continue()]

    milter = ScriptedMilter(script={Rcpt: some})
    run = Run(make_check(), milter)
    run.through_rcpt()
    assert reply_of(run.rcpt("spamtrap@example.test")) == (550, "5.7.1", "Command rejected")
    assert run.rcpt("carol@example.test") is None
    assert run.data() is None
    assert milter.kinds().count(Rcpt) == 3


def test_tempfail_at_mail_refuses_the_transaction_and_the_next_one_starts_clean() -> None:
    answers = iter([[Tempfail()], [Continue()]])
    milter = ScriptedMilter(script={Mail: lambda _c: next(answers)})
    run = Run(make_check(), milter)
    run.connect()
    assert reply_of(run.mail()) == (451, "4.7.1", "Service unavailable - try again later")
    assert run.mail() is None
    # The refused transaction is closed with an ABORT before the next MAIL.
    assert milter.kinds() == [Connect, Mail, Abort, Mail]


def test_an_aborted_transaction_is_closed_before_the_next_helo() -> None:
    milter = ScriptedMilter()
    run = Run(make_check(), milter)
    run.through_rcpt()
    run.session.transaction = None  # RSET
    assert run.helo() is None
    assert milter.kinds() == [Connect, Helo, Mail, Rcpt, Abort, Helo]


@pytest.mark.parametrize(
    ("answer", "greeting"),
    [
        (Reject(), (554, "5.7.1", "Command rejected")),
        (Tempfail(), (421, "4.7.1", "Service unavailable - try again later")),
        (ReplyCode(code=550, lines=("5.7.0 go away",)), (554, "5.7.0", "go away")),
    ],
)
def test_a_refusal_at_connect_is_a_greeting_refusal(
    answer: Reply, greeting: tuple[int, str, str]
) -> None:
    run = Run(make_check(), ScriptedMilter(script={Connect: [answer]}))
    assert reply_of(run.connect()) == greeting


def test_a_refusal_at_helo_holds_for_the_rest_of_the_connection() -> None:
    milter = ScriptedMilter(script={Helo: [Tempfail()]})
    run = Run(make_check(), milter)
    assert run.connect() is None
    tempfail = (451, "4.7.1", "Service unavailable - try again later")
    assert reply_of(run.helo()) == tempfail
    assert reply_of(run.helo()) == tempfail
    assert reply_of(run.mail()) == tempfail
    assert run.asked == 0
    assert milter.kinds() == [Connect, Helo]


def test_accept_at_connect_ends_the_milters_part_in_the_connection() -> None:
    milter = ScriptedMilter(script={Connect: [Accept()]})
    run = Run(make_check(), milter)
    run.through_rcpt()
    assert run.data() is None
    assert run.asked == 0
    assert milter.kinds() == [Connect]
    assert not run.check.wants_message(run.session)


def test_accept_at_mail_ends_its_part_in_that_message_only() -> None:
    answers = iter([[Accept()], [Continue()]])
    milter = ScriptedMilter(script={Mail: lambda _c: next(answers)})
    run = Run(make_check(), milter)
    run.through_rcpt()
    assert run.asked == 0  # no RCPT for this milter
    assert run.data() is None
    assert run.asked == 0
    assert run.mail() is None
    assert run.rcpt() is None
    assert milter.kinds() == [Connect, Helo, Mail, Abort, Mail, Rcpt]


def test_discard_at_rcpt_drops_the_message_at_its_end() -> None:
    milter = ScriptedMilter(script={Rcpt: [Discard()]})
    run = Run(make_check(), milter)
    run.through_rcpt()
    assert run.check.wants_message(run.session)  # the session drops only a held message
    verdict = run.data()
    assert verdict is not None
    assert verdict.discard
    assert verdict.reply is None
    assert milter.kinds()[-1] is Rcpt


def test_discard_at_end_of_message() -> None:
    run = Run(make_check(), ScriptedMilter(script={EndOfMessage: [Discard()]}))
    run.through_rcpt()
    verdict = run.data()
    assert verdict is not None
    assert verdict.discard


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (Reject(), (550, "5.7.1", "Command rejected")),
        (Tempfail(), (451, "4.7.1", "Service unavailable - try again later")),
        (ReplyCode(code=554, lines=("5.7.1 spam detected",)), (554, "5.7.1", "spam detected")),
        # A class that does not match the code is set right; "%%" was a Sendmail format.
        (ReplyCode(code=550, lines=("4.7.1 100%% spam",)), (550, "5.7.1", "100% spam")),
        # No enhanced code: the policy one of the reply's class.
        (ReplyCode(code=450, lines=("later",)), (450, "4.7.1", "later")),
        # 421 promises a disconnect the session does not make.
        (ReplyCode(code=421, lines=("4.3.2 busy",)), (451, "4.3.2", "busy")),
    ],
)
def test_refusals_at_end_of_message(answer: Reply, expected: tuple[int, str, str]) -> None:
    run = Run(make_check(), ScriptedMilter(script={EndOfMessage: [answer]}))
    run.through_rcpt()
    assert reply_of(run.data()) == expected


def test_a_multiline_reply_code_keeps_its_lines() -> None:
    answer = ReplyCode(code=550, lines=("5.7.1 first", "5.7.1 second"))
    run = Run(make_check(), ScriptedMilter(script={EndOfMessage: [answer]}))
    run.through_rcpt()
    verdict = run.data()
    assert verdict.reply == SmtpReply(code=550, lines=("first", "second"), enhanced="5.7.1")


def test_a_refusal_in_the_header_stops_the_content() -> None:
    milter = ScriptedMilter(script={Header: [Reject()]})
    run = Run(make_check(), milter)
    run.through_rcpt()
    assert reply_of(run.data())[0] == 550
    assert milter.kinds()[-2:] == [Data, Header]
    assert run.mail() is None
    assert milter.kinds()[-2:] == [Abort, Mail]


def test_modifications_at_end_of_message_become_the_verdict() -> None:
    eom = [
        AddHeader(name="X-Spam-Score", value="1.5\n\t(folded)"),
        Progress(),
        InsertHeader(index=0, name="X-First", value="top"),
        ChangeHeader(index=0, name="Subject", value="[SPAM] two spaces"),
        ChangeHeader(index=2, name="X-Gone", value=""),
        ReplaceBody(data=b"new "),
        ReplaceBody(data=b"body\r\n"),
        Quarantine(reason="held for review"),
        Continue(),
    ]
    run = Run(make_check(), ScriptedMilter(script={EndOfMessage: eom}))
    run.through_rcpt()
    verdict = run.data()
    assert verdict.reply is None
    assert not verdict.discard
    edits = [(e.action, e.name, e.value, e.index) for e in verdict.header_edits]
    assert edits == [
        ("add", "X-Spam-Score", "1.5\n\t(folded)", 0),
        ("insert", "X-First", "top", 0),
        ("change", "Subject", "[SPAM] two spaces", 1),  # index 0 reads as 1
        ("change", "X-Gone", "", 2),
    ]
    assert verdict.body == b"new body\r\n"
    assert verdict.quarantine == "held for review"
    assert verdict.source == "milter inet:127.0.0.1:8891"


def test_a_refusal_drops_the_modifications() -> None:
    eom = [AddHeader(name="X-A", value="b"), Reject()]
    run = Run(make_check(), ScriptedMilter(script={EndOfMessage: eom}))
    run.through_rcpt()
    verdict = run.data()
    assert verdict.header_edits == ()
    assert reply_of(verdict)[0] == 550


# --- a milter that is down or broken ------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "connect", "later"),
    [
        (
            "tempfail",
            (421, "4.7.1", "Service unavailable - try again later"),
            (451, "4.7.1", "Service unavailable - try again later"),
        ),
        ("reject", (554, "5.5.0", "Service unavailable"), (550, "5.5.0", "Service unavailable")),
        ("accept", None, None),
    ],
)
def test_a_milter_that_is_down_gets_the_default_action(
    action: str, connect: Any, later: Any
) -> None:
    run = Run(make_check(action), None)
    verdict = run.connect()
    if connect is None:
        assert verdict is None
    else:
        assert reply_of(verdict) == connect
        assert verdict.source == "milter inet:127.0.0.1:8891 (cannot connect: Connection refused)"
    for verdict in (run.helo(), run.mail()):
        assert run.asked == 0  # not tried again in this session
        assert (None if verdict is None else reply_of(verdict)) == later


def test_a_milter_that_fails_mid_session_gets_the_default_action_from_then_on() -> None:
    milter = ScriptedMilter()
    run = Run(make_check("tempfail"), milter)
    run.through_rcpt()
    run.milter = None  # it times out at end of data
    assert reply_of(run.data())[0] == 451
    assert reply_of(run.mail())[0] == 451


def test_an_unnegotiated_modification_is_a_broken_milter() -> None:
    # The milter took only header changes; it then adds a recipient anyway.
    eom = [AddRecipient(recipient="<copy@example.test>"), Continue()]
    milter = ScriptedMilter(actions=Action.ADDHDRS, script={EndOfMessage: eom})
    run = Run(make_check("reject"), milter)
    run.through_rcpt()
    verdict = run.data()
    assert reply_of(verdict) == (550, "5.5.0", "Service unavailable")
    assert "protocol error" in verdict.source


def test_envelope_changes_reach_the_verdict() -> None:
    eom = [
        AddRecipient(recipient="<copy@example.test>"),
        AddRecipient(recipient="<archive@example.test>", parameters="NOTIFY=NEVER"),
        DeleteRecipient(recipient="<bob@example.test>"),
        ChangeSender(sender="<first@example.org>"),
        ChangeSender(sender="<bounces@example.org>"),
        AddHeader(name="X-Added", value="yes"),
        Continue(),
    ]
    run = Run(make_check(), ScriptedMilter(script={EndOfMessage: eom}))
    run.through_rcpt()
    verdict = run.data()
    assert verdict.add_recipients == ("<copy@example.test>", "<archive@example.test>")
    assert verdict.delete_recipients == ("<bob@example.test>",)
    assert verdict.new_sender == "<bounces@example.org>"  # the last change counts
    assert verdict.header_edits == (HeaderEdit("add", "X-Added", "yes"),)


def test_a_milter_that_closes_its_end_is_down() -> None:
    run = Run(make_check("tempfail"), ScriptedMilter())
    assert run.connect() is None
    [conversation] = run.check.inquiries(Stage.HELO, run.session, smtp.Hello(domain="h"))
    assert conversation.data_to_send()
    conversation.receive_data(b"")
    assert conversation.done
    assert reply_of(run.check.check(Stage.HELO, run.session))[0] == 451


def test_garbage_from_the_milter_is_a_protocol_error_not_a_crash() -> None:
    run = Run(make_check("accept"), ScriptedMilter())
    [conversation] = run.check.inquiries(Stage.CONNECT, run.session, None)
    conversation.data_to_send()
    conversation.receive_data(b"\x00\x00\x00\x01Z")
    assert conversation.done
    assert run.check.check(Stage.CONNECT, run.session) is None
    assert run.check.inquiries(Stage.HELO, run.session, smtp.Hello(domain="h")) == []


# --- the end of the session ----------------------------------------------------------------------


def test_close_data_aborts_an_open_transaction_and_quits() -> None:
    milter = ScriptedMilter()
    run = Run(make_check(), milter)
    run.through_rcpt()
    assert milter.take(run.check.close_data(run.session)) == b""
    assert milter.kinds()[-2:] == [Abort, Quit]
    # Said once: the connection is closed now.
    assert run.check.close_data(run.session) == b""


def test_close_data_between_transactions_only_quits() -> None:
    milter = ScriptedMilter()
    run = Run(make_check(), milter)
    [conversation] = run.check.inquiries(Stage.CONNECT, run.session, None)
    carry(conversation, milter)
    assert milter.take(conversation.close_data()) == b""
    assert milter.kinds() == [Connect, Quit]


def test_nothing_to_say_to_a_milter_that_is_down() -> None:
    run = Run(make_check(), None)
    run.connect()
    assert run.check.close_data(run.session) == b""


# --- configuration ---------------------------------------------------------------------------


def test_milter_checks_follow_the_configured_order(tmp_path: pathlib.Path) -> None:
    config = Config(
        source=None,
        hostname="mx.example.test",
        domains=("example.test",),
        data_dir=tmp_path,
        milter=MilterConfig(
            milters=(("127.0.0.1", 11332), tmp_path / "milter.sock"), default_action="accept"
        ),
    )
    checks = milter_checks(config)
    assert [c.name for c in checks] == [
        "inet:127.0.0.1:11332",
        f"unix:{tmp_path / 'milter.sock'}",
    ]
    assert all(c.default_action == "accept" for c in checks)
    assert checks[0].hostname == "mx.example.test"
    assert checks[0].key != checks[1].key
    assert (checks[0].connect_timeout, checks[0].command_timeout) == (30.0, 30.0)
    assert checks[0].content_timeout == 300.0


def test_conversations_carry_postfix_timeouts() -> None:
    check = make_check()
    session = FakeSession()
    [conversation] = check.inquiries(Stage.CONNECT, session, None)
    assert (conversation.timeout, conversation.address) == (30.0, ADDRESS)
    assert conversation.source == "milter inet:127.0.0.1:8891"
