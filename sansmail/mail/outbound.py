"""One outbound SMTP session, from the greeting to QUIT, as a sans-I/O state machine.

The queue runner connects, then moves bytes and obeys: it feeds what the server sends into
`receive_data` and asks `next_action` what to do next. The session drives a
`smtp.ClientConnection` through everything a delivery attempt needs and never waits,
reads a clock or draws a random number (SCRAM's nonce comes in as an argument).

Theory of operation
-------------------
Actions. `next_action()` returns one of:

* `Send(data, timeout)`: write these bytes (within `timeout` seconds);
* `NeedData(timeout)`: read from the server and call `receive_data` (EOF: ``b""``); the
  timeout is RFC 5321 §4.5.3.2's for the reply awaited next;
* `StartTLS(timeout)`: do the TLS handshake on the connection, then call `tls_started()`;
* `Ready()`: the session can take a message: call `start_message(message)` or `quit()`;
* `MessageDone(results)`: the message given to `start_message` is settled, one
  `RecipientResult` per recipient, in order ("sent", "deferred" or "bounced", with the reply
  that decided it); the session goes on to `Ready` (after an RSET when the transaction did
  not end cleanly);
* `SessionFailed(reply, reason, permanent, stage)`: the session cannot go on. A message
  in flight has no results: the runner defers all of its recipients (or, when `permanent`,
  may bounce them or try the next MX, as its policy says). When the server can still hear
  it, the session says QUIT before closing;
* `Closed()`: the end; close the connection. Always the last action.

If a send or a read fails, the runner calls `connection_lost(reason)`; if a timeout
fires, `timed_out()`: the session reports `SessionFailed` (if it had not) and `Closed`.

Timeouts. Every `Send`, `NeedData` and `StartTLS` carries the timeout of that one step,
from the session's `ClientTimeouts` (RFC 5321 §4.5.3.2's minimums, which are Postfix's
defaults: greeting and commands 5 minutes, DATA 2, each content block 3, the reply to
the final "." 10; the TCP connect, Postfix's 30 s, is the adapter's alone). A reply's
timeout covers all the reads it takes (`replies` tells the adapter when one is
complete), so a server that dribbles a reply cannot stretch it. A server that stops
answering is given up on after one of them; one that answers slowly but within each
is waited for.

Where it broke. A failure's `stage` (and `stage` at any moment) says what the session
was doing, and the reason of a lost connection or a timeout says it in Postfix's words
(`describe_stage`): "lost connection while sending message body", "conversation timed
out while receiving the initial server greeting". Content is "content" until the
runner comes back for the action after the block that carries the final "." (that
block's write failing leaves the server without the "."), then "end-of-data": RFC
1047's window, where the server may have taken the message without our hearing so,
and the deferral that follows may deliver it a second time (the reason says "message
may be sent more than once", as Postfix's does). It is the only window for a duplicate
on the wire; the runner never retries at once in it (`sansmail.mail.delivery`).

The conversation (RFC 5321 §3, §4):

1. Greeting: 2xx goes on; anything else fails the session (5xx permanent, 4xx temporary).
2. EHLO; on 5xx, HELO (RFC 5321 §3.2: old servers), and then there are no extensions.
3. STARTTLS (RFC 3207), unless `tls` is "none" or TLS is already up. Not offered: under
   "encrypt" and "verify" the session fails, temporarily, as Postfix defers ("TLS required
   but not offered"); under "may" it goes on in plaintext, also after a refused STARTTLS.
   After the handshake, EHLO again (RFC 3207 §4.2). Certificate checks for "verify" are
   the adapter's: it knows the policy too.
4. AUTH (RFC 4954) when credentials are given and the server offers AUTH (when it does
   not, the session goes on unauthenticated, as Postfix does; the relay decides). The
   mechanism is the strongest both sides have: SCRAM-SHA-256, SCRAM-SHA-1 (both only
   with a nonce), PLAIN, LOGIN. PLAIN and LOGIN never run without TLS. Any failure
   defers (Postfix's smtp_sasl_auth_soft_bounce): a wrong password is an operator's
   problem, not a reason to bounce mail.
5. Messages, each: refused locally, without MAIL, when the server cannot take it
   (SMTPUTF8 needed but not offered: 5.6.7, RFC 6531 §3.4; larger than its SIZE: 552
   5.3.4, RFC 1870 §6; a bare CR in the content, which cannot be sent as is: 5.6.0).
   Otherwise MAIL with SIZE=, BODY=8BITMIME (when the content is 8-bit and the server
   offers it; a server without 8BITMIME gets the content as it is, as most accept it),
   SMTPUTF8, and RET/ENVID only when the server offers DSN (RFC 3461 §5.2: otherwise the
   queue honours them itself); RCPT with NOTIFY/ORCPT under the same rule. With
   PIPELINING, MAIL, every RCPT and DATA go in one write (RFC 2920 §3.1); otherwise one
   command per reply, and no DATA when no recipient was accepted. Results: a refused MAIL
   decides for everyone; a refused RCPT for its recipient; then a refused DATA, then the
   reply to the end of the content. 2xx "sent", 4xx "deferred", 5xx "bounced".
6. After a transaction that did not end with the reply to its content, RSET (RFC 5321
   §4.1.1.5); then `Ready` again, for the next message on the same connection.
7. `quit()`: QUIT, its reply, `Closed` (at once, without QUIT, if a message is in flight
   or the session is still opening).

A 421 at any point, a lost connection or a malformed reply fail the session, temporarily.

Content goes out in blocks of `CONTENT_BLOCK` octets, one `Send` each, with RFC 5321
§4.5.3.2.5's data-block timeout. The DATA content path is used even when the server offers
CHUNKING: BDAT would only be needed for BINARYMIME, which sansmail does not send.
"""

