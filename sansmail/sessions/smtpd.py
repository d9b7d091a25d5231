"""`SmtpSession`: what one SMTP connection does with its commands (Postfix's smtpd and
cleanup): the greeting and EHLO offer, who may send, where each recipient goes, the
envelope of the transaction, the trace header, where the content is written, the commit
that comes before ``250``, and the mail log's disposition lines.

Theory of operation
-------------------
The protocol core (`sansmail.smtp.Connection`, owned by the session as `conn`) parses
commands and enforces the order of the dialogue; this object decides what each one means
and answers it. An adapter moves bytes between the client and `conn`, and for each event
calls the session (a sketch; `sansmail_trio._smtp_server` is the real one)::

    StartTLS      -> send session.starttls(); handshake; session.tls_started(description)
    Auth          -> session.auth(event) gives a `Login` exchange or a refusal
    MessageData   -> if session.content(data): session.flush()      [blocking]
    EndOfMessage  -> result = session.commit(now)                   [blocking]; send reply
    anything else -> send session.handle(event, now)
    and whenever session.cleanup_due: session.cleanup()             [blocking]

Methods marked blocking do file I/O (writing the message to its tmp files, fsync, unlink)
and belong in a worker thread; the others only compute. The session reads no clock: the
wall clock comes in as `now` (seconds since the epoch) where a decision needs it (SRS
stamps, the Received date, the queue arrival time). It owns no timer either: the adapter
asks `timeout` before each wait and answers with `timeout_reply()` or `shutdown_reply()`.
Log lines go to the `log` sink given at construction (level, text), from whichever thread
runs the method.

Durability (the one rule). `commit` returns the ``250`` only after every copy is on disk:
the queue copies (remote and forwarded recipients) first, then the local Maildir
delivery; if the local delivery fails the queue copies are taken back before the ``451``,
so a client that retries never causes a second relay of the same message.

Checks. Sender-authentication verdicts (SPF, DKIM, DMARC, reverse DNS, DNSBL) and milter
replies enter at six points (`Stage`): CONNECT (the greeting), HELO, MAIL, RCPT,
END_OF_HEADERS and END_OF_DATA. At each, every `Check` of the service is asked in order;
the first `Verdict` that carries a reply refuses (the greeting, the command, or the
message at its end), and header fields from verdicts up to END_OF_HEADERS are written
above the Received line of the stored copy. The content is buffered up to the end of its
header section (at most `HEADER_LIMIT` octets) before anything is written, so those fields
are known when the file is started. END_OF_DATA verdicts may refuse; header fields at
that stage would need the store to prepend to a written file and are refused (ValueError)
until the store can.
"""

from __future__ import annotations

import datetime
import enum
import logging
from collections.abc import Iterable, Sequence
from typing import Protocol

import attrs

from sansmail import SERVER, sasl, smtp
from sansmail.config import Config
from sansmail.mail import srs, trace
from sansmail.mail.address import Address, MailboxId
from sansmail.mail.auth import AuthService, password_allowed
from sansmail.mail.envelope import QueuedMessage, QueuedRecipient
from sansmail.mail.policy import check_sender_login
from sansmail.mail.recipients import Resolution, resolve_recipient
from sansmail.sessions.login import Exchange, Login, LogSink, Result
from sansmail.smtp import Reply
from sansmail.storage.aliasfile import AliasSource
from sansmail.storage.maildir import Delivery, MailStore
from sansmail.storage.queue import QueueStore, QueueWriter
from sansmail.storage.users import UserStore

__all__ = [
    "HEADER_LIMIT",
    "SPILL_THRESHOLD",
    "Check",
    "Committed",
    "SmtpService",
    "SmtpSession",
    "Stage",
    "Verdict",
]

#: Past this much buffered content the adapter should `flush` it to the tmp files in a
#: worker thread, so a large message never sits whole in memory; smaller ones cost one
#: thread hop, at commit.
SPILL_THRESHOLD = 1024 * 1024
#: The header section is held in memory until its end, for the END_OF_HEADERS checks; a
#: longer one counts as ended here (Postfix's header_size_limit is 100 KiB per field).
HEADER_LIMIT = 1024 * 1024

SUBMISSION_SERVICES = ("submission", "submissions")

