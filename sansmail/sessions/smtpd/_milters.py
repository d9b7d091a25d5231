"""`MilterCheck`: one configured milter (``[milter] milters``) as an SMTP check, the way
Postfix's smtpd_milters run: the session's steps go to the milter before each stage, and
its answers become the stage's verdict.

Theory of operation
-------------------
A check object is shared by every session of a listener, so all per-session state (the
`sansmail.milter.Connection` and what the milter has said) lives in the session's
`findings`, under ``"milter " + name``. Before each stage, `inquiries` hands the adapter
one `MilterConversation`: the commands of that stage, produced one at a time as the
milter's replies come in (its negotiation decides which macros go with the first step,
its SKIP ends the body). The adapter keeps one socket per milter for the session, writes
`data_to_send()`, feeds what comes back to `receive_data` until `done`, and reports a
dead or silent milter with `failed`. Then `check` turns what was stored into a `Verdict`.

What goes when (Postfix's milter8.c order):

- CONNECT: option negotiation, then the client's connection (`Connect` with the
  connect macros ``j {daemon_name} v {client_addr} {client_name} {client_port} _``, and
  ``{if_addr}`` from a session that has a `server_ip`).
- HELO: ``{tls_version} {cipher}`` and the HELO/EHLO argument.
- MAIL: ``{auth_authen} {mail_addr}`` (and ``{auth_type}`` from a session that has an
  `auth_mechanism`; ``i`` is not known yet) and the reverse path with its ESMTP
  parameters; an ABORT first when the milter is still in an earlier transaction (RSET,
  a refused MAIL or RCPT, a new EHLO: the abort travels lazily with the next step, or
  with the QUIT at the end, as `close_data`).
- RCPT: ``i {rcpt_addr} {rcpt_host} {rcpt_mailer}`` and one forward path.
- END_OF_DATA: DATA, each header field, end of header, the body in chunks of at most
  65535 octets, end of message (each with ``i``), all from the held message
  (`wants_message`): END_OF_HEADERS comes inside the content, where no inquiry can run,
  so the whole message goes at its end, as Postfix sends it from the queue file.

What comes back (Postfix's words): REJECT is ``550 5.7.1 Command rejected``, TEMPFAIL
``451 4.7.1 Service unavailable - try again later``, REPLYCODE the milter's own reply. At
RCPT they refuse that recipient only; at CONNECT and HELO they refuse the whole connection
and stay the answer to every later stage (a greeting refusal becomes 421 or 554, the
codes a greeting may carry; the session then ends). ACCEPT ends this milter's part in the
message (at CONNECT/HELO: in the connection); DISCARD (before or at end of message) drops
the message after a 250. At end of message the header changes, the new body and the
quarantine reason go into the verdict, applied by the session.

Recipient and sender changes (SMFIR_ADDRCPT, ADDRCPT_PAR, DELRCPT, CHGFROM) go into the
verdict's envelope changes; the session makes the envelope again from them before the
copies start (ESMTP parameters of an added recipient or a new sender are not kept).

A milter that cannot be reached, times out or breaks the protocol gets ``[milter]
default_action`` for the rest of the session: "tempfail" (451 4.7.1, Postfix's reply),
"reject" (550 5.5.0 Service unavailable, Postfix's reply) or "accept" (the milter is
skipped). The verdict's `source` carries the reason, so the session's refusal line says
why.
"""

from __future__ import annotations

import ipaddress
import pathlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

import attrs

from sansmail import NEED_DATA, PAUSED, RemoteProtocolError, smtp
from sansmail.config import Config, HostPort
from sansmail.mail.headeredit import HeaderEdit
from sansmail.milter import (
    DEFAULT_PROTOCOL,
    MAX_CHUNK,
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
    Outcome,
    Phase,
    Quit,
    Rcpt,
    Reject,
    ReplyCode,
    Scope,
    Skip,
    Tempfail,
    fold,
)
from sansmail.milter import Stage as MilterStage
from sansmail.milter import Verdict as MilterVerdict
from sansmail.sessions.smtpd._checks import (
    Inquiry,
    SessionView,
    Stage,
    Verdict,
)
from sansmail.smtp import Reply

__all__ = [
    "COMMAND_TIMEOUT",
    "CONNECT_TIMEOUT",
    "CONTENT_TIMEOUT",
    "OFFERED_ACTIONS",
    "MilterCheck",
    "MilterConversation",
    "milter_checks",
]