from __future__ import annotations

import collections
import enum
import functools
import re
from typing import Final, Literal

import attrs

from sansmail import smtp
from sansmail._errors import LocalProtocolError, RemoteProtocolError
from sansmail._roles import NEED_DATA, PAUSED
from sansmail.mail.address import Address, parse_address
from sansmail.sasl import (
    ClientMechanism,
    RemoteSASLError,
    SASLError,
    client_mechanism,
    encode_base64,
)
from sansmail.smtp import Phase, Reply
from sansmail.smtp._events import decode_xtext

__all__ = [
    "COMMAND_TIMEOUT",
    "CONTENT_BLOCK",
    "DATA_BLOCK_TIMEOUT",
    "DATA_END_TIMEOUT",
    "DATA_INIT_TIMEOUT",
    "GREETING_TIMEOUT",
    "MAIL_TIMEOUT",
    "RCPT_TIMEOUT",
    "TLS_HANDSHAKE_TIMEOUT",
    "Action",
    "ClientTimeouts",
    "Closed",
    "MessageDone",
    "NeedData",
    "OutboundMessage",
    "OutboundRecipient",
    "OutboundSession",
    "Ready",
    "RecipientResult",
    "Send",
    "SessionFailed",
    "StartTLS",
    "describe_stage",
]

# RFC 5321 §4.5.3.2: how long a client waits, in seconds.
GREETING_TIMEOUT: Final = 300.0  # §4.5.3.2.1 initial 220 message: 5 minutes
MAIL_TIMEOUT: Final = 300.0  # §4.5.3.2.2 MAIL command: 5 minutes
RCPT_TIMEOUT: Final = 300.0  # §4.5.3.2.3 RCPT command: 5 minutes
DATA_INIT_TIMEOUT: Final = 120.0  # §4.5.3.2.4 DATA initiation: 2 minutes
DATA_BLOCK_TIMEOUT: Final = 180.0  # §4.5.3.2.5 data block: 3 minutes per send
DATA_END_TIMEOUT: Final = 600.0  # §4.5.3.2.6 DATA termination: 10 minutes
#: EHLO, STARTTLS, AUTH, RSET, QUIT: RFC 5321 names no value; Postfix's smtp_helo_timeout.
COMMAND_TIMEOUT: Final = 300.0
#: The TLS handshake after STARTTLS (Postfix's smtp_starttls_timeout).
TLS_HANDSHAKE_TIMEOUT: Final = 300.0
#: Octets of content per `Send`: the unit RFC 5321 §4.5.3.2.5's timeout applies to.
CONTENT_BLOCK: Final = 64 * 1024