# Fixed replies are built once: constructing a validated Reply per command was a visible
# share of the per-message cost.
_MAIL_OK = Reply(code=250, lines="Ok", enhanced="2.1.0")
_OK = Reply(code=250, lines="Ok", enhanced="2.0.0")
_START_DATA = Reply(code=354, lines="End data with <CR><LF>.<CR><LF>")
_BYE = Reply(code=221, lines="Bye", enhanced="2.0.0")
# RFC 5321 §3.5.3: 252 lets us neither confirm nor deny a user, which keeps the user list
# from being harvested.
_CANNOT_VRFY = Reply(
    code=252, lines="Cannot verify the user, but will accept mail for delivery", enhanced="2.5.2"
)
_HELP_REPLY = Reply(
    code=214,
    lines=(
        "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT",
        "See RFC 5321 for their use",
    ),
    enhanced="2.0.0",
)
_READY_FOR_TLS = Reply(code=220, lines="Ready to start TLS", enhanced="2.0.0")
# RFC 4954 §6 and RFC 3463/5248 for each of these.
AUTH_OK = Reply(code=235, lines="Authentication successful", enhanced="2.7.0")
AUTH_FAILED = Reply(code=535, lines="Authentication credentials invalid", enhanced="5.7.8")
AUTH_CANCELLED = Reply(code=501, lines="Authentication cancelled", enhanced="5.0.0")
AUTH_THROTTLED = Reply(
    code=454, lines="Too many authentication failures, try again later", enhanced="4.7.0"
)
NO_INITIAL_RESPONSE = Reply(
    code=501, lines="This mechanism takes no initial response", enhanced="5.5.2"
)
INTERNAL_ERROR = Reply(code=421, lines="Internal error, closing connection", enhanced="4.3.0")
_AUTH_REQUIRED = Reply(code=530, lines="Authentication required", enhanced="5.7.0")
_ENCRYPTION_REQUIRED = Reply(
    code=538, lines="Encryption required: issue STARTTLS first", enhanced="5.7.11"
)
_NOT_STORED = Reply(
    code=451, lines="Local error in processing, message not stored", enhanced="4.3.0"
)


class Stage(enum.Enum):
    """Where checks are asked, in the order a transaction reaches them (the milter
    protocol's connect, helo, envfrom, envrcpt, eoh and eom)."""

    CONNECT = "connect"
    HELO = "helo"
    MAIL = "mail"
    RCPT = "rcpt"
    END_OF_HEADERS = "end-of-headers"
    END_OF_DATA = "end-of-data"


def _header_fields(_inst: object, _attr: object, value: tuple[tuple[str, str], ...]) -> None:
    for name, text in value:
        if not name or not all("!" <= c <= "~" and c != ":" for c in name):
            raise ValueError(f"not a header field name: {name!r}")
        if "\r" in text or "\n" in text:
            raise ValueError(
                f"header field {name} may not hold CR or LF (fold it with no line ends)"
            )


@attrs.frozen(kw_only=True)
class Verdict:
    """What one check said at one stage. `reply` (a 4xx or 5xx) refuses; `header_fields`
    are written above the Received line of the stored message ("Authentication-Results",
    "Received-SPF" ...); `source` names the check in the log."""

    source: str
    reply: Reply | None = attrs.field(default=None)
    header_fields: tuple[tuple[str, str], ...] = attrs.field(
        default=(), converter=tuple, validator=_header_fields
    )

    @reply.validator
    def _refusal(self, _attr: object, value: Reply | None) -> None:
        if value is not None and value.code < 400:
            raise ValueError("a verdict's reply refuses: 4xx or 5xx")


class Check(Protocol):
    """A sender-authentication check or filter, asked at every `Stage`.

    `check` must not block (a check that needs DNS or a milter gets its answers before
    the stage; see the module docstring). It sees the session read-only: the client
    (`client_ip`, `helo`, `user`, `tls`) and the transaction (`transaction.reverse_path`,
    `transaction.rcpt`, and at END_OF_HEADERS `transaction.headers`)."""

    def check(self, stage: Stage, session: SmtpSession) -> Verdict | None: ...


