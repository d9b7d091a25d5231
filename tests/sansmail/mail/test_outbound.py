"""The outbound session against scripted servers: byte scripts fed in answer to each
NeedData, and the bytes the session sends checked exactly."""

from __future__ import annotations

import attrs
import pytest

import sansmail.mail.outbound
from sansmail import LocalProtocolError
from sansmail.mail.outbound import (
    CONTENT_BLOCK,
    DATA_BLOCK_TIMEOUT,
    DATA_END_TIMEOUT,
    DATA_INIT_TIMEOUT,
    GREETING_TIMEOUT,
    MAIL_TIMEOUT,
    Action,
    ClientTimeouts,
    Closed,
    MessageDone,
    NeedData,
    OutboundMessage,
    OutboundRecipient,
    OutboundSession,
    Ready,
    Send,
    SessionFailed,
    StartTLS,
    describe_stage,
)

GREETING = b"220 mx.example ESMTP\r\n"
EHLO_PIPELINING = b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250 8BITMIME\r\n"
EHLO_PLAIN = b"250-mx.example\r\n250 8BITMIME\r\n"
EHLO = b"EHLO client.example\r\n"
MSG = OutboundMessage(
    sender="a@a.example",
    recipients=(OutboundRecipient(address="b@b.example"), OutboundRecipient(address="c@c.example")),
    content=b"Subject: hi\r\n\r\n.body\r\n",
)
CONTENT_WIRE = b"Subject: hi\r\n\r\n..body\r\n.\r\n"


class Script:
    """A fake server: one chunk of bytes per NeedData, EOF when the script runs out."""

    def __init__(
        self,
        session: OutboundSession,
        chunks: list[bytes],
        messages: list[OutboundMessage] | None = None,
    ) -> None:
        self.session = session
        self.chunks = list(chunks)
        self.messages = list(messages or [])
        self.sent: list[bytes] = []
        self.actions: list[Action] = []

    def run(self, limit: int = 200) -> list[Action]:
        """Drive the session to Closed; return the actions other than Send/NeedData."""
        for _ in range(limit):
            action = self.session.next_action()
            self.actions.append(action)
            if isinstance(action, Send):
                self.sent.append(action.data)
            elif isinstance(action, NeedData):
                self.session.receive_data(self.chunks.pop(0) if self.chunks else b"")
            elif isinstance(action, StartTLS):
                self.session.tls_started()
            elif isinstance(action, Ready):
                if self.messages:
                    self.session.start_message(self.messages.pop(0))
                else:
                    self.session.quit()
            elif isinstance(action, Closed):
                return [a for a in self.actions if not isinstance(a, Send | NeedData)]
        raise AssertionError("the session never closed")

    @property
    def wire(self) -> bytes:
        return b"".join(self.sent)


def session(**kwargs: object) -> OutboundSession:
    options: dict[str, object] = {"helo_name": "client.example", "tls": "none"}
    options.update(kwargs)
    return OutboundSession(**options)  # type: ignore[arg-type]


def statuses(action: Action) -> list[tuple[str, str, int]]:
    assert isinstance(action, MessageDone), action
    return [(r.address, r.status, r.reply.code) for r in action.results]


# --- API -------------------------------------------------------------------------------


def test_public_names_are_pinned() -> None:
    assert sorted(sansmail.mail.outbound.__all__) == sorted(
        [
            "COMMAND_TIMEOUT", "CONTENT_BLOCK", "DATA_BLOCK_TIMEOUT", "DATA_END_TIMEOUT",
            "DATA_INIT_TIMEOUT", "GREETING_TIMEOUT", "MAIL_TIMEOUT", "RCPT_TIMEOUT",
            "TLS_HANDSHAKE_TIMEOUT",
            "Action", "ClientTimeouts", "Closed", "describe_stage", "MessageDone", "NeedData",
            "OutboundMessage", "OutboundRecipient", "OutboundSession", "Ready", "RecipientResult",
            "Send", "SessionFailed", "StartTLS",
        ]
    )  # fmt: skip


def test_rfc_5321_timeouts() -> None:
    assert (GREETING_TIMEOUT, MAIL_TIMEOUT, DATA_INIT_TIMEOUT) == (300, 300, 120)
    assert (DATA_BLOCK_TIMEOUT, DATA_END_TIMEOUT) == (180, 600)


@pytest.mark.parametrize(
    "build",
    [
        lambda: OutboundRecipient(address="not an address"),
        lambda: OutboundRecipient(address="b@b.example", notify=("NEVER", "DELAY")),
        lambda: OutboundRecipient(address="b@b.example", notify=("SOMETIMES",)),
        lambda: OutboundRecipient(address="b@b.example", orcpt="b@b.example"),
        lambda: OutboundMessage(sender="a@a.example", recipients=(), content=b""),
        lambda: OutboundMessage(sender="x", recipients=MSG.recipients, content=b""),
        lambda: OutboundMessage(sender="", recipients=MSG.recipients, content=b"", ret="ALL"),
        lambda: OutboundMessage(sender="", recipients=MSG.recipients, content=b"", envid="a b"),
        lambda: OutboundMessage(sender="", recipients=MSG.recipients, content=b"", envid="x" * 101),
        lambda: session(tls="sometimes"),
        lambda: session(helo_name="bücher.example"),
        lambda: session(helo_name="two words"),
        lambda: session(helo_name=""),
    ],
)
def test_inputs_are_validated(build: object) -> None:
    with pytest.raises(ValueError):
        build()  # type: ignore[operator]


