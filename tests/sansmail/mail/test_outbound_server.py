"""The outbound session against the real server core (`smtp.Connection(SERVER)`), with a
small application answering it: pipelining, STARTTLS, AUTH PLAIN and SCRAM through
`sansmail.sasl.server_mechanism`, partial and total RCPT failure, DSN parameters and
several messages on one connection."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansmail import SERVER
from sansmail.mail.outbound import (
    Action,
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
)
from sansmail.sasl import (
    Challenge,
    Failure,
    NeedCredentials,
    ServerMechanism,
    Success,
    VerifyPassword,
    derive_scram_credentials,
    server_mechanism,
)
from sansmail.smtp import (
    Auth,
    AuthCancel,
    AuthResponse,
    Connection,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    Hello,
    InvalidAuthResponse,
    InvalidCommand,
    InvalidMessage,
    Mail,
    MessageData,
    Quit,
    Rcpt,
    Reply,
    Reset,
)
from sansmail.smtp import StartTLS as StartTLSCommand

BASE = ("mx.example", "PIPELINING", "SIZE 100000", "8BITMIME", "ENHANCEDSTATUSCODES")
PASSWORD = "correct horse"


class Server:
    """The server core plus a permissive application; records what it was sent."""

    def __init__(
        self,
        ehlo: tuple[str, ...] = BASE,
        *,
        refuse: dict[str, Reply] | None = None,
        final: Reply | None = None,
        starttls: bool = False,
        auth: str = "",
    ) -> None:
        self.conn = Connection(SERVER)
        self.ehlo = ehlo + (("STARTTLS",) if starttls else ()) + ((f"AUTH {auth}",) if auth else ())
        self.refuse = refuse or {}
        self.final = final or Reply(code=250, lines="queued", enhanced="2.0.0")
        self.mechanism: ServerMechanism | None = None
        self.pending_success = False
        self.received: list[Event] = []
        self.messages: list[tuple[Mail, list[Rcpt], bytes]] = []
        self._envelope: tuple[Mail | None, list[Rcpt], bytearray] = (None, [], bytearray())
        self.out = bytearray(self.conn.send(Reply(code=220, lines="mx.example ESMTP")))

    def feed(self, data: bytes) -> None:
        self.conn.receive_data(data)
        while isinstance(event := self.conn.next_event(), Event):
            self.received.append(event)
            reply = self.answer(event)
            if reply is not None:
                self.out += self.conn.send(reply)
            if isinstance(event, ConnectionClosed):
                break

    def _sasl(self, step: object) -> Reply:
        mechanism = self.mechanism
        assert mechanism is not None
        if isinstance(step, VerifyPassword):
            step = mechanism.accept() if step.password == PASSWORD else mechanism.reject()
        elif isinstance(step, NeedCredentials):
            hash_name = "sha1" if mechanism.name == "SCRAM-SHA-1" else "sha256"
            step = mechanism.provide(derive_scram_credentials(PASSWORD, b"s" * 16, 4096, hash_name))
        if isinstance(step, Challenge):
            return Reply.challenge(step.data)
        if isinstance(step, Success):
            if step.data:
                self.pending_success = True  # RFC 4954 §4: the proof goes as a 334
                return Reply.challenge(step.data)
            return Reply(code=235, lines="ok", enhanced="2.7.0")
        assert isinstance(step, Failure)
        return Reply(code=535, lines="no", enhanced="5.7.8")

    def answer(self, event: Event) -> Reply | None:
        mail, rcpts, content = self._envelope
        if isinstance(event, InvalidCommand | InvalidMessage | InvalidAuthResponse):
            return event.reply_hint
        if isinstance(event, Hello):
            if not event.extended:
                return Reply(code=250, lines="mx.example")
            # RFC 3207 §4.2: STARTTLS is not offered again under TLS.
            tls = self.conn.tls_active
            return Reply(
                code=250, lines=tuple(x for x in self.ehlo if not (tls and x == "STARTTLS"))
            )
        if isinstance(event, StartTLSCommand):
            return Reply(code=220, lines="go ahead", enhanced="2.0.0")
        if isinstance(event, Auth):
            self.mechanism = server_mechanism(
                event.mechanism, nonce="serverNONCE-0123", fake_salt_key=b"k" * 32
            )
            return self._sasl(self.mechanism.receive(event.initial_response))
        if isinstance(event, AuthResponse):
            if self.pending_success:
                self.pending_success = False
                return Reply(code=235, lines="ok", enhanced="2.7.0")
            assert self.mechanism is not None
            return self._sasl(self.mechanism.receive(event.data))
        if isinstance(event, AuthCancel):
            return Reply(code=501, lines="cancelled", enhanced="5.0.0")
        if isinstance(event, Mail):
            self._envelope = (event, [], bytearray())
            return self.refuse.get("MAIL", Reply(code=250, lines="ok", enhanced="2.1.0"))
        if isinstance(event, Rcpt):
            refusal = self.refuse.get(str(event.forward_path))
            if refusal is None:
                rcpts.append(event)
            return refusal or Reply(code=250, lines="ok", enhanced="2.1.5")
        if isinstance(event, Data):
            return Reply(code=354, lines="go ahead")
        if isinstance(event, MessageData):
            content += event.data
            return None
        if isinstance(event, EndOfMessage):
            assert mail is not None
            if self.final.code // 100 == 2:
                self.messages.append((mail, list(rcpts), bytes(content)))
            return self.final
        if isinstance(event, Reset):
            return Reply(code=250, lines="reset", enhanced="2.0.0")
        if isinstance(event, Quit):
            return Reply(code=221, lines="bye", enhanced="2.0.0")
        if isinstance(event, ConnectionClosed):
            return None
        return Reply(code=250, lines="ok")


def converse(
    session: OutboundSession, server: Server, messages: list[OutboundMessage]
) -> tuple[list[Action], list[bytes]]:
    """Wire the session to the server until Closed: the session's non-I/O actions and
    every write it made."""
    pending = list(messages)
    actions: list[Action] = []
    writes: list[bytes] = []
    for _ in range(500):
        action = session.next_action()
        if isinstance(action, Send):
            writes.append(action.data)
            server.feed(action.data)
        elif isinstance(action, NeedData):
            assert server.out, "the session waits for a reply the server does not owe"
            session.receive_data(bytes(server.out))
            server.out.clear()
        elif isinstance(action, StartTLS):
            server.conn.start_tls()
            session.tls_started()
        else:
            actions.append(action)
            if isinstance(action, Ready):
                if pending:
                    session.start_message(pending.pop(0))
                else:
                    session.quit()
            elif isinstance(action, Closed):
                return actions, writes
    raise AssertionError("no end")


def make(**kwargs: object) -> OutboundSession:
    options: dict[str, object] = {"helo_name": "client.example", "tls": "may"}
    options.update(kwargs)
    return OutboundSession(**options)  # type: ignore[arg-type]


def recipients(*addresses: str) -> tuple[OutboundRecipient, ...]:
    return tuple(OutboundRecipient(address=a) for a in addresses)


def results(actions: list[Action]) -> list[list[tuple[str, str]]]:
    return [
        [(r.address, r.status) for r in a.results] for a in actions if isinstance(a, MessageDone)
    ]


MSG = OutboundMessage(
    sender="a@a.example", recipients=recipients("b@b.example", "c@c.example"), content=b"Hi.\r\n"
)


def test_delivery_through_the_real_server_core() -> None:
    server = Server()
    actions, writes = converse(make(), server, [MSG])
    assert results(actions) == [[("b@b.example", "sent"), ("c@c.example", "sent")]]
    [(mail, rcpts, content)] = server.messages
    assert mail.size == 5
    assert [str(r.forward_path) for r in rcpts] == ["b@b.example", "c@c.example"]
    assert content == b"Hi.\r\n"
    assert writes[1].count(b"\r\n") == 4  # MAIL, 2 RCPT, DATA in one write


def test_partial_and_total_rcpt_failure_and_two_messages() -> None:
    refuse = {
        "b@b.example": Reply(code=550, lines="no such user", enhanced="5.1.1"),
        "d@d.example": Reply(code=450, lines="greylisted", enhanced="4.7.1"),
    }
    server = Server(refuse=refuse)
    second = OutboundMessage(
        sender="", recipients=recipients("b@b.example", "d@d.example"), content=b"x"
    )
    third = OutboundMessage(
        sender="a@a.example", recipients=recipients("e@e.example"), content=b"y\r\n"
    )
    actions, writes = converse(make(), server, [MSG, second, third])
    assert results(actions) == [
        [("b@b.example", "bounced"), ("c@c.example", "sent")],
        [("b@b.example", "bounced"), ("d@d.example", "deferred")],
        [("e@e.example", "sent")],
    ]
    done = [a for a in actions if isinstance(a, MessageDone)]
    assert done[0].results[0].reply == Reply(code=550, lines="no such user", enhanced="5.1.1")
    # The second transaction's pipelined DATA got the server core's 554; then RSET.
    assert b"RSET\r\n" in writes
    assert [m[2] for m in server.messages] == [b"Hi.\r\n", b"y\r\n"]


@pytest.mark.parametrize(
    ("final", "status"),
    [
        (Reply(code=451, lines="later", enhanced="4.3.0"), "deferred"),
        (Reply(code=554, lines="spam", enhanced="5.7.1"), "bounced"),
    ],
)
def test_refusal_at_the_end_of_data_from_the_server_core(final: Reply, status: str) -> None:
    actions, _ = converse(make(), Server(final=final), [MSG])
    assert results(actions) == [[("b@b.example", status), ("c@c.example", status)]]
    done = next(a for a in actions if isinstance(a, MessageDone))
    assert done.results[0].reply == final


def test_no_pipelining_against_the_server_core() -> None:
    server = Server(ehlo=("mx.example", "8BITMIME"))
    actions, writes = converse(make(), server, [MSG])
    assert results(actions) == [[("b@b.example", "sent"), ("c@c.example", "sent")]]
    assert all(w.count(b"\r\n") == 1 for w in writes[:-2])  # one command per write


def test_starttls_then_auth_plain() -> None:
    server = Server(starttls=True, auth="PLAIN LOGIN")
    session = make(credentials=("user", PASSWORD))
    actions, _ = converse(session, server, [MSG])
    assert results(actions)[0][0][1] == "sent"
    assert server.conn.tls_active
    assert server.conn.authenticated
    assert session.client.tls_active
    assert session.client.authenticated
    auth = next(e for e in server.received if isinstance(e, Auth))
    assert auth.mechanism == "PLAIN"
    assert auth.initial_response == b"\0user\0" + PASSWORD.encode()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_scram_is_preferred_and_works_without_tls(mechanism: str) -> None:
    server = Server(auth=f"PLAIN LOGIN {mechanism}")
    session = make(tls="none", credentials=("user", PASSWORD), nonce="clientNONCE-abc")
    actions, _ = converse(session, server, [MSG])
    assert results(actions)[0][0][1] == "sent"
    assert server.conn.authenticated
    assert next(e for e in server.received if isinstance(e, Auth)).mechanism == mechanism


def test_wrong_password_defers() -> None:
    server = Server(starttls=True, auth="SCRAM-SHA-256 PLAIN")
    session = make(credentials=("user", "wrong"), nonce="clientNONCE-abc")
    actions, writes = converse(session, server, [MSG])
    failed = actions[0]
    assert isinstance(failed, SessionFailed)
    assert (failed.permanent, failed.stage) == (False, "auth")
    assert failed.reply is not None
    assert failed.reply.code == 535
    assert writes[-1] == b"QUIT\r\n"
    assert server.messages == []


def test_encrypt_policy_against_a_server_without_starttls() -> None:
    actions, writes = converse(make(tls="encrypt"), Server(), [MSG])
    failed = actions[0]
    assert isinstance(failed, SessionFailed)
    assert failed.reason == "TLS required but not offered"
    assert writes[-1] == b"QUIT\r\n"


def test_dsn_parameters_reach_a_dsn_server() -> None:
    message = OutboundMessage(
        sender="a@a.example",
        recipients=(
            OutboundRecipient(
                address="b@b.example", notify=("FAILURE", "DELAY"), orcpt="rfc822;b@b.example"
            ),
        ),
        content=b"x\r\n",
        ret="FULL",
        envid="abc+2B",
    )
    server = Server(ehlo=(*BASE, "DSN"))
    converse(make(), server, [message])
    [(mail, [rcpt], _)] = server.messages
    assert (mail.parameters["RET"], mail.parameters["ENVID"]) == ("FULL", "abc+2B")
    assert dict(rcpt.parameters) == {"NOTIFY": "FAILURE,DELAY", "ORCPT": "rfc822;b@b.example"}
    server = Server()
    actions, _ = converse(make(), server, [message])
    assert results(actions) == [[("b@b.example", "sent")]]
    [(mail, [rcpt], _)] = server.messages
    assert "RET" not in mail.parameters
    assert dict(rcpt.parameters) == {}


def test_smtputf8_through_the_server_core() -> None:
    message = OutboundMessage(
        sender="jörg@a.example", recipients=recipients("zoë@b.example"), content=b"x\r\n"
    )
    server = Server(ehlo=(*BASE, "SMTPUTF8"))
    actions, _ = converse(make(), server, [message])
    assert results(actions) == [[("zoë@b.example", "sent")]]
    assert server.messages[0][0].smtputf8
    actions, _ = converse(make(), Server(), [message])
    done = next(a for a in actions if isinstance(a, MessageDone))
    assert done.results[0].reply.enhanced == "5.6.7"


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"")), max_size=20),
    pipelining=st.booleans(),
)
def test_any_content_arrives_intact(lines: list[bytes], pipelining: bool) -> None:
    content = b"\r\n".join(lines)
    message = OutboundMessage(
        sender="a@a.example", recipients=recipients("b@b.example"), content=content
    )
    ehlo = BASE if pipelining else ("mx.example", "SIZE 100000")
    server = Server(ehlo=ehlo)
    actions, _ = converse(make(), server, [message])
    assert results(actions) == [[("b@b.example", "sent")]]
    expected = content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if expected and not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    assert server.messages[0][2] == expected