@attrs.define
class SmtpService:
    """Everything the sessions of one listener (`smtp`, `submission`, `submissions`)
    share: configuration, stores, the auth service, and the checks."""

    config: Config
    store: MailStore
    users: UserStore
    queue: QueueStore
    aliases: AliasSource
    auth: AuthService
    srs_key: bytes
    service: str = "smtp"
    #: A certificate exists, so STARTTLS may be offered on a plaintext link.
    tls_available: bool = True
    checks: Sequence[Check] = ()
    _ehlo_cache: dict[tuple[bool, bool], Reply] = attrs.field(factory=dict, init=False)
    _core_config: smtp.Config | None = attrs.field(default=None, init=False)

    @property
    def implicit_tls(self) -> bool:
        """The listener speaks TLS from the first byte (RFC 8314: port 465)."""
        return self.service == "submissions"

    @property
    def requires_auth(self) -> bool:
        """Submission (RFC 6409 §4.3): no mail without authentication."""
        return self.service in SUBMISSION_SERVICES

    @property
    def mechanisms(self) -> tuple[str, ...]:
        return sasl.server_mechanisms(self.config.smtp.auth_mechanisms)

    def auth_offered(self, *, tls_active: bool, client_ip: str) -> bool:
        """AUTH only over TLS, unless `plaintext_auth` allows it for this client (RFC 4954
        §4 and RFC 8314 §5.2: passwords do not travel in the clear)."""
        if not self.mechanisms:
            return False
        return password_allowed(
            tls_active=tls_active,
            client_ip=client_ip,
            plaintext_auth=self.config.smtp.plaintext_auth,
        )

    @property
    def core_config(self) -> smtp.Config:
        """The core's limits, from the `[smtp]` settings."""
        if self._core_config is None:
            c = self.config.smtp
            self._core_config = smtp.Config(
                max_message_size=c.max_message_size,
                max_recipients=c.max_recipients,
                max_invalid_commands=c.max_invalid_commands,
                bare_lf=c.bare_lf,
            )
        return self._core_config

    def ehlo_reply(self, *, tls_active: bool, auth: bool) -> Reply:
        """What we offer: the core learns it from this very reply (STARTTLS only while
        the session is plaintext and a certificate exists; AUTH per `auth_offered`)."""
        cached = self._ehlo_cache.get((tls_active, auth))
        if cached is None:
            lines = [
                self.config.hostname,
                "PIPELINING",
                f"SIZE {self.config.smtp.max_message_size}",
            ]
            if self.tls_available and not tls_active:
                lines.append("STARTTLS")
            if auth:
                lines.append("AUTH " + " ".join(self.mechanisms))
                if self.config.smtp.broken_sasl_auth_clients:
                    # The pre-RFC 2554 spelling some old Outlook versions look for.
                    lines.append("AUTH=" + " ".join(self.mechanisms))
            # DSN: RFC 3461, the queue honours NOTIFY, RET and ENVID.
            lines += ["ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8", "CHUNKING", "DSN"]
            cached = self._ehlo_cache[tls_active, auth] = Reply(code=250, lines=tuple(lines))
        return cached

    def resolve(
        self, rcpt: Address, *, sasl_authenticated: bool, client_ip: str, now: float
    ) -> Resolution:
        """One RCPT TO: restrictions, users, aliases and SRS (`resolve_recipient`). May
        read an aliases ``:include:`` file the first time it is used (then cached)."""
        config = self.config
        return resolve_recipient(
            rcpt,
            restrictions=config.smtp.recipient_restrictions,
            sasl_authenticated=sasl_authenticated,
            client_ip=client_ip,
            mynetworks=config.mynetworks,
            domains=config.domains,
            user_exists=self.users.__contains__,
            aliases=self.aliases.table,
            read_include=self.aliases.read_include,
            recipient_delimiter=config.recipient_delimiter,
            srs_key=self.srs_key,
            today=srs.today(now),
        )

    def forward_sender(self, reverse_path: Address | None, now: float) -> Address | None:
        """The envelope sender for copies an alias forwards outside: SRS at our first
        domain, so the next hop's SPF check passes and bounces find their way back. The
        null sender stays null, and our own senders need no rewriting."""
        if reverse_path is None or reverse_path.domain in self.config.domains:
            return reverse_path
        try:
            return srs.forward(
                reverse_path,
                domain=self.config.domains[0],
                key=self.srs_key,
                day=srs.today(now),
            )
        except srs.SRSError:
            # Too long for a local part (RFC 5321 §4.5.3.1.1) once rewritten: forward
            # with the original sender, as a server without SRS would.
            return reverse_path


@attrs.define
class Outgoing:
    """The part of a transaction that goes through the queue with one envelope sender:
    relayed recipients keep the client's sender, forwarded ones get an SRS sender."""

    sender: Address | None
    recipients: list[tuple[Address, QueuedRecipient]] = attrs.Factory(list)
    writer: QueueWriter | None = None


@attrs.define
class Transaction:
    """One MAIL ... end of data."""

    queue_id: str
    reverse_path: Address | None
    smtputf8: bool = False
    body_8bit: bool = False
    ret: str | None = None
    envid: str | None = None
    #: Every recipient the client gave that was accepted, in order.
    rcpt: list[Address] = attrs.Factory(list)
    #: Local recipients as given, with the mailbox each reached (one per mailbox for an
    #: alias that fans out).
    recipients: list[tuple[Address, MailboxId]] = attrs.Factory(list)
    relay: Outgoing | None = None
    forward: Outgoing | None = None
    #: Header fields the checks asked for, in order.
    added_fields: list[tuple[str, str]] = attrs.Factory(list)
    #: A check refused the message at END_OF_HEADERS: the reply at its end.
    refusal: Reply | None = None
    #: Content has started (DATA's 354, or the first BDAT).
    receiving: bool = False
    #: The header section, buffered until its end (see the module docstring).
    headers: bytearray = attrs.Factory(bytearray)
    headers_done: bool = False
    delivery: Delivery | None = None
    #: The queue writers of `outgoing`, made when the files start.
    writers: list[QueueWriter] = attrs.Factory(list)
    chunk_size: int = 0

    @property
    def outgoing(self) -> list[Outgoing]:
        return [o for o in (self.relay, self.forward) if o is not None and o.recipients]

    @property
    def empty(self) -> bool:
        return not self.recipients and not self.outgoing

    @property
    def size(self) -> int:
        """Octets stored so far (the first copy's)."""
        if self.delivery is not None:
            return self.delivery.size
        return sum(w.size for w in self.writers[:1])