def test_start_message_only_when_ready() -> None:
    s = session()
    with pytest.raises(LocalProtocolError):
        s.start_message(MSG)
    with pytest.raises(LocalProtocolError):
        s.tls_started()


# --- The conversation ------------------------------------------------------------------


def test_pipelined_delivery_of_one_message() -> None:
    script = Script(
        session(),
        [
            GREETING,
            EHLO_PIPELINING,
            b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n",
            b"250 queued\r\n",
            b"221 bye\r\n",
        ],
        [MSG],
    )
    actions = script.run()
    assert script.sent == [
        EHLO,
        # RFC 2920: MAIL, every RCPT and DATA in one write.
        b"MAIL FROM:<a@a.example> SIZE=22\r\n"
        b"RCPT TO:<b@b.example>\r\nRCPT TO:<c@c.example>\r\nDATA\r\n",
        CONTENT_WIRE,
        b"QUIT\r\n",
    ]
    assert [type(a) for a in actions] == [Ready, MessageDone, Ready, Closed]
    assert statuses(actions[1]) == [("b@b.example", "sent", 250), ("c@c.example", "sent", 250)]


def test_without_pipelining_one_command_per_reply() -> None:
    script = Script(
        session(),
        [
            GREETING,
            EHLO_PLAIN,
            b"250 ok\r\n",
            b"250 ok\r\n",
            b"250 ok\r\n",
            b"354 go\r\n",
            b"250 queued\r\n",
            b"221 bye\r\n",
        ],
        [MSG],
    )
    actions = script.run()
    assert script.sent == [
        EHLO,
        b"MAIL FROM:<a@a.example>\r\n",
        b"RCPT TO:<b@b.example>\r\n",
        b"RCPT TO:<c@c.example>\r\n",
        b"DATA\r\n",
        CONTENT_WIRE,
        b"QUIT\r\n",
    ]
    assert statuses(actions[1]) == [("b@b.example", "sent", 250), ("c@c.example", "sent", 250)]


def test_timeouts_follow_what_is_awaited() -> None:
    script = Script(
        session(),
        [
            GREETING,
            EHLO_PLAIN,
            b"250 ok\r\n",
            b"250 ok\r\n",
            b"250 ok\r\n",
            b"354 go\r\n",
            b"250 queued\r\n",
            b"221 bye\r\n",
        ],
        [MSG],
    )
    script.run()
    waits = [a.timeout for a in script.actions if isinstance(a, NeedData)]
    assert waits == [300, 300, 300, 300, 300, 120, 600, 300]
    sends = [a.timeout for a in script.actions if isinstance(a, Send)]
    assert sends[5] == DATA_BLOCK_TIMEOUT


def test_helo_fallback() -> None:
    script = Script(
        session(),
        [
            GREETING,
            b"502 5.5.1 what is EHLO\r\n",
            b"250 old.example\r\n",
            b"250 ok\r\n",
            b"250 ok\r\n",
            b"250 ok\r\n",
            b"354 go\r\n",
            b"250 ok\r\n",
            b"221 bye\r\n",
        ],
        [MSG],
    )
    actions = script.run()
    assert script.sent[:3] == [EHLO, b"HELO client.example\r\n", b"MAIL FROM:<a@a.example>\r\n"]
    assert statuses(actions[1])[0][1] == "sent"


@pytest.mark.parametrize(
    ("greeting", "permanent"), [(b"554 5.7.1 go away\r\n", True), (b"450 busy\r\n", False)]
)
def test_refusing_greeting_fails_the_session_and_quits(greeting: bytes, permanent: bool) -> None:
    script = Script(session(), [greeting, b"221 bye\r\n"], [MSG])
    actions = script.run()
    [failed, closed] = actions
    assert isinstance(failed, SessionFailed)
    assert (failed.permanent, failed.stage) == (permanent, "greeting")
    assert failed.reply is not None
    assert failed.reply.code == int(greeting[:3])
    assert isinstance(closed, Closed)
    assert script.sent == [b"QUIT\r\n"]


def test_ehlo_4xx_is_temporary() -> None:
    actions = Script(session(), [GREETING, b"421 4.3.2 not now\r\n"]).run()
    assert isinstance(actions[0], SessionFailed)
    assert (actions[0].permanent, actions[0].stage) == (False, "ehlo")