def _check_timeout(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 < value < float("inf"):
        raise ValueError(f"{attribute.name} timeout must be positive and finite, not {value!r}")


@attrs.frozen(kw_only=True)
class ClientTimeouts:
    """How long one step of an outbound session may take, in seconds: each bounds one
    reply, however many reads it takes (see `OutboundSession.replies`), or one write (a
    content block), so a server that answers, however slowly, within each is never cut
    off, and one that stops answering, or dribbles, is given up on after at most one of
    them. The defaults are RFC 5321 §4.5.3.2's minimums, which are also Postfix's
    defaults (its parameter names in the comments)."""

    #: The TCP connect, per address (smtp_connect_timeout); the adapter's.
    connect: float = attrs.field(default=30.0, validator=_check_timeout)
    #: The 220 greeting (§4.5.3.2.1; Postfix counts it in smtp_helo_timeout).
    greeting: float = attrs.field(default=GREETING_TIMEOUT, validator=_check_timeout)
    #: EHLO, HELO, STARTTLS, AUTH, RSET and QUIT replies (smtp_helo_timeout).
    command: float = attrs.field(default=COMMAND_TIMEOUT, validator=_check_timeout)
    #: The TLS handshake after STARTTLS (smtp_starttls_timeout); the adapter's.
    starttls: float = attrs.field(default=TLS_HANDSHAKE_TIMEOUT, validator=_check_timeout)
    #: MAIL (§4.5.3.2.2, smtp_mail_timeout), a pipelined group's first reply included.
    mail: float = attrs.field(default=MAIL_TIMEOUT, validator=_check_timeout)
    #: RCPT (§4.5.3.2.3, smtp_rcpt_timeout).
    rcpt: float = attrs.field(default=RCPT_TIMEOUT, validator=_check_timeout)
    #: The 354 to DATA (§4.5.3.2.4, smtp_data_init_timeout).
    data_init: float = attrs.field(default=DATA_INIT_TIMEOUT, validator=_check_timeout)
    #: Each block of content written (§4.5.3.2.5, smtp_data_xfer_timeout).
    data_block: float = attrs.field(default=DATA_BLOCK_TIMEOUT, validator=_check_timeout)
    #: The reply to the final "." (§4.5.3.2.6, smtp_data_done_timeout).
    data_done: float = attrs.field(default=DATA_END_TIMEOUT, validator=_check_timeout)


TLSPolicy = Literal["none", "may", "encrypt", "verify"]
DeliveryStatus = Literal["sent", "deferred", "bounced"]
FailureStage = Literal[
    "greeting", "ehlo", "helo", "starttls", "auth", "mail", "rcpt", "data", "content",
    "end-of-data", "rset", "quit",
]  # fmt: skip

# What the session was doing at each stage, in Postfix's words ("lost connection with
# ... while sending message body"), so a log or ``queue list`` reads as an operator
# used to Postfix expects. "end-of-data" is RFC 1047's window: the final "." is written
# and its reply has not come, so the server may have the message, and the retry that
# follows may deliver it a second time.
_DURING: Final[dict[FailureStage, str]] = {
    "greeting": "receiving the initial server greeting",
    "ehlo": "performing the EHLO handshake",
    "helo": "performing the HELO handshake",
    "starttls": "receiving the STARTTLS response",
    "auth": "sending AUTH",
    "mail": "sending MAIL FROM",
    "rcpt": "sending RCPT TO",
    "data": "sending DATA command",
    "content": "sending message body",
    "end-of-data": "sending end of data -- message may be sent more than once",
    "rset": "sending final RSET",
    "quit": "sending QUIT",
}


def describe_stage(stage: FailureStage) -> str:
    """What the session was doing at `stage`, as Postfix words it after "while"."""
    return _DURING[stage]


# Strongest first. CRAM-MD5 is left out: it needs the server to keep the password.
_MECHANISMS: Final = ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN", "LOGIN")
_PLAINTEXT_MECHANISMS: Final = frozenset({"PLAIN", "LOGIN"})
_NOTIFY: Final = frozenset({"NEVER", "SUCCESS", "FAILURE", "DELAY"})
# RFC 3461 §4.2 addr-type ";" xtext (UTF-8 allowed for SMTPUTF8 messages, RFC 6533 §3).
_ORCPT: Final = re.compile(
    r"[A-Za-z0-9!#$%&'*+/?^_`{|}~-]+;(?:[!-*,-<>-~\u0080-\U0010ffff]|\+[0-9A-F]{2})+"
)

# Replies for what the session refuses by itself (RecipientResult.remote is False).
_NEEDS_SMTPUTF8 = Reply(
    code=550, lines="SMTPUTF8 is required, but was not offered by the server", enhanced="5.6.7"
)
_TOO_BIG = Reply(
    code=552, lines="Message size exceeds the server's fixed maximum", enhanced="5.3.4"
)
_BARE_CR = Reply(code=550, lines="Message content contains a bare CR", enhanced="5.6.0")


def _upper_words(value: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    return tuple(str(word).upper() for word in value)


def _upper_or_none(value: str | None) -> str | None:
    return None if value is None else str(value).upper()


def _recipient_tuple(
    value: tuple[OutboundRecipient, ...] | list[OutboundRecipient],
) -> tuple[OutboundRecipient, ...]:
    return tuple(value)


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> Address:
    # Remembered: a busy queue sends from and to the same addresses over and over, and
    # each is read twice per message (checked here, used by start_message). Addresses
    # are immutable; one that does not parse raises every time (nothing is cached).
    return parse_address(text, smtputf8=True)


def _check_address(_inst: object, _attr: object, value: str) -> None:
    _parse(value)


def _check_notify(_inst: object, _attr: object, value: tuple[str, ...]) -> None:
    # RFC 3461 §4.1: NEVER alone, or any of SUCCESS, FAILURE, DELAY, each once.
    if not _NOTIFY.issuperset(value) or len(set(value)) != len(value):
        raise ValueError(f"bad NOTIFY {value!r}")
    if "NEVER" in value and len(value) > 1:
        raise ValueError("NOTIFY=NEVER goes alone")


def _check_orcpt(_inst: object, _attr: object, value: str | None) -> None:
    if value is not None and (len(value) > 500 or not _ORCPT.fullmatch(value)):
        raise ValueError(f"ORCPT must be addr-type;xtext (RFC 3461 §4.2): {value!r}")


@attrs.frozen(kw_only=True)
class OutboundRecipient:
    """One recipient. `notify` and `orcpt` are RFC 3461's NOTIFY words and ORCPT value as
    the queue keeps them (ORCPT as it travels: "rfc822;" and xtext)."""

    address: str = attrs.field(validator=_check_address)
    notify: tuple[str, ...] = attrs.field(
        default=(), converter=_upper_words, validator=_check_notify
    )
    orcpt: str | None = attrs.field(default=None, validator=_check_orcpt)


def _check_sender(_inst: object, _attr: object, value: str) -> None:
    if value:
        _parse(value)


def _check_recipients(_inst: object, _attr: object, value: tuple[OutboundRecipient, ...]) -> None:
    if not value:
        raise ValueError("a message needs at least one recipient")


def _check_ret(_inst: object, _attr: object, value: str | None) -> None:
    if value is not None and value not in ("FULL", "HDRS"):
        raise ValueError(f"RET must be FULL or HDRS (RFC 3461 §4.3): {value!r}")


def _check_envid(_inst: object, _attr: object, value: str | None) -> None:
    if value is not None and (len(value) > 100 or not value):
        raise ValueError("ENVID must be 1 to 100 characters of xtext (RFC 3461 §4.4)")
    if value is not None:
        decode_xtext(value)


@attrs.frozen(kw_only=True)
class OutboundMessage:
    """One message for one destination. `sender` is "" for the null path; `content` has
    CRLF line ends, as queued; `ret` and `envid` are RFC 3461's MAIL parameters (ENVID as
    xtext, as it travels)."""

    sender: str = attrs.field(validator=_check_sender)
    recipients: tuple[OutboundRecipient, ...] = attrs.field(
        converter=_recipient_tuple, validator=_check_recipients
    )
    content: bytes
    smtputf8: bool = False
    body_8bit: bool = False
    ret: str | None = attrs.field(default=None, converter=_upper_or_none, validator=_check_ret)
    envid: str | None = attrs.field(default=None, validator=_check_envid)


@attrs.frozen(kw_only=True)
class RecipientResult:
    """How one recipient fared. `reply` decided it; `remote` is False when the session
    refused the message itself (SMTPUTF8 or SIZE) and wrote the reply."""

    address: str
    reply: Reply
    status: DeliveryStatus
    remote: bool = True


class Action:
    """Base class of what `OutboundSession.next_action` returns."""

    __slots__ = ()


@attrs.frozen
class Send(Action):
    data: bytes
    timeout: float


@attrs.frozen
class NeedData(Action):
    timeout: float


@attrs.frozen
class StartTLS(Action):
    timeout: float = TLS_HANDSHAKE_TIMEOUT


@attrs.frozen
class Ready(Action):
    pass


@attrs.frozen
class MessageDone(Action):
    results: tuple[RecipientResult, ...]


@attrs.frozen
class SessionFailed(Action):
    reply: Reply | None
    reason: str
    permanent: bool
    stage: FailureStage


@attrs.frozen
class Closed(Action):
    pass


class _Step(enum.Enum):
    CONVERSING = "conversing"  # replies drive what comes next
    HANDSHAKE = "handshake"  # waiting for tls_started()
    READY = "ready"  # waiting for start_message() or quit()
    QUIT = "quit"  # QUIT sent; any reply or EOF ends it
    CLOSED = "closed"


def _status(reply: Reply) -> DeliveryStatus:
    cls = reply.code // 100
    return "sent" if cls == 2 else "deferred" if cls == 4 else "bounced"


_STAGES: Final[dict[type[smtp.Event], FailureStage]] = {
    smtp.StartTLS: "starttls",
    smtp.Auth: "auth",
    smtp.AuthResponse: "auth",
    smtp.AuthCancel: "auth",
    smtp.Mail: "mail",
    smtp.Rcpt: "rcpt",
    smtp.Data: "data",
    smtp.EndOfMessage: "end-of-data",
    smtp.Reset: "rset",
    smtp.Quit: "quit",
}
_TIMEOUTS: Final[dict[type[smtp.Event], str]] = {
    smtp.Mail: "mail",
    smtp.Rcpt: "rcpt",
    smtp.Data: "data_init",
    smtp.EndOfMessage: "data_done",
}


def _stage_of(event: smtp.Event | None) -> FailureStage:
    if event is None:
        return "greeting"
    if isinstance(event, smtp.Hello):
        return "ehlo" if event.extended else "helo"
    return _STAGES.get(type(event), "data")


def _timeout_for(event: smtp.Event | None, timeouts: ClientTimeouts) -> float:
    if event is None:
        return timeouts.greeting
    value: float = getattr(timeouts, _TIMEOUTS.get(type(event), "command"))
    return value


@attrs.define
class _Transaction:
    """One message on its way: the envelope commands and the replies they got."""

    message: OutboundMessage
    rcpts: list[smtp.Rcpt]
    mail: Reply | None = None
    rcpt_replies: list[Reply] = attrs.Factory(list)
    data: Reply | None = None  # a refused DATA
    final: Reply | None = None  # the reply to the end of the content
    aborted: bool = False  # 354 came with no recipient accepted: an empty message ended it

    @property
    def accepted(self) -> bool:
        ok = self.mail is not None and self.mail.code // 100 == 2
        return ok and any(reply.code // 100 == 2 for reply in self.rcpt_replies)

    def results(self) -> tuple[RecipientResult, ...]:
        assert self.mail is not None
        out = []
        for i, recipient in enumerate(self.message.recipients):
            reply = self.mail
            if reply.code // 100 == 2:
                reply = self.rcpt_replies[i]
                if reply.code // 100 == 2:
                    reply = self.data or self.final or reply
            out.append(
                RecipientResult(address=recipient.address, reply=reply, status=_status(reply))
            )
        return tuple(out)


class OutboundSession:
    """One SMTP client session for outbound delivery. See the module docstring.

    Args:
        helo_name: our name in EHLO/HELO (the configured hostname).
        tls: the delivery TLS policy ("none", "may", "encrypt", "verify").
        tls_active: TLS is already up (implicit TLS): no STARTTLS.
        credentials: (user, password) for AUTH to a relayhost, or None.
        nonce: fresh randomness for SCRAM; without it SCRAM is not used.
        timeouts: how long each step may take (the `timeout` of each action).
    """

    def __init__(
        self,
        *,
        helo_name: str,
        tls: TLSPolicy,
        tls_active: bool = False,
        credentials: tuple[str, str] | None = None,
        nonce: str | None = None,
        timeouts: ClientTimeouts | None = None,
    ) -> None:
        if tls not in ("none", "may", "encrypt", "verify"):
            raise ValueError(f"unknown TLS policy {tls!r}")
        if (
            not (helo_name.isascii() and helo_name.isprintable())
            or not helo_name.strip(" ")
            or (" " in helo_name)
        ):
            # RFC 5321 §4.1.1.1: a domain (A-labels) or an address literal.
            raise ValueError(f"helo_name must be an ASCII domain or address literal: {helo_name!r}")
        self.helo_name = helo_name
        self.tls = tls
        self._credentials = credentials
        self._nonce = nonce
        self._client = smtp.ClientConnection()
        self._tls_active = tls_active
        self._actions: collections.deque[Action] = collections.deque()
        self._step = _Step.CONVERSING
        self._failed = False
        self._txn: _Transaction | None = None
        self._mechanism: ClientMechanism | None = None
        self._held_response: bytes | None = None  # an initial response too long for AUTH
        self._auth_problem = ""  # why we cancelled an AUTH exchange
        self._timeouts = timeouts or ClientTimeouts()
        self._timeout = self._timeouts.greeting
        # Where the content of the message in flight is: "sending" from the 354 until
        # the adapter comes back for the action after the block that ends with the
        # final ".", then "sent" until its reply. Which one a lost connection falls in
        # decides whether the server may have the message (RFC 1047).
        self._body: Literal["none", "sending", "sent"] = "none"
        self._dot: Send | None = None  # the Send that ends the content
        self._handed: Action | None = None  # the last action handed to the adapter
        self._quit_requested = False  # quit() came while a command was in progress
        self._replies = 0

    # --- what the adapter calls ----------------------------------------------------

    @property
    def timeout(self) -> float:
        """The timeout of the last `Send`, `NeedData` or `StartTLS` action, in seconds:
        what the adapter's `fail_after` around that step should use."""
        return self._timeout

    @property
    def client(self) -> smtp.ClientConnection:
        """The SMTP client core underneath (for logs: extensions, tls_active ...)."""
        return self._client

    def receive_data(self, data: bytes | bytearray) -> None:
        """Bytes from the server (what `receive_some` returned); b"" when it closed the
        connection."""
        self._client.receive_data(data if isinstance(data, bytes) else bytes(data))

    @property
    def replies(self) -> int:
        """How many replies the session has read so far: an adapter that sees the same
        count at a second `NeedData` is still reading the same reply, and keeps its
        deadline (one timeout per reply, however the server dribbles it)."""
        return self._replies

    @property
    def stage(self) -> FailureStage:
        """What the session is doing now: what a lost connection or a timeout would
        interrupt (`describe_stage` words it). A write of the block that ends the
        content that fails is still "content": the server lacks the final "."; once
        the adapter has come back for the next action, it is "end-of-data"."""
        return self._stage_now()

    def next_action(self) -> Action:
        """What the adapter should do now (see the module docstring)."""
        if self._handed is not None and self._handed is self._dot:
            # The adapter is back for more: the block with the final "." is written.
            self._body = "sent"
            self._dot = None
        while not self._actions:
            step = self._step
            if step is _Step.CLOSED:
                return Closed()
            if step is _Step.READY:
                return Ready()
            if step is _Step.HANDSHAKE:
                return self._note(StartTLS(timeout=self._timeouts.starttls))
            stage = self._stage_now()  # what the next reply answers, before it is popped
            try:
                event = self._client.next_event()
            except RemoteProtocolError as exc:
                self._lost(f"protocol error: {exc}", stage=stage)
                continue
            if event is NEED_DATA:
                return self._note(NeedData(timeout=self._reply_timeout()))
            if event is PAUSED:
                self._step = _Step.HANDSHAKE  # (the 220 to STARTTLS already said so)
            elif isinstance(event, Reply):
                self._replies += 1
                self._on_reply(event, stage)
            else:
                self._lost(f"lost connection while {describe_stage(stage)}", stage=stage)
        return self._note(self._actions.popleft())

    def _note(self, action: Action) -> Action:
        self._handed = action
        if isinstance(action, Send | NeedData | StartTLS):
            self._timeout = action.timeout
        return action

    def tls_started(self) -> None:
        """The adapter's TLS handshake succeeded (after a `StartTLS` action)."""
        if self._step is not _Step.HANDSHAKE:
            raise LocalProtocolError("tls_started() without a StartTLS action")
        self._step = _Step.CONVERSING
        try:
            self._client.start_tls()
        except RemoteProtocolError as exc:
            self._lost(str(exc), stage="starttls")
            return
        self._tls_active = True
        self._send(smtp.Hello(domain=self.helo_name), timeout=self._timeouts.command)

    def start_message(self, message: OutboundMessage) -> None:
        """Deliver `message` next (only after a `Ready` action)."""
        if self._step is not _Step.READY or self._actions:
            raise LocalProtocolError("start_message() only when next_action() said Ready")
        extensions = self._client.extensions
        sender = _parse(message.sender) if message.sender else None
        rcpt_addresses = [_parse(r.address) for r in message.recipients]
        addresses: list[Address | None] = [sender, *rcpt_addresses]
        utf8 = message.smtputf8 or any(a is not None and a.needs_smtputf8 for a in addresses)
        content = message.content
        size = len(content) + (0 if not content or content.endswith(b"\r\n") else 2)
        limit = extensions.get("SIZE", "")
        refusal = None
        if utf8 and "SMTPUTF8" not in extensions:
            refusal = _NEEDS_SMTPUTF8  # RFC 6531 §3.4
        elif limit.isdigit() and 0 < int(limit) < size:
            refusal = _TOO_BIG  # RFC 1870 §6
        elif content.count(b"\r") != content.count(b"\r\n"):
            refusal = _BARE_CR
        if refusal is not None:
            results = tuple(
                RecipientResult(address=r.address, reply=refusal, status="bounced", remote=False)
                for r in message.recipients
            )
            self._actions.append(MessageDone(results=results))
            return
        dsn = "DSN" in extensions  # RFC 3461 §5.2: DSN parameters only to a DSN server
        params: dict[str, str | None] = {}
        if "SIZE" in extensions:
            params["SIZE"] = str(size)
        if message.body_8bit and "8BITMIME" in extensions:
            params["BODY"] = "8BITMIME"
        if utf8:
            params["SMTPUTF8"] = None
        if dsn and message.ret is not None:
            params["RET"] = message.ret
        if dsn and message.envid is not None:
            params["ENVID"] = message.envid
        rcpts = []
        for recipient, address in zip(message.recipients, rcpt_addresses, strict=True):
            rcpt_params: dict[str, str | None] = {}
            if dsn and recipient.notify:
                rcpt_params["NOTIFY"] = ",".join(recipient.notify)
            orcpt = recipient.orcpt
            if dsn and orcpt is not None and (utf8 or orcpt.isascii()):
                rcpt_params["ORCPT"] = orcpt
            rcpts.append(smtp.Rcpt(forward_path=address, parameters=rcpt_params))
        self._txn = _Transaction(message=message, rcpts=rcpts)
        mail = smtp.Mail(reverse_path=sender, parameters=params)
        self._step = _Step.CONVERSING
        if self._client.pipelining:
            # RFC 2920 §3.1: MAIL and RCPT anywhere in a group, DATA last.
            self._send(mail, *rcpts, smtp.Data(), timeout=self._timeouts.mail)
        else:
            self._send(mail, timeout=self._timeouts.mail)

    def quit(self) -> None:
        """End the session: politely (QUIT) when it is Ready or only an RSET stands in the
        way (the one after a failed transaction: QUIT follows its reply); otherwise, with a
        message in flight or the session still opening, at once: the next action is
        `Closed`."""
        step = self._step
        pending = self._client.pending
        if step is _Step.READY:
            self._send(smtp.Quit(), timeout=self._timeouts.command)
            self._step = _Step.QUIT
        elif step is _Step.CONVERSING and pending and isinstance(pending[-1], smtp.Reset):
            self._quit_requested = True
        elif step is not _Step.QUIT and step is not _Step.CLOSED:
            self._actions = collections.deque(a for a in self._actions if not isinstance(a, Send))
            self._txn = None
            self._step = _Step.CLOSED

    def connection_lost(self, reason: str) -> None:
        """The adapter lost the connection: a send or a read failed, the TLS handshake
        failed. Pending `Send` actions are dropped. The `SessionFailed` reason says
        what the session was doing, in Postfix's words: "lost connection while sending
        message body (Connection reset by peer)"."""
        stage = self.stage
        self._actions = collections.deque(a for a in self._actions if not isinstance(a, Send))
        why = f"lost connection while {describe_stage(stage)}"
        self._lost(f"{why} ({reason})" if reason else why, stage=stage)

    def timed_out(self) -> None:
        """The adapter gave up on the last `Send`, `NeedData` or `StartTLS` after its
        timeout: as `connection_lost`, the reason "conversation timed out while ..."."""
        stage = self.stage
        self._actions = collections.deque(a for a in self._actions if not isinstance(a, Send))
        self._lost(f"conversation timed out while {describe_stage(stage)}", stage=stage)

    # --- inside ----------------------------------------------------------------------

    def _stage_now(self) -> FailureStage:
        if self._step is _Step.HANDSHAKE:
            return "starttls"
        if self._body != "none":
            return "content" if self._body == "sending" else "end-of-data"
        pending = self._client.pending
        return _stage_of(pending[0] if pending else self._client.answered)

    def _reply_timeout(self) -> float:
        pending = self._client.pending
        return _timeout_for(pending[0], self._timeouts) if pending else self._timeouts.command

    def _send(self, *events: smtp.Event, timeout: float) -> None:
        data = b"".join(self._client.send(event) for event in events)
        self._actions.append(Send(data=data, timeout=timeout))

    def _ready(self) -> None:
        self._step = _Step.READY
        if self._quit_requested:
            self.quit()

    def _fail(
        self, reply: Reply | None, reason: str, *, permanent: bool, stage: FailureStage
    ) -> None:
        """The session cannot go on: report it, then QUIT if the server can hear it."""
        self._body, self._dot = "none", None
        if not self._failed:
            self._failed = True
            self._actions.append(
                SessionFailed(reply=reply, reason=reason, permanent=permanent, stage=stage)
            )
        self._txn = None
        if self._client.our_state is Phase.COMMAND:
            self._send(smtp.Quit(), timeout=self._timeouts.command)
            self._step = _Step.QUIT
        else:
            self._step = _Step.CLOSED

    def _lost(self, reason: str, reply: Reply | None = None, *, stage: FailureStage) -> None:
        """The connection is gone or unusable: no QUIT, temporary failure."""
        self._body, self._dot = "none", None
        if self._step is not _Step.QUIT and self._step is not _Step.CLOSED and not self._failed:
            self._failed = True
            self._actions.append(
                SessionFailed(reply=reply, reason=reason, permanent=False, stage=stage)
            )
        self._txn = None
        self._step = _Step.CLOSED

    def _on_reply(self, reply: Reply, stage: FailureStage) -> None:
        answered = self._client.answered
        if self._step is _Step.QUIT:
            self._step = _Step.CLOSED  # RFC 5321 §4.1.1.10: whatever it says, we are done
            return
        if reply.code == 421:
            # RFC 5321 §3.8: the server is going away.
            self._lost(f"server closing: {reply.code} {reply.text}", reply, stage=stage)
            return
        cls = reply.code // 100
        if answered is None:
            if cls == 2:
                self._send(smtp.Hello(domain=self.helo_name), timeout=self._timeouts.command)
            else:
                self._fail(reply, "greeting refused", permanent=cls == 5, stage="greeting")
        elif isinstance(answered, smtp.Hello):
            self._on_hello(answered, reply)
        elif isinstance(answered, smtp.StartTLS):
            if reply.code == 220:
                self._step = _Step.HANDSHAKE
            elif self.tls == "may":
                self._authenticate()  # RFC 3207 §4.1: go on without TLS
            else:
                self._fail(reply, "STARTTLS refused", permanent=False, stage="starttls")
        elif isinstance(answered, smtp.Auth | smtp.AuthResponse | smtp.AuthCancel):
            self._on_auth(answered, reply)
        elif isinstance(answered, smtp.Reset):
            if cls == 2:
                self._ready()
            else:
                self._fail(reply, "RSET refused", permanent=False, stage="rset")
        else:
            self._on_transaction(answered, reply)

    def _on_hello(self, hello: smtp.Hello, reply: Reply) -> None:
        cls = reply.code // 100
        if cls == 2:
            self._after_hello()
        elif hello.extended and cls == 5:
            # RFC 5321 §3.2: a server that does not know EHLO may know HELO.
            self._send(
                smtp.Hello(domain=self.helo_name, extended=False), timeout=self._timeouts.command
            )
        else:
            verb = "EHLO" if hello.extended else "HELO"
            self._fail(reply, f"{verb} refused", permanent=cls == 5, stage=_stage_of(hello))

    def _after_hello(self) -> None:
        if not self._tls_active and self.tls != "none":
            if "STARTTLS" in self._client.extensions:
                self._send(smtp.StartTLS(), timeout=self._timeouts.command)
                return
            if self.tls != "may":
                self._fail(None, "TLS required but not offered", permanent=False, stage="starttls")
                return
        self._authenticate()

    def _authenticate(self) -> None:
        offered = self._client.extensions.get("AUTH", "").upper().split()
        if self._credentials is None or not offered:
            self._ready()
            return
        usable = [m for m in _MECHANISMS if m in offered and (self._nonce or "SCRAM" not in m)]
        if not usable:
            reason = f"no AUTH mechanism in common (server offers {' '.join(offered)})"
            self._fail(None, reason, permanent=False, stage="auth")
            return
        name = usable[0]
        if name in _PLAINTEXT_MECHANISMS and not self._tls_active:
            self._fail(
                None, "would send the password in clear: no TLS", permanent=False, stage="auth"
            )
            return
        user, password = self._credentials
        try:
            mechanism = client_mechanism(name, user, password, nonce=self._nonce)
        except SASLError as exc:
            self._fail(None, f"unusable credentials: {exc}", permanent=False, stage="auth")
            return
        self._mechanism = mechanism
        initial = mechanism.initial_response()
        auth = smtp.Auth(mechanism=name, initial_response=initial)
        if initial is not None and len(f"AUTH {name} ") + len(encode_base64(initial)) + 2 > 512:
            # RFC 4954 §4: leave it out; it answers the server's empty challenge instead.
            self._held_response = initial
            auth = smtp.Auth(mechanism=name)
        self._send(auth, timeout=self._timeouts.command)

    def _on_auth(self, answered: smtp.Event, reply: Reply) -> None:
        mechanism = self._mechanism
        assert mechanism is not None
        if reply.code == 334:
            try:
                challenge = smtp.challenge_data(reply)
                if self._held_response is not None:
                    if challenge:
                        raise RemoteSASLError("expected an empty challenge")
                    response, self._held_response = self._held_response, None
                else:
                    response = mechanism.respond(challenge)
            except RemoteSASLError as exc:
                self._auth_problem = f"AUTH {mechanism.name}: {exc}"
                self._send(smtp.AuthCancel(), timeout=self._timeouts.command)
                return
            self._send(smtp.AuthResponse(data=response), timeout=self._timeouts.command)
        elif reply.code == 235:
            try:
                # RFC 4954 §4 has no data with success: SCRAM's proof came as a 334.
                mechanism.verify_server_final(None)
            except RemoteSASLError as exc:
                self._fail(reply, f"AUTH {mechanism.name}: {exc}", permanent=False, stage="auth")
                return
            self._ready()
        else:
            reason = self._auth_problem if isinstance(answered, smtp.AuthCancel) else ""
            reason = reason or f"AUTH {mechanism.name} failed"
            # Postfix's smtp_sasl_auth_soft_bounce: defer rather than bounce.
            self._fail(reply, reason, permanent=False, stage="auth")

    def _on_transaction(self, answered: smtp.Event, reply: Reply) -> None:
        txn = self._txn
        assert txn is not None
        pipelining = self._client.pipelining
        positive = reply.code // 100 == 2
        if isinstance(answered, smtp.Mail):
            txn.mail = reply
            if not pipelining:
                if positive:
                    self._send(txn.rcpts[0], timeout=self._timeouts.rcpt)
                else:
                    self._finish()
        elif isinstance(answered, smtp.Rcpt):
            txn.rcpt_replies.append(reply)
            if not pipelining:
                done = len(txn.rcpt_replies)
                if done < len(txn.rcpts):
                    self._send(txn.rcpts[done], timeout=self._timeouts.rcpt)
                elif txn.accepted:
                    self._send(smtp.Data(), timeout=self._timeouts.data_init)
                else:
                    self._finish()  # RFC 2920 §3.1 aside, DATA with no recipient is pointless
        elif isinstance(answered, smtp.Data):
            if reply.code != 354:
                txn.data = reply
                self._finish()
            elif txn.accepted:
                self._send_content(txn.message.content)
            else:
                # A pipelined DATA that got 354 although nobody was accepted: end it with
                # an empty message, and ignore what the server says to it.
                txn.aborted = True
                self._send(smtp.EndOfMessage(), timeout=self._timeouts.data_block)
        else:
            assert isinstance(answered, smtp.EndOfMessage)
            if not txn.aborted:
                txn.final = reply
            self._finish()

    def _send_content(self, content: bytes) -> None:
        client = self._client
        for start in range(0, len(content), CONTENT_BLOCK):
            block = client.send(smtp.MessageData(data=content[start : start + CONTENT_BLOCK]))
            if start + CONTENT_BLOCK >= len(content):
                block += client.send(smtp.EndOfMessage())
            self._actions.append(Send(data=block, timeout=self._timeouts.data_block))
        if not content:
            self._send(smtp.EndOfMessage(), timeout=self._timeouts.data_block)
        self._body = "sending"
        last = self._actions[-1]
        assert isinstance(last, Send)
        self._dot = last

    def _finish(self) -> None:
        txn = self._txn
        assert txn is not None
        self._txn = None
        self._body, self._dot = "none", None
        self._actions.append(MessageDone(results=txn.results()))
        if txn.final is not None:
            self._ready()  # the transaction ended with its content: no RSET needed
        else:
            # RFC 5321 §4.1.1.5: clear whatever the failed transaction left open.
            self._send(smtp.Reset(), timeout=self._timeouts.command)