@attrs.frozen
class Committed:
    """`commit`'s outcome: the reply, and the queue ids to hand to the queue runner."""

    reply: Reply
    queued: tuple[str, ...] = ()


class SmtpSession:
    """One SMTP conversation (see the module docstring).

    Args:
        service: what the listener's sessions share.
        client_ip, client_port: the peer.
        log: where log lines go, ``(level, text)``.
        tls: "<version> <cipher>" when the link is already encrypted (implicit TLS).
    """

    def __init__(
        self,
        service: SmtpService,
        *,
        client_ip: str,
        client_port: int,
        log: LogSink,
        tls: str | None = None,
    ) -> None:
        self.service = service
        self.config = service.config
        self.log = log
        self.client_ip = client_ip
        self.client = f"[{client_ip}]:{client_port}"
        self.conn = smtp.Connection(SERVER, config=service.core_config)
        #: "TLSv1.3 TLS_AES_256_GCM_SHA384" once the session is encrypted.
        self.tls = tls
        self.helo = ""
        #: The user-store key of the authenticated user (SMTP AUTH), if any.
        self.user: str | None = None
        self.transaction: Transaction | None = None
        #: The session is over: the adapter closes after sending what it has.
        self.ended = False
        self._counters: dict[str, int] = {}
        # Transactions that died with files started: `cleanup` removes them.
        self._dead: list[Transaction] = []

    # -- what the adapter asks ------------------------------------------------------------

    @property
    def timeout(self) -> float:
        """How long to wait for the client now: RFC 5321 §4.5.3.2's 5 minutes per command,
        10 during content."""
        tx = self.transaction
        c = self.config.smtp
        return c.data_timeout if tx is not None and tx.receiving else c.command_timeout

    @property
    def in_transaction(self) -> bool:
        """Between MAIL and the end of the message: shutdown lets it finish."""
        return self.transaction is not None

    @property
    def cleanup_due(self) -> bool:
        return bool(self._dead)

    def greeting(self) -> Reply:
        """The 220, or a CONNECT check's refusal (then the session ends)."""
        self.log(logging.INFO, f"connect from {self.client}")
        refusal = self._check(Stage.CONNECT)
        if refusal is not None:
            self.ended = True
            return refusal
        return Reply(code=220, lines=f"{self.config.hostname} ESMTP sansmail")

    def refuse(self, reply: Reply) -> Reply:
        """Greet with `reply` instead (connection limits, shutdown) and end."""
        self.log(logging.INFO, f"connect from {self.client}")
        self.log(logging.INFO, f"{self.client}: refused: {reply.code} {reply.text}")
        self.ended = True
        return reply

    def timeout_reply(self) -> Reply:
        self.log(logging.INFO, f"timeout after {self._last_command()} from {self.client}")
        return Reply(
            code=421, lines=f"{self.config.hostname} Error: timeout exceeded", enhanced="4.4.2"
        )

    def shutdown_reply(self) -> Reply:
        return Reply(
            code=421, lines=f"{self.config.hostname} Service shutting down", enhanced="4.3.2"
        )

    def last_words(self, hint: object) -> bytes:
        """A closing reply serialised outside the core: it may be in ERROR, or mid-DATA,
        where RFC 5321 still allows a closing 421 (§3.8) but the state tables do not."""
        if not isinstance(hint, Reply):
            return b""
        return smtp.serialize_reply(
            hint, enhanced="ENHANCEDSTATUSCODES" in self.conn.extensions, utf8=False
        )

    def protocol_error(self, exc: Exception) -> None:
        self.log(logging.INFO, f"{self.client}: protocol error: {exc}")

    def closed(self) -> None:
        """The connection is gone; the transaction, if any, dies (`cleanup_due`)."""
        self._kill_transaction()
        summary = " ".join(
            [*(f"{k}={v}" for k, v in self._counters.items()), f"commands={self._commands()}"]
        )
        self.log(logging.INFO, f"disconnect from {self.client} {summary}")

    # -- commands ---------------------------------------------------------------------

    def handle(self, event: smtp.Event, now: float) -> Reply | None:
        """Answer one event that needs no I/O (all but StartTLS, Auth, MessageData and
        EndOfMessage). None: nothing to send (BDAT's chunk announcement)."""
        if isinstance(event, smtp.Hello):
            return self._hello(event)
        if isinstance(event, smtp.Mail):
            return self._mail(event)
        if isinstance(event, smtp.Rcpt):
            return self._rcpt(event, now)
        if isinstance(event, smtp.Data):
            self._bump("data")
            self._begin_content()
            return _START_DATA
        if isinstance(event, smtp.Bdat):
            self._bump("bdat")
            tx = self.transaction
            assert tx is not None, "the core only passes BDAT inside a transaction"
            if not tx.receiving:
                self._begin_content()
            tx.chunk_size = event.size
            return None
        if isinstance(event, smtp.EndOfChunk):
            tx = self.transaction
            assert tx is not None
            return Reply(code=250, lines=f"{tx.chunk_size} octets received", enhanced="2.0.0")
        if isinstance(event, smtp.InvalidMessage):
            return self._invalid_message(event)
        if isinstance(event, smtp.Reset):
            self._bump("rset")
            self._kill_transaction()
            return _OK
        if isinstance(event, smtp.Noop):
            self._bump("noop")
            return _OK
        if isinstance(event, smtp.Verify):
            self._bump("vrfy")
            return _CANNOT_VRFY
        if isinstance(event, smtp.Help):
            self._bump("help")
            return _HELP_REPLY
        if isinstance(event, smtp.Quit):
            self._bump("quit")
            self._kill_transaction()
            self.ended = True
            return _BYE
        if isinstance(event, smtp.InvalidCommand):
            return self._invalid_command(event)
        if isinstance(event, smtp.ConnectionClosed):
            if self.transaction is not None:
                self.log(
                    logging.INFO,
                    f"{self.transaction.queue_id}: lost connection from {self.client}"
                    " during transaction",
                )
            self.ended = True
            return None
        raise TypeError(f"{type(event).__name__} is not handled by handle()")

    def _hello(self, event: smtp.Hello) -> Reply:
        self._bump("ehlo" if event.extended else "helo")
        self._kill_transaction()
        self.helo = event.domain
        refusal = self._check(Stage.HELO)
        if refusal is not None:
            self.helo = ""
            return refusal
        if not event.extended:
            return Reply(code=250, lines=self.config.hostname)
        tls_active = self.tls is not None
        auth = self.service.auth_offered(tls_active=tls_active, client_ip=self.client_ip)
        return self.service.ehlo_reply(tls_active=tls_active, auth=auth)

    def _mail(self, event: smtp.Mail) -> Reply:
        self._bump("mail")
        service = self.service
        if service.requires_auth and self.user is None:
            return _AUTH_REQUIRED
        if (
            self.user is not None
            and service.requires_auth
            and self.config.smtp.reject_sender_login_mismatch
        ):
            # Postfix's reject_sender_login_mismatch, on the submission ports.
            refusal = check_sender_login(
                event.reverse_path,
                self.user,
                domains=self.config.domains,
                recipient_delimiter=self.config.recipient_delimiter,
            )
            if refusal is not None:
                self.log(
                    logging.INFO,
                    f"{self.client}: sender <{_path(event.reverse_path)}> refused"
                    f" for user <{self.user}>",
                )
                return refusal
        self.transaction = Transaction(
            queue_id=service.queue.new_id(),
            reverse_path=event.reverse_path,
            smtputf8=event.smtputf8,
            body_8bit=event.body == "8BITMIME",
            ret=event.parameters.get("RET"),
            envid=event.parameters.get("ENVID"),
        )
        refusal = self._check(Stage.MAIL)
        if refusal is not None:
            self.transaction = None
            return refusal
        return _MAIL_OK

    def _rcpt(self, event: smtp.Rcpt, now: float) -> Reply:
        self._bump("rcpt")
        tx = self.transaction
        assert tx is not None, "the core only passes RCPT inside a transaction"
        rcpt = event.forward_path
        resolution = self.service.resolve(
            rcpt, sasl_authenticated=self.user is not None, client_ip=self.client_ip, now=now
        )
        for problem in resolution.problems:
            self.log(logging.WARNING, f"{tx.queue_id}: to=<{_path(rcpt)}>: aliases: {problem}")
        reply = resolution.reply
        if resolution.accepted:
            tx.rcpt.append(rcpt)
            refusal = self._check(Stage.RCPT)
            if refusal is not None:
                tx.rcpt.pop()
                reply = refusal
            else:
                self._take(tx, rcpt, resolution, event, now)
        if not reply.is_positive:
            self._log_rejected(tx, rcpt, reply)
        return reply

    def _take(
        self, tx: Transaction, rcpt: Address, resolution: Resolution, event: smtp.Rcpt, now: float
    ) -> None:
        for mailbox in resolution.local:
            tx.recipients.append((rcpt, mailbox))
        if not (resolution.remote or resolution.forward):
            return
        notify = _notify(event.parameters.get("NOTIFY"))
        orcpt = event.parameters.get("ORCPT")
        if resolution.remote:
            if tx.relay is None:
                tx.relay = Outgoing(sender=tx.reverse_path)
            for target in resolution.remote:
                queued = QueuedRecipient(address=str(target), orcpt=orcpt, notify=notify)
                tx.relay.recipients.append((target, queued))
        if resolution.forward:
            if tx.forward is None:
                tx.forward = Outgoing(sender=self.service.forward_sender(tx.reverse_path, now))
            # RFC 3461 §4.2: the address the client gave is the original recipient of
            # every address an alias turns it into.
            orcpt = orcpt or "rfc822;" + _xtext(str(rcpt))
            for target in resolution.forward:
                queued = QueuedRecipient(address=str(target), orcpt=orcpt, notify=notify)
                tx.forward.recipients.append((target, queued))

    def _invalid_message(self, event: smtp.InvalidMessage) -> Reply:
        tx = self.transaction
        hint = event.reply_hint
        if tx is not None:
            for address, _mailbox in tx.recipients:
                self._log_rejected(tx, address, hint)
        self._kill_transaction()
        return hint

    def _invalid_command(self, event: smtp.InvalidCommand) -> Reply:
        self._bump("unknown" if event.reply_hint.code == 500 else "error")
        hint = event.reply_hint
        service = self.service
        if (
            event.line[:5].upper() in (b"AUTH", b"AUTH ")
            and self.tls is None
            and service.tls_available
            and service.mechanisms
            and not service.auth_offered(tls_active=False, client_ip=self.client_ip)
        ):
            # AUTH is not offered before TLS here: say why (RFC 4954 §6, 538).
            hint = _ENCRYPTION_REQUIRED
        line = _printable(event.line.decode("utf-8", "replace")[:100])
        self.log(
            logging.INFO,
            f"{self.client}: {hint.code} {hint.enhanced or ''} {event.reason}: {line}",
        )
        return hint

    # -- STARTTLS and AUTH --------------------------------------------------------------

    def starttls(self) -> Reply:
        """RFC 3207: the 220 before the handshake. The core accepts STARTTLS only when our
        EHLO reply offered it, which it does only with a certificate and before TLS."""
        self._bump("starttls")
        assert self.service.tls_available, "STARTTLS is never offered without a certificate"
        return _READY_FOR_TLS

    def tls_started(self, description: str, log_description: str) -> None:
        """The handshake succeeded (`description` goes into Received headers)."""
        self.tls = description
        # RFC 3207 §4.2: forget everything the client said before TLS.
        self.helo = ""
        self.user = None
        self.log(logging.INFO, f"{self.client}: STARTTLS: {log_description}")

    def tls_failed(self, reason: str) -> None:
        self.log(logging.INFO, f"{self.client}: STARTTLS handshake failed: {reason}")
        self.ended = True

    def login(self) -> Login:
        """The shared login rules for this client (throttle, delays, fail2ban lines)."""
        return Login(
            service=self.service.service,
            auth=self.service.auth,
            users=self.service.users,
            hostname=self.config.hostname,
            client_ip=self.client_ip,
            log=self.log,
        )

    def auth(self, event: smtp.Auth, login: Login, *, nonce: str, now: float) -> Exchange:
        """An AUTH command (RFC 4954 §4) the core accepted: its exchange. The adapter has
        passed `login.gate` (else `AUTH_THROTTLED`) and drives the exchange with 334
        challenges, then calls `auth_result`."""
        self._bump("auth")
        return login.sasl(event.mechanism, event.initial_response, nonce=nonce, timestamp=int(now))

    def auth_result(self, result: Result, last: object) -> Reply | None:
        """The reply to an AUTH exchange that ended with `result`; `last` is the last
        event the core gave during it. None: the client went away (the session ends)."""
        if result.unexpected_initial_response:
            return NO_INITIAL_RESPONSE
        if result.user is not None:
            self.user = result.user
            self.log(
                logging.INFO,
                f"{self.client}: authenticated as <{result.user}> ({result.mechanism})",
            )
            return AUTH_OK
        if result.interrupted:
            if isinstance(last, smtp.InvalidAuthResponse):  # undecodable, too long
                return last.reply_hint
            if isinstance(last, smtp.AuthCancel | smtp.AuthResponse):
                return AUTH_CANCELLED
            self.ended = True  # the client went away mid-exchange
            return None
        return AUTH_FAILED

    # -- content --------------------------------------------------------------------------

    def content(self, data: bytes, now: float) -> bool:
        """A piece of the message. True when enough is buffered that the adapter should
        `flush` it (blocking) before reading more. `now` dates the Received field."""
        tx = self.transaction
        assert tx is not None
        assert tx.receiving
        if not tx.headers_done:
            headers = tx.headers
            start = max(0, len(headers) - 3)
            headers += data
            end = _header_end(headers, start)
            if end < 0 and len(headers) < HEADER_LIMIT:
                return False
            self._start_files(tx, now)
            return self._write(tx, bytes(headers))
        return self._write(tx, data)

    def flush(self) -> None:
        """Blocking: hand buffered content to the tmp files."""
        tx = self.transaction
        assert tx is not None
        if tx.recipients and tx.delivery is not None:
            tx.delivery.flush()
        for writer in tx.writers:
            writer.flush()

    def commit(self, now: float) -> Committed:
        """Blocking: the message ended (CRLF.CRLF, or BDAT LAST). Make every copy durable,
        and only then return the 250 (see the module docstring); any failure returns the
        451 with nothing stored. The transaction is over either way."""
        tx = self.transaction
        assert tx is not None
        assert tx.receiving
        if not tx.headers_done:
            self._start_files(tx, now)
            self._write(tx, bytes(tx.headers))
        refusal = tx.refusal or self._check(Stage.END_OF_DATA, tx)
        self.transaction = None
        if refusal is not None:
            self._abort(tx)
            for address in tx.rcpt:
                self._log_rejected(tx, address, refusal)
            return Committed(refusal)
        size = tx.size
        try:
            queued = self._store(tx, now)
        except OSError as exc:
            self._abort(tx)
            self.log(
                logging.ERROR,
                f"{tx.queue_id}: from=<{_path(tx.reverse_path)}>, client={self.client},"
                f" size={size}, status=deferred (cannot store: {exc})",
            )
            return Committed(_NOT_STORED)
        text = f"Ok: queued as {tx.queue_id}"
        for address, _mailbox in tx.recipients:
            self.log(
                logging.INFO,
                f"{tx.queue_id}: from=<{_path(tx.reverse_path)}>, to=<{_path(address)}>,"
                f" client={self.client}, relay=local, size={size},"
                f" status=sent (250 2.0.0 {text})",
            )
        for message in queued:
            self.log(
                logging.INFO,
                f"{message.queue_id}: from=<{_printable(message.sender)}>,"
                f" client={self.client}, size={message.size},"
                f" nrcpt={len(message.recipients)} (queue active)",
            )
        return Committed(
            Reply(code=250, lines=text, enhanced="2.0.0"),
            tuple(m.queue_id for m in queued),
        )

    def cleanup(self) -> None:
        """Blocking: remove the files of transactions that died (RSET, a new EHLO, a
        refused or broken message, a lost connection). Safe at any point."""
        dead, self._dead = self._dead, []
        for tx in dead:
            self._abort(tx)

    # -- internals ----------------------------------------------------------------------

    def _begin_content(self) -> None:
        tx = self.transaction
        assert tx is not None
        assert not tx.empty
        tx.receiving = True

    def _start_files(self, tx: Transaction, now: float) -> None:
        """The header section is complete: ask END_OF_HEADERS, then start the copies with
        Return-Path (local only), the checks' fields and Received."""
        tx.headers_done = True
        tx.refusal = self._check(Stage.END_OF_HEADERS, tx)
        single = tx.recipients[0][0] if len(tx.recipients) == 1 and not tx.outgoing else None
        fields = b"".join(f"{name}: {text}\r\n".encode() for name, text in tx.added_fields)
        received = fields + trace.received(
            helo=self.helo,
            client_ip=self.client_ip,
            client_name=None,
            by=self.config.hostname,
            protocol=trace.with_protocol(
                esmtp=self.conn.esmtp,
                tls=self.tls is not None,
                auth=self.user is not None,
                utf8=tx.smtputf8,
            ),
            queue_id=tx.queue_id,
            recipient=single,
            when=datetime.datetime.fromtimestamp(now).astimezone(),
            tls=self.tls,
        )
        if tx.recipients:
            mailboxes = list(dict.fromkeys(mailbox for _addr, mailbox in tx.recipients))
            prefix = trace.return_path(tx.reverse_path) + received
            tx.delivery = self.service.store.begin(mailboxes, prefix=prefix)
        queue = self.service.queue
        for index, outgoing in enumerate(tx.outgoing):
            # The second envelope (forwarded copies) needs its own queue id.
            qid = tx.queue_id if index == 0 else queue.new_id()
            outgoing.writer = queue.begin(qid)
            # The Return-Path is added at final delivery (RFC 5321 §4.4), never in transit.
            outgoing.writer.write(received)
            tx.writers.append(outgoing.writer)

    def _write(self, tx: Transaction, data: bytes) -> bool:
        spill = False
        if tx.delivery is not None:
            tx.delivery.write(data)
            spill = tx.delivery.pending > SPILL_THRESHOLD
        for writer in tx.writers:
            writer.write(data)
            spill = spill or writer.pending > SPILL_THRESHOLD
        return spill

    def _store(self, tx: Transaction, now: float) -> list[QueuedMessage]:
        queued: list[QueuedMessage] = []
        try:
            for outgoing in tx.outgoing:
                assert outgoing.writer is not None
                envelope = QueuedMessage(
                    queue_id=outgoing.writer.queue_id,
                    sender="" if outgoing.sender is None else str(outgoing.sender),
                    arrival=now,
                    size=0,
                    recipients=_unique(q for _a, q in outgoing.recipients),
                    ret=tx.ret,
                    envid=tx.envid,
                    smtputf8=tx.smtputf8,
                    body_8bit=tx.body_8bit,
                )
                queued.append(outgoing.writer.commit(envelope))
            if tx.delivery is not None:
                tx.delivery.commit()
        except BaseException:
            for message in queued:
                try:
                    self.service.queue.delete(message.queue_id)
                except Exception as exc:  # noqa: BLE001 (the original error matters more)
                    self.log(
                        logging.ERROR,
                        f"{message.queue_id}: cannot take back the queued copy: {exc}",
                    )
            raise
        return queued

    def _abort(self, tx: Transaction) -> None:
        if tx.delivery is not None:
            tx.delivery.abort()
        for writer in tx.writers:
            writer.abort()

    def _kill_transaction(self) -> None:
        tx, self.transaction = self.transaction, None
        if tx is not None and (tx.delivery is not None or tx.writers):
            self._dead.append(tx)

    def _check(self, stage: Stage, tx: Transaction | None = None) -> Reply | None:
        """Ask every check; the first refusal wins. Header fields are kept for the copy."""
        tx = tx or self.transaction
        for check in self.service.checks:
            verdict = check.check(stage, self)
            if verdict is None:
                continue
            if verdict.header_fields:
                if stage is Stage.END_OF_DATA or tx is None:
                    raise ValueError(
                        f"{verdict.source}: header fields at {stage.value} are not supported"
                    )
                tx.added_fields.extend(verdict.header_fields)
            if verdict.reply is not None:
                reply = verdict.reply
                self.log(
                    logging.INFO,
                    f"{tx.queue_id + ': ' if tx else ''}{self.client}: {stage.value}"
                    f" refused by {verdict.source}: {reply.code} {reply.enhanced or ''}"
                    f" {reply.text}",
                )
                return reply
        return None

    def _log_rejected(self, tx: Transaction, rcpt: Address, reply: Reply) -> None:
        self.log(
            logging.INFO,
            f"{tx.queue_id}: from=<{_path(tx.reverse_path)}>, to=<{_path(rcpt)}>,"
            f" client={self.client}, relay=none, status=rejected"
            f" ({reply.code} {reply.enhanced or ''} {reply.text})",
        )

    def _bump(self, name: str) -> None:
        self._counters[name] = self._counters.get(name, 0) + 1

    def _commands(self) -> int:
        return sum(self._counters.values())

    def _last_command(self) -> str:
        return next(reversed(self._counters), "CONNECT").upper()


def _header_end(data: bytearray, start: int) -> int:
    """The end of the header section (just after its empty line), or -1."""
    if data.startswith(b"\r\n"):
        return 2
    end = data.find(b"\r\n\r\n", start)
    return -1 if end < 0 else end + 4


def _notify(value: str | None) -> tuple[str, ...]:
    return tuple(value.upper().split(",")) if value else ()


def _xtext(text: str) -> str:
    # RFC 3461 §4: "+", "=", controls, space and non-ASCII travel as "+XX".
    out = []
    for byte in text.encode("utf-8"):
        if 33 <= byte <= 126 and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


def _unique(recipients: Iterable[QueuedRecipient]) -> list[QueuedRecipient]:
    seen: dict[str, QueuedRecipient] = {}
    for recipient in recipients:
        seen.setdefault(recipient.address.lower(), recipient)
    return list(seen.values())


def _path(address: Address | None) -> str:
    return "" if address is None else _printable(str(address))


def _printable(text: str) -> str:
    """Attacker-controlled text made safe for one log line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