#: Postfix's milter_connect_timeout, milter_command_timeout and milter_content_timeout:
#: to connect, to answer one command, and to answer one step of the message content.
CONNECT_TIMEOUT = 30.0
COMMAND_TIMEOUT = 30.0
CONTENT_TIMEOUT = 300.0

#: The modifications a `Verdict` can carry (see the module docstring for the others).
OFFERED_ACTIONS = (
    Action.ADDHDRS
    | Action.CHGHDRS
    | Action.CHGBODY
    | Action.QUARANTINE
    | Action.SETSYMLIST
    | Action.ADDRCPT
    | Action.ADDRCPT_PAR
    | Action.DELRCPT
    | Action.CHGFROM
)

REJECTED = Reply(code=550, lines="Command rejected", enhanced="5.7.1")
TEMPFAILED = Reply(code=451, lines="Service unavailable - try again later", enhanced="4.7.1")
#: Postfix's replies for a milter that is down (milter8.c, milter8_comm_error).
DOWN_TEMPFAIL = TEMPFAILED
DOWN_REJECT = Reply(code=550, lines="Service unavailable", enhanced="5.5.0")

_IN_MESSAGE = frozenset(
    {
        MilterStage.ENVELOPE,
        MilterStage.RECIPIENTS,
        MilterStage.DATA,
        MilterStage.HEADERS,
        MilterStage.BODY,
    }
)
_ENVELOPE = frozenset({MilterStage.ENVELOPE, MilterStage.RECIPIENTS})
_ENHANCED = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: +|$)")
_FIELD_NAME = re.compile(rb"[!-9;-~]+")


def milter_checks(config: Config) -> list[MilterCheck]:
    """One check per ``[milter] milters`` entry, in the configured order."""
    milter = config.milter
    return [
        MilterCheck(
            address=address,
            default_action=milter.default_action,
            hostname=config.hostname,
            local_domains=frozenset(config.domains),
        )
        for address in milter.milters
    ]


def milter_name(address: HostPort | pathlib.Path) -> str:
    """The address as Postfix's smtpd_milters spells it: inet:host:port, unix:/path."""
    if isinstance(address, tuple):
        host, port = address
        return f"inet:[{host}]:{port}" if ":" in host else f"inet:{host}:{port}"
    return f"unix:{address}"


@attrs.define
class _State:
    """What one session knows of one milter (kept in the session's findings)."""

    conn: Connection
    #: Why the milter is out of this session (down, timed out, broke the protocol).
    failed: str | None = None
    #: A refusal of the whole connection (reject/tempfail/replycode at CONNECT or HELO).
    refusal: Reply | None = None
    #: The answer for `stage`, the stage whose conversation ran last.
    stage: Stage | None = None
    answer: Verdict | None = None
    #: The milter discarded the current message before its end.
    discard: bool = False