def test_partial_rcpt_failure() -> None:
    script = Script(
        session(),
        [
            GREETING,
            EHLO_PIPELINING,
            b"250 ok\r\n550 5.1.1 no such user\r\n250 ok\r\n354 go\r\n",
            b"250 queued\r\n",
            b"221 bye\r\n",
        ],
        [MSG],
    )
    actions = script.run()
    assert statuses(actions[1]) == [("b@b.example", "bounced", 550), ("c@c.example", "sent", 250)]
    assert isinstance(actions[1], MessageDone)
    # No ENHANCEDSTATUSCODES advertised, but the code is read (a DSN needs it).
    assert actions[1].results[0].reply.enhanced == "5.1.1"
    assert actions[1].results[0].reply.text == "no such user"


def test_all_rcpt_fail_pipelined_the_data_refusal_is_read_then_rset() -> None:
    script = Script(
        session(),
        [
            GREETING,
            EHLO_PIPELINING,
            b"250 ok\r\n450 try later\r\n550 no\r\n554 no valid recipients\r\n",
            b"250 reset\r\n",
            b"221 bye\r\n",
        ],
        [MSG],
    )
    actions = script.run()
    assert statuses(actions[1]) == [
        ("b@b.example", "deferred", 450),
        ("c@c.example", "bounced", 550),
    ]
    assert script.sent[2:] == [b"RSET\r\n", b"QUIT\r\n"]  # no content went out


def test_all_rcpt_fail_without_pipelining_no_data_is_sent() -> None:
    script = Script(
        session(),
        [
            GREETING,
            EHLO_PLAIN,
            b"250 ok\r\n",
            b"550 no\r\n",
            b"550 no\r\n",
            b"250 reset\r\n",
            b"221 bye\r\n",
        ],
        [MSG],
    )
    actions = script.run()
    assert statuses(actions[1]) == [
        ("b@b.example", "bounced", 550),
        ("c@c.example", "bounced", 550),
    ]
    assert b"DATA\r\n" not in script.sent
    assert script.sent[-2:] == [b"RSET\r\n", b"QUIT\r\n"]


def test_a_354_after_all_rcpts_failed_gets_an_empty_message() -> None:
    script = Script(
        session(),
        [
            GREETING,
            EHLO_PIPELINING,
            b"250 ok\r\n550 no\r\n550 no\r\n354 go on then\r\n",
            b"554 nothing to deliver\r\n",
            b"250 reset\r\n",
            b"221 bye\r\n",
        ],
        [MSG],
    )
    actions = script.run()
    assert script.sent[2] == b".\r\n"
    assert statuses(actions[1]) == [
        ("b@b.example", "bounced", 550),
        ("c@c.example", "bounced", 550),
    ]


@pytest.mark.parametrize(
    ("final", "status"), [(b"451 4.3.0 later\r\n", "deferred"), (b"554 5.6.0 spam\r\n", "bounced")]
)
def test_refusal_at_the_end_of_data(final: bytes, status: str) -> None:
    script = Script(
        session(),
        [
            GREETING,
            EHLO_PIPELINING,
            b"250 ok\r\n550 no\r\n250 ok\r\n354 go\r\n",
            final,
            b"221 bye\r\n",
        ],
        [MSG],
    )
    actions = script.run()
    assert statuses(actions[1]) == [
        ("b@b.example", "bounced", 550),
        ("c@c.example", status, int(final[:3])),
    ]
    assert b"RSET\r\n" not in script.sent  # the transaction ended with its content


def test_refused_mail_decides_for_everyone_and_rset_follows() -> None:
    script = Script(
        session(),
        [
            GREETING,
            EHLO_PIPELINING,
            b"452 4.3.1 full\r\n503 no\r\n503 no\r\n503 no\r\n",
            b"250 ok\r\n",
            b"221 bye\r\n",
        ],
        [MSG],
    )
    actions = script.run()
    assert statuses(actions[1]) == [
        ("b@b.example", "deferred", 452),
        ("c@c.example", "deferred", 452),
    ]
    assert script.sent[-2:] == [b"RSET\r\n", b"QUIT\r\n"]


def test_refused_data_command() -> None:
    script = Script(
        session(),
        [
            GREETING,
            EHLO_PIPELINING,
            b"250 ok\r\n250 ok\r\n250 ok\r\n451 not now\r\n",
            b"250 ok\r\n",
            b"221 bye\r\n",
        ],
        [MSG],
    )
    actions = script.run()
    assert statuses(actions[1]) == [
        ("b@b.example", "deferred", 451),
        ("c@c.example", "deferred", 451),
    ]


def test_two_messages_on_one_connection() -> None:
    second = OutboundMessage(
        sender="", recipients=(OutboundRecipient(address="d@d.example"),), content=b"x"
    )
    script = Script(
        session(),
        [
            GREETING, EHLO_PIPELINING,
            b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n", b"250 one\r\n",
            b"250 ok\r\n250 ok\r\n354 go\r\n", b"250 two\r\n",
            b"221 bye\r\n",
        ],
        [MSG, second],
    )  # fmt: skip
    actions = script.run()
    assert [type(a) for a in actions] == [Ready, MessageDone, Ready, MessageDone, Ready, Closed]
    assert statuses(actions[3]) == [("d@d.example", "sent", 250)]
    assert script.sent[3] == b"MAIL FROM:<> SIZE=3\r\nRCPT TO:<d@d.example>\r\nDATA\r\n"
    assert script.sent[4] == b"x\r\n.\r\n"
    assert b"RSET\r\n" not in script.sent


def test_421_mid_session_fails_without_results() -> None:
    script = Script(
        session(),
        [GREETING, EHLO_PIPELINING, b"250 ok\r\n421 4.3.2 shutting down\r\n"],
        [MSG],
    )
    actions = script.run()
    assert [type(a) for a in actions] == [Ready, SessionFailed, Closed]
    failed = actions[1]
    assert isinstance(failed, SessionFailed)
    assert (failed.permanent, failed.stage) == (False, "rcpt")
    assert failed.reply is not None
    assert failed.reply.code == 421
    assert b"QUIT\r\n" not in script.sent


def test_connection_lost_mid_message() -> None:
    script = Script(
        session(), [GREETING, EHLO_PIPELINING, b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n"], [MSG]
    )
    actions = script.run()
    failed = actions[1]
    assert isinstance(failed, SessionFailed)
    assert (failed.permanent, failed.stage, failed.reply) == (False, "end-of-data", None)
    # RFC 1047: the "." is out, so the server may have the message; Postfix's words.
    assert failed.reason == (
        "lost connection while sending end of data -- message may be sent more than once"
    )


BIG = attrs.evolve(MSG, content=b"Subject: big\r\n\r\n" + b"x" * 200_000 + b"\r\n")


def through_354(s: OutboundSession, message: OutboundMessage = MSG) -> None:
    """Drive `s` (no PIPELINING) to the 354 of `message`'s DATA."""
    replies = [GREETING, EHLO_PLAIN, b"250 ok\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"]
    while replies:
        action = s.next_action()
        if isinstance(action, NeedData):
            s.receive_data(replies.pop(0))
        elif isinstance(action, Ready):
            s.start_message(message)


def test_a_write_of_the_content_that_fails_is_before_the_window() -> None:
    s = session()
    through_354(s, BIG)
    blocks = 0
    while True:
        action = s.next_action()
        assert isinstance(action, Send)
        blocks += 1
        assert s.stage == "content"
        if blocks == 2:  # the second block of four fails to go out
            break
    s.connection_lost("Connection reset by peer")
    failed = s.next_action()
    assert isinstance(failed, SessionFailed)
    assert failed.stage == "content"
    assert failed.reason == "lost connection while sending message body (Connection reset by peer)"


def test_the_block_with_the_final_dot_is_in_the_window_only_once_written() -> None:
    s = session()
    through_354(s)
    last = s.next_action()
    assert isinstance(last, Send)
    assert last.data.endswith(b"\r\n.\r\n")
    # Its write failing: the server lacks the ".", nothing can have been delivered.
    assert s.stage == "content"
    wait = s.next_action()  # the adapter is back: the "." is out
    assert isinstance(wait, NeedData)
    assert wait.timeout == DATA_END_TIMEOUT
    assert (s.stage,) == ("end-of-data",)  # (a tuple: mypy would hold the narrowed one)
    s.timed_out()
    failed = s.next_action()
    assert isinstance(failed, SessionFailed)
    assert (failed.stage, failed.reply) == ("end-of-data", None)
    assert failed.reason == (
        "conversation timed out while sending end of data -- message may be sent more than once"
    )
    assert isinstance(s.next_action(), Closed)


def test_the_next_transaction_starts_outside_the_window() -> None:
    s = session()
    through_354(s)
    assert isinstance(s.next_action(), Send)  # the content
    assert isinstance(s.next_action(), NeedData)
    s.receive_data(b"250 queued\r\n")
    assert isinstance(s.next_action(), MessageDone)
    assert isinstance(s.next_action(), Ready)
    s.start_message(MSG)
    assert isinstance(s.next_action(), Send)
    s.connection_lost("Broken pipe")  # a cached connection the server had closed
    failed = s.next_action()
    assert isinstance(failed, SessionFailed)
    assert failed.stage == "mail"


@pytest.mark.parametrize(
    ("replies", "stage", "during"),
    [
        ([], "greeting", "receiving the initial server greeting"),
        ([GREETING], "ehlo", "performing the EHLO handshake"),
        ([GREETING, EHLO_PLAIN], "mail", "sending MAIL FROM"),
        ([GREETING, EHLO_PLAIN, b"250 ok\r\n"], "rcpt", "sending RCPT TO"),
        (
            [GREETING, EHLO_PLAIN, b"250 ok\r\n", b"250 ok\r\n", b"250 ok\r\n"],
            "data",
            "sending DATA command",
        ),
    ],
)
def test_a_timeout_says_what_the_session_waited_for(
    replies: list[bytes], stage: str, during: str
) -> None:
    s = session()
    while True:
        action = s.next_action()
        if isinstance(action, Ready):
            s.start_message(MSG)
        elif isinstance(action, NeedData):
            if not replies:
                break
            s.receive_data(replies.pop(0))
    s.timed_out()
    failed = s.next_action()
    assert isinstance(failed, SessionFailed)
    assert (failed.stage, failed.reason) == (stage, f"conversation timed out while {during}")


def test_every_action_carries_the_configured_timeout() -> None:
    timeouts = ClientTimeouts(
        greeting=1, command=2, starttls=3, mail=4, rcpt=5, data_init=6, data_block=7, data_done=8
    )
    s = session(timeouts=timeouts, tls="may")
    ehlo_tls = b"250-mx.example\r\n250 STARTTLS\r\n"
    replies = [GREETING, ehlo_tls, b"220 go\r\n", EHLO_PLAIN]
    replies += [b"250 ok\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"250 ok\r\n"]
    seen = []
    while True:
        action = s.next_action()
        if isinstance(action, Send | NeedData | StartTLS):
            seen.append((type(action).__name__, action.timeout))
            assert s.timeout == action.timeout
        if isinstance(action, NeedData):
            s.receive_data(replies.pop(0) if replies else b"")
        elif isinstance(action, StartTLS):
            s.tls_started()
        elif isinstance(action, Ready):
            if replies:
                s.start_message(MSG)
            else:
                s.quit()
        elif isinstance(action, Closed | SessionFailed):
            break
    assert seen[:3] == [("NeedData", 1), ("Send", 2), ("NeedData", 2)]
    assert ("StartTLS", 3) in seen
    assert {("Send", 4), ("NeedData", 4)} <= set(seen)  # MAIL
    assert {("NeedData", 5), ("NeedData", 6), ("Send", 7), ("NeedData", 8)} <= set(seen)


def test_replies_are_counted_so_the_adapter_sees_one_reply_in_many_reads() -> None:
    s = session()
    assert isinstance(s.next_action(), NeedData)
    s.receive_data(GREETING[:5])
    assert isinstance(s.next_action(), NeedData)
    assert s.replies == 0  # the same reply, still coming
    s.receive_data(GREETING[5:])
    assert isinstance(s.next_action(), Send)  # EHLO
    assert s.replies == 1


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan")])
def test_timeouts_are_positive_and_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="data_done timeout"):
        ClientTimeouts(data_done=bad)


def test_default_timeouts_are_rfc_5321_and_postfix() -> None:
    t = ClientTimeouts()
    assert (t.connect, t.greeting, t.command, t.starttls) == (30, 300, 300, 300)
    assert (t.mail, t.rcpt, t.data_init, t.data_block, t.data_done) == (300, 300, 120, 180, 600)
    assert describe_stage("content") == "sending message body"


def test_malformed_reply_mid_message() -> None:
    script = Script(
        session(), [GREETING, EHLO_PIPELINING, b"250 ok\r\nthis is not SMTP\r\n"], [MSG]
    )
    actions = script.run()
    failed = actions[1]
    assert isinstance(failed, SessionFailed)
    assert (failed.permanent, failed.stage) == (False, "rcpt")
    assert "protocol error" in failed.reason


def test_connection_lost_reported_by_the_adapter() -> None:
    s = session()
    assert isinstance(s.next_action(), NeedData)
    s.receive_data(GREETING)
    assert isinstance(s.next_action(), Send)  # EHLO
    s.connection_lost("Broken pipe")
    failed = s.next_action()
    assert isinstance(failed, SessionFailed)
    assert (failed.stage, failed.reason) == (
        "ehlo",
        "lost connection while performing the EHLO handshake (Broken pipe)",
    )
    assert isinstance(s.next_action(), Closed)
    assert isinstance(s.next_action(), Closed)


def test_quit_before_ready_closes_at_once() -> None:
    s = session()
    s.quit()
    assert isinstance(s.next_action(), Closed)


def test_large_content_goes_in_blocks() -> None:
    big = OutboundMessage(
        sender="a@a.example",
        recipients=(OutboundRecipient(address="b@b.example"),),
        content=(b"." + b"x" * 998 + b"\r\n") * 150,
    )
    script = Script(
        session(),
        [
            GREETING,
            EHLO_PLAIN,
            b"250 ok\r\n",
            b"250 ok\r\n",
            b"354 go\r\n",
            b"250 ok\r\n",
            b"221 bye\r\n",
        ],
        [big],
    )
    script.run()
    content_sends = script.sent[4:-1]
    assert len(content_sends) == 3
    assert all(len(block) <= CONTENT_BLOCK + 200 for block in content_sends)
    assert (
        b"".join(content_sends)
        == big.content.replace(b"\r\n.", b"\r\n..").replace(b".x", b"..x", 1) + b".\r\n"
    )


# --- Refusals before MAIL ------------------------------------------------------------------


def test_smtputf8_needed_but_not_offered_bounces_without_mail() -> None:
    utf8 = OutboundMessage(
        sender="jörg@a.example",
        recipients=(OutboundRecipient(address="b@b.example"),),
        content=b"x\r\n",
    )
    script = Script(session(), [GREETING, EHLO_PIPELINING, b"221 bye\r\n"], [utf8])
    actions = script.run()
    done = actions[1]
    assert isinstance(done, MessageDone)
    [result] = done.results
    assert (result.status, result.reply.code, result.reply.enhanced, result.remote) == (
        "bounced",
        550,
        "5.6.7",
        False,
    )
    assert script.sent == [EHLO, b"QUIT\r\n"]


def test_smtputf8_offered_is_used() -> None:
    utf8 = OutboundMessage(
        sender="a@a.example",
        recipients=(OutboundRecipient(address="jörg@b.example"),),
        content=b"x\r\n",
    )
    ehlo = b"250-mx\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n"
    script = Script(
        session(),
        [GREETING, ehlo, b"250 ok\r\n250 ok\r\n354 go\r\n", b"250 ok\r\n", b"221 bye\r\n"],
        [utf8],
    )
    script.run()
    assert (
        script.sent[1]
        == "MAIL FROM:<a@a.example> SMTPUTF8\r\nRCPT TO:<jörg@b.example>\r\nDATA\r\n".encode()
    )


def test_message_over_the_advertised_size_bounces_without_mail() -> None:
    big = OutboundMessage(
        sender="a@a.example",
        recipients=(OutboundRecipient(address="b@b.example"),),
        content=b"x" * 100,
    )
    ehlo = b"250-mx\r\n250-PIPELINING\r\n250 SIZE 50\r\n"
    script = Script(session(), [GREETING, ehlo, b"221 bye\r\n"], [big])
    actions = script.run()
    assert statuses(actions[1]) == [("b@b.example", "bounced", 552)]
    assert isinstance(actions[1], MessageDone)
    assert actions[1].results[0].reply.enhanced == "5.3.4"
    assert script.sent == [EHLO, b"QUIT\r\n"]


def test_bare_cr_in_content_bounces_without_mail() -> None:
    bad = OutboundMessage(
        sender="", recipients=(OutboundRecipient(address="b@b.example"),), content=b"a\rb\r\n"
    )
    script = Script(session(), [GREETING, EHLO_PIPELINING, b"221 bye\r\n"], [bad])
    actions = script.run()
    assert statuses(actions[1]) == [("b@b.example", "bounced", 550)]


def test_dsn_parameters_only_when_offered() -> None:
    message = OutboundMessage(
        sender="a@a.example",
        recipients=(
            OutboundRecipient(
                address="b@b.example", notify=("success", "FAILURE"), orcpt="rfc822;b+2Bx@b.example"
            ),
        ),
        content=b"x\r\n",
        ret="hdrs",
        envid="QQ314159",
        body_8bit=True,
    )
    answers = [b"250 ok\r\n250 ok\r\n354 go\r\n", b"250 ok\r\n", b"221 bye\r\n"]
    with_dsn = b"250-mx\r\n250-PIPELINING\r\n250-DSN\r\n250 8BITMIME\r\n"
    script = Script(session(), [GREETING, with_dsn, *answers], [message])
    script.run()
    assert script.sent[1] == (
        b"MAIL FROM:<a@a.example> BODY=8BITMIME RET=HDRS ENVID=QQ314159\r\n"
        b"RCPT TO:<b@b.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx@b.example\r\nDATA\r\n"
    )
    without = b"250-mx\r\n250 PIPELINING\r\n"
    script = Script(session(), [GREETING, without, *answers], [message])
    script.run()
    assert script.sent[1] == b"MAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nDATA\r\n"


# --- STARTTLS ---------------------------------------------------------------------------------


def test_starttls_when_offered_then_ehlo_again() -> None:
    ehlo_tls = b"250-mx\r\n250-PIPELINING\r\n250 STARTTLS\r\n"
    script = Script(
        session(tls="may"),
        [GREETING, ehlo_tls, b"220 2.0.0 go ahead\r\n", EHLO_PIPELINING, b"221 bye\r\n"],
    )
    actions = script.run()
    assert script.sent == [EHLO, b"STARTTLS\r\n", EHLO, b"QUIT\r\n"]
    assert any(isinstance(a, StartTLS) for a in actions)
    assert script.session.client.tls_active


@pytest.mark.parametrize("policy", ["encrypt", "verify"])
def test_tls_required_but_not_offered(policy: str) -> None:
    script = Script(session(tls=policy), [GREETING, EHLO_PIPELINING, b"221 bye\r\n"], [MSG])
    actions = script.run()
    failed = actions[0]
    assert isinstance(failed, SessionFailed)
    assert (failed.reason, failed.permanent, failed.stage) == (
        "TLS required but not offered",
        False,
        "starttls",
    )
    assert script.sent == [EHLO, b"QUIT\r\n"]


def test_tls_may_without_starttls_goes_on_in_plaintext() -> None:
    script = Script(session(tls="may"), [GREETING, EHLO_PIPELINING, b"221 bye\r\n"])
    assert [type(a) for a in script.run()] == [Ready, Closed]


@pytest.mark.parametrize(("policy", "goes_on"), [("may", True), ("encrypt", False)])
def test_refused_starttls(policy: str, goes_on: bool) -> None:
    ehlo_tls = b"250-mx\r\n250-PIPELINING\r\n250 STARTTLS\r\n"
    script = Script(
        session(tls=policy),
        [GREETING, ehlo_tls, b"454 4.7.0 TLS not available\r\n", b"221 bye\r\n"],
    )
    actions = script.run()
    assert isinstance(actions[0], Ready) == goes_on
    assert isinstance(actions[0], SessionFailed) != goes_on


def test_implicit_tls_skips_starttls() -> None:
    ehlo_tls = b"250-mx\r\n250-PIPELINING\r\n250 STARTTLS\r\n"
    script = Script(session(tls="verify", tls_active=True), [GREETING, ehlo_tls, b"221 bye\r\n"])
    assert [type(a) for a in script.run()] == [Ready, Closed]
    assert script.sent == [EHLO, b"QUIT\r\n"]


def test_plaintext_injected_after_the_starttls_220() -> None:
    ehlo_tls = b"250-mx\r\n250-PIPELINING\r\n250 STARTTLS\r\n"
    script = Script(session(tls="may"), [GREETING, ehlo_tls, b"220 go\r\n250 injected\r\n"])
    actions = script.run()
    assert isinstance(actions[1], SessionFailed)
    assert actions[1].stage == "starttls"
    assert "plaintext" in actions[1].reason


# --- AUTH without a real server ------------------------------------------------------------


def test_plain_auth_is_refused_without_tls() -> None:
    ehlo = b"250-mx\r\n250-PIPELINING\r\n250 AUTH PLAIN LOGIN\r\n"
    script = Script(session(credentials=("user", "pw")), [GREETING, ehlo, b"221 bye\r\n"], [MSG])
    actions = script.run()
    failed = actions[0]
    assert isinstance(failed, SessionFailed)
    assert (failed.permanent, failed.stage) == (False, "auth")
    assert "clear" in failed.reason
    assert script.sent == [EHLO, b"QUIT\r\n"]


def test_no_common_mechanism() -> None:
    ehlo = b"250-mx\r\n250 AUTH CRAM-MD5 GSSAPI\r\n"
    script = Script(session(credentials=("user", "pw")), [GREETING, ehlo, b"221 bye\r\n"])
    failed = script.run()[0]
    assert isinstance(failed, SessionFailed)
    assert "no AUTH mechanism in common" in failed.reason


def test_auth_not_offered_goes_on_unauthenticated() -> None:
    script = Script(
        session(credentials=("user", "pw")), [GREETING, EHLO_PIPELINING, b"221 bye\r\n"]
    )
    assert [type(a) for a in script.run()] == [Ready, Closed]


def test_scram_without_a_nonce_falls_back_and_a_bad_challenge_cancels() -> None:
    ehlo = b"250-mx\r\n250 AUTH SCRAM-SHA-256 LOGIN\r\n"
    script = Script(
        session(credentials=("user", "pw"), tls_active=True),
        [GREETING, ehlo, b"334 not base64!\r\n", b"501 5.0.0 cancelled\r\n", b"221 bye\r\n"],
    )
    actions = script.run()
    assert script.sent[:3] == [EHLO, b"AUTH LOGIN\r\n", b"*\r\n"]
    failed = actions[0]
    assert isinstance(failed, SessionFailed)
    assert failed.stage == "auth"
    assert "LOGIN" in failed.reason


def test_long_initial_response_waits_for_the_empty_challenge() -> None:
    ehlo = b"250-mx\r\n250 AUTH PLAIN\r\n"
    password = "p" * 400
    script = Script(
        session(credentials=("user", password), tls_active=True),
        [GREETING, ehlo, b"334 \r\n", b"235 2.7.0 ok\r\n", b"221 bye\r\n"],
    )
    actions = script.run()
    assert script.sent[1] == b"AUTH PLAIN\r\n"
    assert len(script.sent[2]) > 500
    assert [type(a) for a in actions] == [Ready, Closed]


# --- Less travelled paths -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("replies", "stage", "permanent"),
    [
        ([b"450 4.7.1 slow down\r\n"], "ehlo", False),
        ([b"550 no EHLO\r\n", b"550 5.7.1 no HELO either\r\n"], "helo", True),
        ([b"550 no EHLO\r\n", b"450 not now\r\n"], "helo", False),
    ],
)
def test_refused_hello(replies: list[bytes], stage: str, permanent: bool) -> None:
    script = Script(session(), [GREETING, *replies, b"221 bye\r\n"], [MSG])
    failed = script.run()[0]
    assert isinstance(failed, SessionFailed)
    assert (failed.stage, failed.permanent) == (stage, permanent)
    assert script.sent[-1] == b"QUIT\r\n"