@attrs.frozen(kw_only=True)
class MilterCheck:
    """One milter, asked at every stage (a `Check` that is `Inquiring`).

    Args:
        address: ("host", port) for inet:, a Path for unix:.
        default_action: "tempfail", "accept" or "reject" when the milter is down.
        hostname: ours, for the j and {daemon_name} macros.
        local_domains: ours, for {rcpt_mailer} ("local", else "smtp").
        connect_timeout, command_timeout, content_timeout: as Postfix's milter_*_timeout.
    """

    address: HostPort | pathlib.Path
    default_action: str = attrs.field(
        default="tempfail", validator=attrs.validators.in_(("tempfail", "accept", "reject"))
    )
    hostname: str = "localhost"
    local_domains: frozenset[str] = frozenset()
    connect_timeout: float = CONNECT_TIMEOUT
    command_timeout: float = COMMAND_TIMEOUT
    content_timeout: float = CONTENT_TIMEOUT

    @property
    def name(self) -> str:
        return milter_name(self.address)

    @property
    def source(self) -> str:
        return f"milter {self.name}"

    @property
    def key(self) -> str:
        """This milter's entry in a session's findings."""
        return self.source

    # -- Inquiring ----------------------------------------------------------------------

    def inquiries(
        self, stage: Stage, session: SessionView, command: smtp.Event | None
    ) -> Sequence[Inquiry]:
        state = self._state(session)
        state.stage, state.answer = stage, None
        conn = state.conn
        if (
            state.failed is not None
            or state.refusal is not None
            or conn.settled is Scope.CONNECTION
            or conn.phase is not Phase.IDLE
        ):
            return []
        steps: Iterator[Command]
        timeout = self.command_timeout
        if stage is Stage.CONNECT:
            steps = self._connected(session, conn)
        elif stage is Stage.HELO and isinstance(command, smtp.Hello):
            steps = self._helo(session, conn, command)
        elif stage is Stage.MAIL and isinstance(command, smtp.Mail):
            state.discard = False
            steps = self._mail(session, conn, command)
        elif stage is Stage.RCPT and isinstance(command, smtp.Rcpt):
            if conn.settled is Scope.MESSAGE or conn.stage not in _ENVELOPE:
                return []
            steps = self._rcpt(session, conn, command)
        elif stage is Stage.END_OF_DATA:
            tx = session.transaction
            if (
                tx is None
                or state.discard
                or conn.settled is Scope.MESSAGE
                or conn.stage is not MilterStage.RECIPIENTS
            ):
                return []
            message = bytes(tx.message) if tx.message is not None else b""
            conversation = MilterConversation(self, state, stage, timeout=self.content_timeout)
            conversation.steps = self._content(conversation, conn, tx.queue_id, message)
            return [conversation]
        else:
            return []
        conversation = MilterConversation(self, state, stage, timeout=timeout)
        conversation.steps = steps
        return [conversation]

    def wants_message(self, session: SessionView) -> bool:
        """Hold the message when its content goes to the milter at END_OF_DATA, or when
        the milter discarded it before (a discard verdict needs the message held)."""
        state = session.findings.get(self.key)
        if not isinstance(state, _State):
            return True
        if state.discard:
            return True
        conn = state.conn
        return (
            state.failed is None
            and state.refusal is None
            and conn.settled is None
            and conn.phase is Phase.IDLE
            and (conn.negotiated is None or conn.wants(Header) or conn.wants(Body))
        )

    # -- Check --------------------------------------------------------------------------

    def check(self, stage: Stage, session: SessionView) -> Verdict | None:
        state = session.findings.get(self.key)
        if not isinstance(state, _State):
            return None
        if state.failed is not None:
            reply = self._default_reply()
            if reply is None:
                return None
            return Verdict(source=f"{self.source} ({state.failed})", reply=_at_stage(stage, reply))
        if state.refusal is not None:
            return Verdict(source=self.source, reply=_at_stage(stage, state.refusal))
        if stage is Stage.END_OF_DATA and state.discard:
            state.discard = False
            return Verdict(source=self.source, discard=True)
        if state.stage is not stage or state.answer is None:
            return None
        answer, state.answer = state.answer, None
        if answer.reply is not None:
            answer = attrs.evolve(answer, reply=_at_stage(stage, answer.reply))
        return answer

    # -- what the adapter sends at the end ----------------------------------------------

    def close_data(self, session: SessionView) -> bytes:
        """What ends this milter's session cleanly (an ABORT of an open transaction,
        then QUIT); b"" when there is nothing to say (never connected, broken, or a
        reply still owed). `MilterConversation.close_data` is the same."""
        state = session.findings.get(self.key)
        return _closing(state.conn) if isinstance(state, _State) else b""

    # -- the steps of each stage ----------------------------------------------------------

    def _state(self, session: SessionView) -> _State:
        state = session.findings.get(self.key)
        if not isinstance(state, _State):
            state = _State(conn=Connection())
            session.findings[self.key] = state
        return state

    def _connected(self, session: SessionView, conn: Connection) -> Iterator[Command]:
        """Negotiation and the client's connection, when not yet sent."""
        if conn.stage is MilterStage.OPTIONS:
            yield Negotiate(actions=OFFERED_ACTIONS, protocol=DEFAULT_PROTOCOL)
        if conn.stage is MilterStage.CONNECT:
            ip = session.client_ip
            name = session.client_name
            port = _client_port(session)
            values = {
                "j": self.hostname,
                "{daemon_name}": self.hostname,
                "v": "sansmail",
                "{client_addr}": ip,
                "{client_name}": name or "unknown",
                "_": f"{name or 'unknown'} [{ip}]",
            }
            if port:
                values["{client_port}"] = str(port)
            server_ip = _optional_text(session, "server_ip")
            if server_ip:
                values["{if_addr}"] = server_ip
            yield from _macros(conn, MacroStage.CONNECT, values)
            yield _connect_command(ip, name, port)

    def _helo(
        self, session: SessionView, conn: Connection, command: smtp.Hello
    ) -> Iterator[Command]:
        yield from self._connected(session, conn)
        if conn.stage in _IN_MESSAGE:
            yield Abort()
        values: dict[str, str] = {}
        if session.tls:
            version, _, cipher = session.tls.partition(" ")
            values["{tls_version}"] = version
            if cipher:
                values["{cipher}"] = cipher
        yield from _macros(conn, MacroStage.HELO, values)
        yield Helo(name=_clean(command.domain))

    def _mail(
        self, session: SessionView, conn: Connection, command: smtp.Mail
    ) -> Iterator[Command]:
        yield from self._connected(session, conn)
        if conn.stage in _IN_MESSAGE:
            yield Abort()
        sender = command.reverse_path
        values = {"{mail_addr}": _clean(str(sender)) if sender is not None else ""}
        if session.user is not None:
            values["{auth_authen}"] = _clean(session.user)
            mechanism = _optional_text(session, "auth_mechanism")
            if mechanism:
                values["{auth_type}"] = mechanism
        yield from _macros(conn, MacroStage.ENVFROM, values)
        yield Mail(
            sender=_clean(f"<{sender if sender is not None else ''}>"),
            parameters=_parameters(command.parameters),
        )

    def _rcpt(
        self, session: SessionView, conn: Connection, command: smtp.Rcpt
    ) -> Iterator[Command]:
        rcpt = command.forward_path
        values = {
            "{rcpt_addr}": _clean(str(rcpt)),
            "{rcpt_host}": rcpt.domain,
            "{rcpt_mailer}": "local" if rcpt.domain in self.local_domains else "smtp",
        }
        tx = session.transaction
        if tx is not None:
            values["i"] = tx.queue_id
        yield from _macros(conn, MacroStage.ENVRCPT, values)
        yield Rcpt(recipient=_clean(f"<{rcpt}>"), parameters=_parameters(command.parameters))

    def _content(
        self, conversation: MilterConversation, conn: Connection, queue_id: str, message: bytes
    ) -> Iterator[Command]:
        """DATA, the header fields, end of header, the body chunks, end of message, each
        made only when the one before is answered: a verdict that settles the message
        ends the steps, SKIP ends the body."""
        queue = {"i": queue_id}
        yield from _macros(conn, MacroStage.DATA, queue)
        yield Data()
        fields, body = _split(message)
        if conn.wants(Header):
            for name, value in fields:
                yield Header(name=name, value=value)
        yield from _macros(conn, MacroStage.EOH, queue)
        yield EndOfHeaders()
        if conn.wants(Body):
            view = memoryview(message)
            for start in range(body, len(message), MAX_CHUNK):
                if conversation.skipped:
                    break
                yield Body(data=bytes(view[start : start + MAX_CHUNK]))
        yield from _macros(conn, MacroStage.EOM, queue)
        yield EndOfMessage()

    def _default_reply(self) -> Reply | None:
        if self.default_action == "accept":
            return None
        return DOWN_REJECT if self.default_action == "reject" else DOWN_TEMPFAIL


class MilterConversation:
    """The exchange with one milter for one stage (the `Conversation` the adapter
    carries; see the module docstring). After `data_to_send()` either `done` is True or
    the milter owes a reply: read, then `receive_data`."""

    def __init__(
        self,
        check: MilterCheck,
        state: _State,
        stage: Stage,
        *,
        timeout: float,
    ) -> None:
        self.source = check.source
        self.address: object = check.address
        self.timeout = timeout
        self.connect_timeout = check.connect_timeout
        self._state = state
        self._stage = stage
        #: The commands of this stage, made one at a time (set by the check).
        self.steps: Iterator[Command] = iter(())
        self._done = False
        self._stopped = False
        #: The milter answered a body chunk with SKIP: no more chunks.
        self.skipped = False
        # End of message: the modifications and PROGRESS so far, then the verdict.
        self._eom: list[Event] = []

    @property
    def done(self) -> bool:
        return self._done

    def data_to_send(self) -> bytes:
        conn = self._state.conn
        out: list[bytes] = []
        while not self._done and conn.awaiting is None:
            command = None if self._stopped else next(self.steps, None)
            if command is None:
                self._done = True
                break
            out.append(conn.send(command))
        return b"".join(out)

    def receive_data(self, data: bytes) -> None:
        if self._done:
            return
        conn = self._state.conn
        conn.receive_data(data)
        try:
            while True:
                answering = conn.awaiting
                event = conn.next_event()
                if event is NEED_DATA or event is PAUSED:
                    return
                if isinstance(event, ConnectionClosed):
                    self.failed("the milter closed the connection")
                    return
                assert isinstance(event, Event)
                self._take(answering, event)
        except RemoteProtocolError as exc:
            self.failed(f"protocol error: {exc}")

    def failed(self, reason: str) -> None:
        state = self._state
        if state.failed is None:
            state.failed = reason
        state.answer = None
        if state.conn.phase is not Phase.ERROR:
            state.conn.send_failed()
        self._done = True

    def close_data(self) -> bytes:
        """What ends the milter session cleanly: see `MilterCheck.close_data`."""
        return _closing(self._state.conn)

    # -- the replies ----------------------------------------------------------------------

    def _take(self, answering: Command | None, event: Event) -> None:
        if isinstance(answering, EndOfMessage):
            self._eom.append(event)
            if isinstance(event, MilterVerdict):
                self._conclude(fold(self._eom))
            return
        if not isinstance(event, MilterVerdict) or isinstance(event, Continue):
            return  # the negotiation's outcome, or go on
        if isinstance(event, Skip):
            self.skipped = True
            return
        self._stopped = True
        state = self._state
        if isinstance(event, Accept):
            return  # the connection (the core knows which) or the message goes on, unasked
        if isinstance(event, Discard):
            if self._stage is Stage.END_OF_DATA:
                state.answer = Verdict(source=self.source, discard=True)
            else:
                state.discard = True  # dropped at its end, after a 250
            return
        reply = _reply(event)
        if isinstance(answering, Connect | Helo):
            state.refusal = reply
        else:
            state.answer = Verdict(source=self.source, reply=reply)

    def _conclude(self, outcome: Outcome) -> None:
        self._stopped = True
        verdict = outcome.verdict
        state = self._state
        if isinstance(verdict, Discard):
            state.answer = Verdict(source=self.source, discard=True)
        elif not outcome.delivers:
            state.answer = Verdict(source=self.source, reply=_reply(verdict))
        elif outcome.modifications or outcome.body is not None or outcome.quarantine:
            mods = outcome.modifications
            sender = None
            for m in mods:
                if isinstance(m, ChangeSender):
                    sender = m.sender  # the last one counts
            state.answer = Verdict(
                source=self.source,
                header_edits=[_edit(m) for m in mods if not isinstance(m, _ENVELOPE_CHANGES)],
                body=outcome.body,
                quarantine=outcome.quarantine,
                add_recipients=[m.recipient for m in mods if isinstance(m, AddRecipient)],
                delete_recipients=[m.recipient for m in mods if isinstance(m, DeleteRecipient)],
                new_sender=sender,
            )