def test_refused_mail_without_pipelining() -> None:
    script = Script(
        session(),
        [GREETING, EHLO_PLAIN, b"550 5.7.1 sender refused\r\n", b"250 ok\r\n", b"221 bye\r\n"],
        [MSG],
    )
    actions = script.run()
    assert statuses(actions[1]) == [
        ("b@b.example", "bounced", 550),
        ("c@c.example", "bounced", 550),
    ]
    assert script.sent[1:] == [b"MAIL FROM:<a@a.example>\r\n", b"RSET\r\n", b"QUIT\r\n"]


def test_refused_rset_fails_the_session_after_the_results() -> None:
    script = Script(
        session(),
        [GREETING, EHLO_PLAIN, b"550 no\r\n", b"500 what\r\n", b"221 bye\r\n"],
        [MSG],
    )
    actions = script.run()
    assert [type(a) for a in actions] == [Ready, MessageDone, SessionFailed, Closed]
    failed = actions[2]
    assert isinstance(failed, SessionFailed)
    assert failed.stage == "rset"


def test_eof_instead_of_221_still_closes_quietly() -> None:
    script = Script(session(), [GREETING, EHLO_PLAIN])
    assert [type(a) for a in script.run()] == [Ready, Closed]


def test_handshake_failure_reported_by_the_adapter() -> None:
    s = session(tls="may")
    for data in (GREETING, b"250-mx\r\n250 STARTTLS\r\n", b"220 go\r\n"):
        while not isinstance(action := s.next_action(), NeedData):
            assert isinstance(action, Send)
        s.receive_data(data)
    assert isinstance(s.next_action(), StartTLS)
    assert isinstance(s.next_action(), StartTLS)  # asked again until tls_started()
    s.connection_lost("handshake failed: bad certificate")
    failed = s.next_action()
    assert isinstance(failed, SessionFailed)
    assert (failed.stage, failed.permanent) == ("starttls", False)
    assert isinstance(s.next_action(), Closed)