# -- helpers --------------------------------------------------------------------------------


def _closing(conn: Connection) -> bytes:
    if conn.phase is not Phase.IDLE or conn.stage is MilterStage.OPTIONS:
        return b""
    out = b""
    if conn.stage in _IN_MESSAGE:
        out += conn.send(Abort())
    return out + conn.send(Quit())


def _macros(conn: Connection, stage: MacroStage, values: dict[str, str]) -> Iterator[Command]:
    """The macros for `stage`: those the milter asked for, if it gave a list."""
    negotiated = conn.negotiated
    wanted = negotiated.macros.get(stage) if negotiated is not None else None
    if wanted is not None:
        picked = []
        for name in wanted:
            # A list may name "{client_addr}" or "client_addr" (Sendmail accepts both).
            value = values.get(name, values.get("{" + name.strip("{}") + "}"))
            if value is not None:
                picked.append((name, value))
    else:
        picked = list(values.items())
    if picked:
        yield Macros(stage=stage, values=[(n, _clean(v)) for n, v in picked])


def _connect_command(ip: str, name: str | None, port: int) -> Connect:
    try:
        version = ipaddress.ip_address(ip).version
    except ValueError:
        return Connect(hostname=_clean(name or "unknown"), family=Family.UNKNOWN)
    # Sendmail's convention, which milters expect: no verified name, the address in [].
    return Connect(
        hostname=_clean(name or f"[{ip}]"),
        family=Family.INET6 if version == 6 else Family.INET,
        port=port,
        address=ip,
    )


def _client_port(session: SessionView) -> int:
    # Not part of SessionView (yet): a session that knows it says so.
    port: Any = getattr(session, "client_port", 0)
    return port if isinstance(port, int) and 0 <= port <= 0xFFFF else 0


def _optional_text(session: SessionView, name: str) -> str | None:
    """What a session may know beyond SessionView (our address, the SASL mechanism)."""
    value: Any = getattr(session, name, None)
    return value if isinstance(value, str) else None