def test_unusable_credentials() -> None:
    ehlo = b"250-mx\r\n250 AUTH PLAIN\r\n"
    script = Script(
        session(credentials=("", "pw"), tls_active=True), [GREETING, ehlo, b"221 bye\r\n"]
    )
    failed = script.run()[0]
    assert isinstance(failed, SessionFailed)
    assert "unusable credentials" in failed.reason


def test_held_initial_response_needs_an_empty_challenge() -> None:
    ehlo = b"250-mx\r\n250 AUTH PLAIN\r\n"
    script = Script(
        session(credentials=("user", "p" * 400), tls_active=True),
        [GREETING, ehlo, b"334 Zm9v\r\n", b"501 cancelled\r\n", b"221 bye\r\n"],
    )
    failed = script.run()[0]
    assert script.sent[2] == b"*\r\n"
    assert isinstance(failed, SessionFailed)
    assert "empty challenge" in failed.reason


def test_scram_server_claiming_success_without_proof_is_not_believed() -> None:
    ehlo = b"250-mx\r\n250 AUTH SCRAM-SHA-256\r\n"
    script = Script(
        session(credentials=("user", "pw"), nonce="clientNONCE"),
        [GREETING, ehlo, b"235 2.7.0 trust me\r\n", b"221 bye\r\n"],
        [MSG],
    )
    actions = script.run()
    failed = actions[0]
    assert isinstance(failed, SessionFailed)
    assert failed.stage == "auth"
    assert not any(isinstance(a, MessageDone) for a in actions)


def test_the_session_exposes_the_current_timeout() -> None:
    s = session()
    assert s.timeout == GREETING_TIMEOUT
    script = Script(
        s, [GREETING, EHLO_PLAIN, b"250 ok\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"], [MSG]
    )
    seen = []
    while not seen or seen[-1] != ("NeedData", DATA_END_TIMEOUT):
        assert len(seen) < 40
        action = s.next_action()
        if isinstance(action, Send | NeedData):
            seen.append((type(action).__name__, s.timeout))
        if isinstance(action, NeedData) and script.chunks:
            s.receive_data(script.chunks.pop(0))
        elif isinstance(action, Ready):
            s.start_message(MSG)
    assert ("NeedData", DATA_INIT_TIMEOUT) in seen
    assert ("Send", DATA_BLOCK_TIMEOUT) in seen
    assert seen[-1] == ("NeedData", DATA_END_TIMEOUT)


def test_quit_right_after_message_done_waits_for_the_rset() -> None:
    s = session()
    chunks = [GREETING, EHLO_PLAIN, b"550 no\r\n", b"250 reset\r\n", b"221 bye\r\n"]
    sent = []
    kinds = []
    for _ in range(30):
        action = s.next_action()
        kinds.append(type(action))
        if isinstance(action, Send):
            sent.append(action.data)
        elif isinstance(action, NeedData):
            s.receive_data(chunks.pop(0) if chunks else b"")
        elif isinstance(action, Ready):
            s.start_message(MSG)
        elif isinstance(action, MessageDone):
            s.quit()  # like a runner with nothing more for this destination
        elif isinstance(action, Closed):
            break
    assert sent[-2:] == [b"RSET\r\n", b"QUIT\r\n"]
    assert kinds.count(Ready) == 1
    assert SessionFailed not in kinds


def test_quit_with_a_message_in_flight_closes_at_once() -> None:
    s = session()
    chunks = [GREETING, EHLO_PIPELINING]
    while not isinstance(action := s.next_action(), Ready):
        if isinstance(action, NeedData):
            s.receive_data(chunks.pop(0))
    s.start_message(MSG)
    s.quit()
    assert isinstance(s.next_action(), Closed)