def _parameters(parameters: Any) -> tuple[str, ...]:
    return tuple(
        _clean(key if value is None else f"{key}={value}") for key, value in parameters.items()
    )


def _clean(text: str) -> str:
    # Milter strings end at NUL; no SMTP argument may hold one, but do not trust that.
    return text.replace("\0", " ")


def _split(message: bytes) -> tuple[list[tuple[str, str]], int]:
    """The header fields of a message in wire form as Postfix hands them to a milter (the
    name; the value without the one space after the colon, folds kept as LF, Sendmail's
    form), and where the body starts: after the empty line, or at the first line that is
    neither a field nor a continuation (Postfix reads the rest as body)."""
    fields: list[tuple[str, str]] = []
    lines: list[bytes] = []
    pos = 0
    while pos < len(message):
        eol = message.find(b"\r\n", pos)
        end = len(message) if eol < 0 else eol + 2
        line = message[pos : end if eol < 0 else eol]
        if line[:1] in (b" ", b"\t") and lines:
            lines.append(line)
            pos = end
            continue
        if lines:
            fields.append(_field(lines))
            lines = []
        if not line:
            return fields, end
        name, colon, _rest = line.partition(b":")
        if not colon or not _FIELD_NAME.fullmatch(name.rstrip(b" \t")):
            return fields, pos
        lines = [line]
        pos = end
    if lines:
        fields.append(_field(lines))
    return fields, pos


def _field(lines: list[bytes]) -> tuple[str, str]:
    name, _, first = lines[0].partition(b":")
    if first.startswith(b" "):
        first = first[1:]
    value = b"\n".join([first, *lines[1:]]).replace(b"\0", b" ").replace(b"\r", b" ")
    return (
        name.rstrip(b" \t").decode("ascii"),
        value.decode("utf-8", "surrogateescape"),
    )


def _reply(verdict: MilterVerdict) -> Reply:
    if isinstance(verdict, Reject):
        return REJECTED
    if isinstance(verdict, Tempfail):
        return TEMPFAILED
    assert isinstance(verdict, ReplyCode), verdict
    return _reply_code(verdict)


def _reply_code(verdict: ReplyCode) -> Reply:
    """The milter's SMTP reply, checked as Postfix does: the enhanced status code must
    be of the reply's class (else the class is set right), "%%" stands for "%" (the text
    was a Sendmail format string), and a 421, which would promise a disconnect the
    session does not make, is sent as 451."""
    code = 451 if verdict.code == 421 else verdict.code
    first = _unescape(verdict.lines[0])
    found = _ENHANCED.match(first)
    enhanced = None
    lines: list[str] = []
    if found:
        enhanced = f"{code // 100}.{found.group(2)}.{found.group(3)}"
    for line in verdict.lines:
        text = _unescape(line)
        if enhanced is not None:
            match = _ENHANCED.match(text)
            if match:
                text = text[match.end() :]
        lines.append(text)
    if enhanced is None:
        enhanced = f"{code // 100}.7.1"
    return Reply(code=code, lines=tuple(lines), enhanced=enhanced)


def _unescape(text: str) -> str:
    return re.sub(r"%(.?)", lambda m: m.group(1), text)


def _at_stage(stage: Stage, reply: Reply) -> Reply:
    """A refusal as `stage` may carry it: the greeting only as 421 (closing) or 554
    (RFC 5321 §3.1, §4.2.5), after which the session ends."""
    if stage is not Stage.CONNECT or reply.code in (421, 554):
        return reply
    if reply.code < 500:
        return Reply(code=421, lines=reply.lines, enhanced=reply.enhanced)
    return Reply(code=554, lines=reply.lines, enhanced=reply.enhanced)


_ENVELOPE_CHANGES = (AddRecipient, DeleteRecipient, ChangeSender)


def _edit(modification: Modification) -> HeaderEdit:
    if isinstance(modification, AddHeader):
        return HeaderEdit("add", modification.name, modification.value)
    if isinstance(modification, InsertHeader):
        return HeaderEdit("insert", modification.name, modification.value, modification.index)
    if isinstance(modification, ChangeHeader):
        # Sendmail (and Postfix) read index 0 as the first field.
        index = max(1, modification.index)
        return HeaderEdit("change", modification.name, modification.value, index)
    # Envelope changes are taken apart before; the core refuses what was not offered.
    raise AssertionError(f"{modification!r} is not a header change")
