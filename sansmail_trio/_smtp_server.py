"""The SMTP service: one session per connection, driving `sansmail.smtp` as a server.

The core parses commands and enforces the protocol; `sansmail.mail.policy` decides recipients;
`sansmail.storage.maildir` writes the message. This file only wires them together and owns time:
per-command timeouts, the thread hand-off for blocking disk work, and shutdown.

Durability rule: the `250` that ends a transaction is sent only after
`Delivery.commit()` returned, i.e. after the file and every `new/` directory it was linked
into have been fsync'd. If committing fails the client gets `451 4.3.0` and keeps the
message (RFC 5321 §4.2.5: a server that cannot take responsibility must not say 250).
"""

from __future__ import annotations

import datetime
import functools
import logging
import math
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import attrs
import trio

from sansmail import PAUSED, SERVER, LocalProtocolError, RemoteProtocolError, sasl, smtp
from sansmail.config import Config
from sansmail.mail import trace
from sansmail.mail.address import Address, MailboxId
from sansmail.mail.auth import (
    AuthService,
    failure_log_line,
    password_allowed,
    throttle_log_line,
)
from sansmail.mail.envelope import QueuedMessage, QueuedRecipient
from sansmail.mail.policy import check_sender_login, evaluate_recipient
from sansmail.mail.recipients import Resolution
from sansmail.smtp import Reply
from sansmail.storage.maildir import Delivery, MailStore
from sansmail.storage.queue import QueueWriter
from sansmail.storage.users import UserStore
from sansmail_trio._intake import Intake
from sansmail_trio._sasl import run_exchange
from sansmail_trio._session import SessionRegistry, run_registered
from sansmail_trio._tls import TLSContextHolder, describe, received_tls
from sansmail_trio._wire import Wire

__all__ = ["SMTPService"]

#: Flush buffered message content to the tmp file in a worker thread past this size, so a
#: large message never sits whole in memory; smaller ones cost a single thread hop.
SPILL_THRESHOLD = 1024 * 1024


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
_AUTH_OK = Reply(code=235, lines="Authentication successful", enhanced="2.7.0")
_AUTH_FAILED = Reply(code=535, lines="Authentication credentials invalid", enhanced="5.7.8")
_AUTH_CANCELLED = Reply(code=501, lines="Authentication cancelled", enhanced="5.0.0")
_AUTH_THROTTLED = Reply(
    code=454, lines="Too many authentication failures, try again later", enhanced="4.7.0"
)
_NO_INITIAL_RESPONSE = Reply(
    code=501, lines="This mechanism takes no initial response", enhanced="5.5.2"
)
_INTERNAL_ERROR = Reply(code=421, lines="Internal error, closing connection", enhanced="4.3.0")
_AUTH_REQUIRED = Reply(code=530, lines="Authentication required", enhanced="5.7.0")
_ENCRYPTION_REQUIRED = Reply(
    code=538, lines="Encryption required: issue STARTTLS first", enhanced="5.7.11"
)
# The relay policy said yes, but this server runs without an outbound queue (only in
# tests of the receive path): RFC 5321 §4.2.5, 451.
_NO_RELAY = Reply(code=451, lines="Relaying is not available; try again later", enhanced="4.3.0")

#: A client that asked for STARTTLS (or connected to an implicit-TLS port) has this long to
#: complete its handshake.
TLS_HANDSHAKE_TIMEOUT = 30.0


def new_queue_id() -> str:
    """A Postfix-like queue id: short, upper-case hex, unique enough to grep for."""
    return secrets.token_hex(5).upper()


@attrs.define
class _Outgoing:
    """The part of a transaction that goes through the queue with one envelope sender:
    relayed recipients keep the client's sender, forwarded ones get an SRS sender."""

    sender: Address | None
    recipients: list[tuple[Address, QueuedRecipient]] = attrs.Factory(list)
    writer: QueueWriter | None = None


@attrs.define
class _Transaction:
    queue_id: str
    reverse_path: Address | None
    smtputf8: bool = False
    body_8bit: bool = False
    ret: str | None = None
    envid: str | None = None
    #: Local recipients as given, with the mailbox each reached (one per mailbox
    #: for an alias that fans out).
    recipients: list[tuple[Address, MailboxId]] = attrs.Factory(list)
    relay: _Outgoing | None = None
    forward: _Outgoing | None = None
    delivery: Delivery | None = None
    #: The queue writers of `outgoing`, made once content starts (read per chunk).
    writers: list[QueueWriter] = attrs.Factory(list)
    chunk_size: int = 0

    @property
    def outgoing(self) -> list[_Outgoing]:
        return [o for o in (self.relay, self.forward) if o is not None and o.recipients]

    @property
    def empty(self) -> bool:
        return not self.recipients and not self.outgoing


@attrs.define
class _Counters:
    counts: dict[str, int] = attrs.Factory(dict)

    def bump(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    def summary(self) -> str:
        total = sum(self.counts.values())
        parts = [f"{k}={v}" for k, v in self.counts.items()]
        return " ".join([*parts, f"commands={total}"])


@attrs.define
class SMTPService:
    """Everything the sessions of one `smtp` listener share."""

    config: Config
    store: MailStore
    users: UserStore
    log: logging.Logger
    service: str = "smtp"
    #: The server certificate; None: no TLS at all (STARTTLS is then not offered).
    tls: TLSContextHolder | None = None
    #: Password checks, failure delays and throttling, shared with POP3 and IMAP.
    auth: AuthService | None = None
    #: Aliases, SRS and the outbound queue; None only in tests of the receive path
    #: (then users are the only local recipients and relaying gets 451).
    intake: Intake | None = None
    _ehlo_cache: dict[tuple[bool, bool], Reply] = attrs.field(factory=dict, init=False)

    @property
    def implicit_tls(self) -> bool:
        """The listener speaks TLS from the first byte (RFC 8314: port 465)."""
        return self.service == "submissions"

    @property
    def requires_auth(self) -> bool:
        """Submission (RFC 6409 §4.3): no mail without authentication."""
        return self.service in ("submission", "submissions")

    @functools.cached_property
    def mechanisms(self) -> tuple[str, ...]:
        return sasl.server_mechanisms(self.config.smtp.auth_mechanisms) if self.auth else ()

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

    @functools.cached_property
    def smtp_config(self) -> smtp.Config:
        """The core's limits, from the `[smtp]` settings."""
        c = self.config.smtp
        return smtp.Config(
            max_message_size=c.max_message_size,
            max_recipients=c.max_recipients,
            max_invalid_commands=c.max_invalid_commands,
            bare_lf=c.bare_lf,
        )

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
            if self.tls is not None and not tls_active:
                lines.append("STARTTLS")
            if auth:
                lines.append("AUTH " + " ".join(self.mechanisms))
                if self.config.smtp.broken_sasl_auth_clients:
                    # The pre-RFC 2554 spelling some old Outlook versions look for.
                    lines.append("AUTH=" + " ".join(self.mechanisms))
            lines += ["ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8", "CHUNKING"]
            if self.intake is not None:
                lines.append("DSN")  # RFC 3461: the queue honours NOTIFY, RET, ENVID
            cached = self._ehlo_cache[tls_active, auth] = Reply(code=250, lines=tuple(lines))
        return cached

    @functools.cached_property
    def helo_reply(self) -> Reply:
        return Reply(code=250, lines=self.config.hostname)

    async def handle(
        self,
        stream: trio.abc.Stream,
        peer: tuple[str, int],
        *,
        refuse: Reply | None = None,
        registry: SessionRegistry | None = None,
        tls: str | None = None,
    ) -> None:
        """Run one session to its end. `refuse` is sent as the greeting instead of 220
        (connection limits, shutdown). The session is in `registry` while it runs, so
        shutdown can ask it to stop (see `_Session.request_stop`). `tls` describes the
        TLS session when `stream` is already encrypted (implicit TLS)."""
        session = _Session(self, stream, peer)
        session.tls = tls
        await run_registered(session, registry, lambda: session.run(refuse))


class _Session:
    """One SMTP conversation.

    Time: the session has one cancel scope for its whole life. Before each wait for the
    client its deadline is set to the command (or DATA) timeout, and after the wait it is
    set back to infinity, so our own work (a slow disk) never counts against the client.
    Shutdown uses the same scope: `request_stop()` cancels it at once when the session is
    waiting for a command outside a mail transaction, and otherwise only marks the session
    so that it stops at its next such wait. One scope per session instead of two per
    command matters: entering a scope is a large part of the per-command cost.
    """

    def __init__(
        self, service: SMTPService, stream: trio.abc.Stream, peer: tuple[str, int]
    ) -> None:
        self.service = service
        self.config = service.config
        self.log = service.log
        self.peer = peer
        self.client = f"[{peer[0]}]:{peer[1]}"
        self.conn = smtp.Connection(SERVER, config=service.smtp_config)
        self.wire = Wire(stream, self.conn)
        self.helo = ""
        self.transaction: _Transaction | None = None
        self.counters = _Counters()
        self.last_words = b""
        #: "TLSv1.3 TLS_AES_256_GCM_SHA384" once the session is encrypted (Received header)
        self.tls: str | None = None
        #: The user-store key of the authenticated user (SMTP AUTH), if any.
        self.user: str | None = None
        self.scope = trio.CancelScope()
        self.idle = False
        self.stopping = False

    def request_stop(self) -> None:
        self.stopping = True
        if self.idle:
            self.scope.cancel()

    # -- the loop --------------------------------------------------------------------

    async def run(self, refuse: Reply | None) -> None:
        self.log.info("connect from %s", self.client)
        try:
            with self.scope:
                if refuse is not None:
                    await self.wire.send(refuse, flush=True)
                    self.log.info("%s: refused: %d %s", self.client, refuse.code, refuse.text)
                    return
                await self.reply(220, f"{self.config.hostname} ESMTP sansmail")
                await self._loop()
            if self.scope.cancelled_caught:
                if self.stopping:
                    await self._send_hint(self._shutting_down_reply())
                else:
                    self.log.info("timeout after %s from %s", self._last_command(), self.client)
                    await self._send_hint(
                        Reply(
                            code=421,
                            lines=f"{self.config.hostname} Error: timeout exceeded",
                            enhanced="4.4.2",
                        )
                    )
        except RemoteProtocolError as exc:
            self.log.info("%s: protocol error: %s", self.client, exc)
            await self._send_hint(exc.reply_hint)
        except Exception:  # LocalProtocolError, or any other bug
            # A bug must cost one session, never the server: its task would otherwise
            # take the whole nursery down.
            self.log.exception("%s: internal error, closing", self.client)
            await self._send_hint(_INTERNAL_ERROR)
        except trio.Cancelled:
            # The shutdown grace period ran out with this session still busy.
            await self._send_hint(self._shutting_down_reply())
            raise
        finally:
            await self._abort_transaction()
            with trio.CancelScope(shield=True):
                await self.wire.aclose(last_words=self.last_words)
            self.log.info("disconnect from %s %s", self.client, self.counters.summary())

    def _shutting_down_reply(self) -> Reply:
        return Reply(
            code=421, lines=f"{self.config.hostname} Service shutting down", enhanced="4.3.2"
        )

    async def _loop(self) -> None:
        handlers: dict[type[smtp.Event], Callable[[Any], Awaitable[bool]]] = {
            smtp.Hello: self.on_hello,
            smtp.Mail: self.on_mail,
            smtp.Rcpt: self.on_rcpt,
            smtp.Data: self.on_data,
            smtp.Bdat: self.on_bdat,
            smtp.MessageData: self.on_message_data,
            smtp.EndOfMessage: self.on_end_of_message,
            smtp.EndOfChunk: self.on_end_of_chunk,
            smtp.InvalidMessage: self.on_invalid_message,
            smtp.Reset: self.on_reset,
            smtp.Noop: self.on_noop,
            smtp.Verify: self.on_verify,
            smtp.Help: self.on_help,
            smtp.Quit: self.on_quit,
            smtp.StartTLS: self.on_starttls,
            smtp.Auth: self.on_auth,
            smtp.InvalidCommand: self.on_invalid_command,
            smtp.ConnectionClosed: self.on_closed,
        }
        while True:
            event = await self._next_event()
            if event is PAUSED:
                # The core waits for something only we can do; nothing here leaves it
                # paused except a bug.
                raise LocalProtocolError(f"core paused in {self.conn.our_state}")
            assert isinstance(event, smtp.Event)
            if not await handlers[type(event)](event):
                return

    async def _next_event(self) -> object:
        tx = self.transaction
        idle = tx is None
        if idle:
            # Replies owed to the client (the 250 that ended its last transaction) leave
            # before the interruptible wait starts: shutdown cuts the wait, never a reply.
            await self.wire.flush()
            if self.stopping:
                self.scope.cancel()
                await trio.lowlevel.checkpoint()
        c = self.config.smtp
        timeout = (
            c.data_timeout if tx is not None and tx.delivery is not None else c.command_timeout
        )
        scope = self.scope
        scope.deadline = trio.current_time() + timeout
        self.idle = idle
        try:
            return await self.wire.next_event()
        finally:
            self.idle = False
            scope.deadline = math.inf

    # -- replies ---------------------------------------------------------------------

    async def reply(
        self, code: int, text: str | tuple[str, ...], enhanced: str | None = None
    ) -> None:
        await self.wire.send(Reply(code=code, lines=text, enhanced=enhanced))

    async def _send_hint(self, hint: object) -> None:
        # Sent by the final `aclose()`, after any replies still queued.
        if isinstance(hint, Reply):
            # Serialised outside the connection: it may be in ERROR, or mid-DATA, where
            # RFC 5321 still allows a closing 421 (§3.8) but the state tables do not.
            self.last_words = smtp.serialize_reply(
                hint, enhanced="ENHANCEDSTATUSCODES" in self.conn.extensions, utf8=False
            )

    def _last_command(self) -> str:
        return next(reversed(self.counters.counts), "CONNECT").upper()

    # -- command handlers: each returns False when the session is over ------------------

    async def on_hello(self, event: smtp.Hello) -> bool:
        self.counters.bump("ehlo" if event.extended else "helo")
        await self._abort_transaction()
        self.helo = event.domain
        if event.extended:
            tls_active = self.tls is not None
            auth = self.service.auth_offered(tls_active=tls_active, client_ip=self.peer[0])
            await self.wire.send(self.service.ehlo_reply(tls_active=tls_active, auth=auth))
        else:
            await self.wire.send(self.service.helo_reply)
        return True

    async def on_mail(self, event: smtp.Mail) -> bool:
        self.counters.bump("mail")
        if self.service.requires_auth and self.user is None:
            await self.wire.send(_AUTH_REQUIRED)
            return True
        if (
            self.user is not None
            and self.service.requires_auth
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
                self.log.info(
                    "%s: sender <%s> refused for user <%s>",
                    self.client,
                    _path(event.reverse_path),
                    self.user,
                )
                await self.wire.send(refusal)
                return True
        intake = self.service.intake
        qid = intake.queue.new_id() if intake is not None else new_queue_id()
        self.transaction = _Transaction(
            queue_id=qid,
            reverse_path=event.reverse_path,
            smtputf8=event.smtputf8,
            body_8bit=event.body == "8BITMIME",
            ret=event.parameters.get("RET"),
            envid=event.parameters.get("ENVID"),
        )
        await self.wire.send(_MAIL_OK)
        return True

    async def on_rcpt(self, event: smtp.Rcpt) -> bool:
        self.counters.bump("rcpt")
        tx = self.transaction
        assert tx is not None, "the core only passes RCPT inside a transaction"
        rcpt = event.forward_path
        intake = self.service.intake
        resolution = (
            intake.resolve(
                rcpt,
                restrictions=self.config.smtp.recipient_restrictions,
                sasl_authenticated=self.user is not None,
                client_ip=self.peer[0],
                users=self.service.users,
            )
            if intake is not None
            else _resolve_without_intake(self, rcpt)
        )
        for problem in resolution.problems:
            self.log.warning("%s: to=<%s>: aliases: %s", tx.queue_id, _path(rcpt), problem)
        reply = resolution.reply
        if resolution.accepted:
            for mailbox in resolution.local:
                tx.recipients.append((rcpt, mailbox))
            if resolution.remote or resolution.forward:
                assert intake is not None
                notify = _notify(event.parameters.get("NOTIFY"))
                orcpt = event.parameters.get("ORCPT")
                if resolution.remote:
                    if tx.relay is None:
                        tx.relay = _Outgoing(sender=tx.reverse_path)
                    for target in resolution.remote:
                        queued = QueuedRecipient(address=str(target), orcpt=orcpt, notify=notify)
                        tx.relay.recipients.append((target, queued))
                if resolution.forward:
                    if tx.forward is None:
                        tx.forward = _Outgoing(sender=intake.forward_sender(tx.reverse_path))
                    # RFC 3461 §4.2: the address the client gave is the original
                    # recipient of every address an alias turns it into.
                    orcpt = orcpt or "rfc822;" + _xtext(str(rcpt))
                    for target in resolution.forward:
                        queued = QueuedRecipient(address=str(target), orcpt=orcpt, notify=notify)
                        tx.forward.recipients.append((target, queued))
        else:
            self.log.info(
                "%s: from=<%s>, to=<%s>, client=%s, relay=none, status=rejected (%d %s %s)",
                tx.queue_id,
                _path(tx.reverse_path),
                _path(rcpt),
                self.client,
                reply.code,
                reply.enhanced,
                reply.text,
            )
        await self.wire.send(reply)
        return True

    async def on_data(self, event: smtp.Data) -> bool:
        self.counters.bump("data")
        await self.wire.send(_START_DATA)
        self._begin_delivery()
        return True

    async def on_bdat(self, event: smtp.Bdat) -> bool:
        self.counters.bump("bdat")
        tx = self.transaction
        assert tx is not None, "the core only passes BDAT inside a transaction"
        if tx.delivery is None:
            self._begin_delivery()
        tx.chunk_size = event.size
        return True

    def _begin_delivery(self) -> None:
        tx = self.transaction
        assert tx is not None
        assert not tx.empty
        tls = self.tls
        single = tx.recipients[0][0] if len(tx.recipients) == 1 and not tx.outgoing else None
        received = trace.received(
            helo=self.helo,
            client_ip=self.peer[0],
            client_name=None,
            by=self.config.hostname,
            protocol=trace.with_protocol(
                esmtp=self.conn.esmtp,
                tls=tls is not None,
                auth=self.user is not None,
                utf8=tx.smtputf8,
            ),
            queue_id=tx.queue_id,
            recipient=single,
            when=datetime.datetime.now().astimezone(),
            tls=tls,
        )
        if tx.recipients:
            mailboxes = list(dict.fromkeys(mailbox for _addr, mailbox in tx.recipients))
            prefix = trace.return_path(tx.reverse_path) + received
            tx.delivery = self.service.store.begin(mailboxes, prefix=prefix)
        else:
            tx.delivery = _NO_LOCAL_DELIVERY
        intake = self.service.intake
        for index, outgoing in enumerate(tx.outgoing):
            assert intake is not None
            # The second envelope (forwarded copies) needs its own queue id.
            qid = tx.queue_id if index == 0 else intake.queue.new_id()
            outgoing.writer = intake.queue.begin(qid)
            # The Return-Path is added at final delivery (RFC 5321 §4.4), never in transit.
            outgoing.writer.write(received)
            tx.writers.append(outgoing.writer)

    async def on_message_data(self, event: smtp.MessageData) -> bool:
        tx = self.transaction
        assert tx is not None
        assert tx.delivery is not None
        data = event.data
        spill = False
        if tx.recipients:
            tx.delivery.write(data)
            spill = tx.delivery.pending > SPILL_THRESHOLD
        for writer in tx.writers:
            writer.write(data)
            spill = spill or writer.pending > SPILL_THRESHOLD
        if spill:
            await trio.to_thread.run_sync(self._flush, tx)
        return True

    def _flush(self, tx: _Transaction) -> None:
        # Worker thread: hand buffered content to the tmp files.
        if tx.recipients and tx.delivery is not None:
            tx.delivery.flush()
        for writer in tx.writers:
            writer.flush()

    async def on_end_of_chunk(self, event: smtp.EndOfChunk) -> bool:
        tx = self.transaction
        assert tx is not None
        await self.reply(250, f"{tx.chunk_size} octets received", "2.0.0")
        return True

    def _commit(self, tx: _Transaction) -> list[QueuedMessage]:
        """Worker thread: make every copy durable; only then may the client hear 250.

        The queue copies are committed first and taken back if the local delivery then
        fails, so a 451 never leaves a queued copy behind that the client's retry would
        send a second time."""
        intake = self.service.intake
        queued: list[QueuedMessage] = []
        try:
            for outgoing in tx.outgoing:
                assert intake is not None
                assert outgoing.writer is not None
                envelope = QueuedMessage(
                    queue_id=outgoing.writer.queue_id,
                    sender="" if outgoing.sender is None else str(outgoing.sender),
                    arrival=time.time(),
                    size=0,
                    recipients=_unique(q for _a, q in outgoing.recipients),
                    ret=tx.ret,
                    envid=tx.envid,
                    smtputf8=tx.smtputf8,
                    body_8bit=tx.body_8bit,
                )
                queued.append(outgoing.writer.commit(envelope))
            if tx.recipients and tx.delivery is not None:
                tx.delivery.commit()
        except BaseException:
            for message in queued:
                assert intake is not None
                try:
                    intake.queue.delete(message.queue_id)
                except Exception:
                    self.log.exception("%s: cannot take back the queued copy", message.queue_id)
            raise
        return queued

    def _abort_all(self, tx: _Transaction) -> None:
        # Worker thread; safe at any point, also after a partial commit.
        if tx.delivery is not None and tx.recipients:
            tx.delivery.abort()
        for writer in tx.writers:
            writer.abort()

    async def on_end_of_message(self, event: smtp.EndOfMessage) -> bool:
        tx = self.transaction
        assert tx is not None
        assert tx.delivery is not None
        size = tx.delivery.size if tx.recipients else sum(w.size for w in tx.writers[:1])
        try:
            # Not cancellable: once the disk work started we wait for its verdict, so a
            # shutdown can never turn a stored message into an unacknowledged one twice.
            queued = await trio.to_thread.run_sync(self._commit, tx)
        except OSError as exc:
            await trio.to_thread.run_sync(self._abort_all, tx)
            tx.delivery = None
            self.log.error(
                "%s: from=<%s>, client=%s, size=%d, status=deferred (cannot store: %s)",
                tx.queue_id,
                _path(tx.reverse_path),
                self.client,
                size,
                exc,
            )
            self.transaction = None
            await self.reply(451, "Local error in processing, message not stored", "4.3.0")
            return True
        text = f"Ok: queued as {tx.queue_id}"
        for address, _mailbox in tx.recipients:
            self.log.info(
                "%s: from=<%s>, to=<%s>, client=%s, relay=local, size=%d,"
                " status=sent (250 2.0.0 %s)",
                tx.queue_id,
                _path(tx.reverse_path),
                _path(address),
                self.client,
                size,
                text,
            )
        for message in queued:
            self.log.info(
                "%s: from=<%s>, client=%s, size=%d, nrcpt=%d (queue active)",
                message.queue_id,
                _printable(message.sender),
                self.client,
                message.size,
                len(message.recipients),
            )
        if queued:
            assert self.service.intake is not None
            for message in queued:
                self.service.intake.wake(message.queue_id)
        tx.delivery = None
        self.transaction = None
        await self.reply(250, text, "2.0.0")
        return True

    async def on_invalid_message(self, event: smtp.InvalidMessage) -> bool:
        tx = self.transaction
        hint = event.reply_hint
        if tx is not None:
            for address, _mailbox in tx.recipients:
                self.log.info(
                    "%s: from=<%s>, to=<%s>, client=%s, relay=none, status=rejected (%d %s %s)",
                    tx.queue_id,
                    _path(tx.reverse_path),
                    _path(address),
                    self.client,
                    hint.code,
                    hint.enhanced or "",
                    hint.text,
                )
        await self._abort_transaction()
        await self.wire.send(hint)
        return True

    async def on_reset(self, event: smtp.Reset) -> bool:
        self.counters.bump("rset")
        await self._abort_transaction()
        await self.wire.send(_OK)
        return True

    async def on_noop(self, event: smtp.Noop) -> bool:
        self.counters.bump("noop")
        await self.wire.send(_OK)
        return True

    async def on_verify(self, event: smtp.Verify) -> bool:
        self.counters.bump("vrfy")
        await self.wire.send(_CANNOT_VRFY)
        return True

    async def on_help(self, event: smtp.Help) -> bool:
        self.counters.bump("help")
        await self.wire.send(_HELP_REPLY)
        return True

    async def on_quit(self, event: smtp.Quit) -> bool:
        self.counters.bump("quit")
        await self._abort_transaction()
        await self.wire.send(_BYE)
        return False

    async def on_starttls(self, event: smtp.StartTLS) -> bool:
        # RFC 3207. The core accepts STARTTLS only when our EHLO reply offered it, which
        # it does only with a certificate and before TLS.
        self.counters.bump("starttls")
        holder = self.service.tls
        assert holder is not None, "STARTTLS is never offered without a certificate"
        await self.wire.send(_READY_FOR_TLS, flush=True)
        try:
            with trio.fail_after(TLS_HANDSHAKE_TIMEOUT):
                # Plaintext the client pipelined behind STARTTLS makes the core raise
                # RemoteProtocolError here (an injection attempt): handled by run().
                await self.wire.start_tls(holder.context)
        except (trio.TooSlowError, trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
            self.log.info("%s: STARTTLS handshake failed: %s", self.client, exc or "timeout")
            return False
        stream = self.wire.stream
        assert isinstance(stream, trio.SSLStream)
        self.tls = received_tls(stream)
        # RFC 3207 §4.2: forget everything the client said before TLS.
        self.helo = ""
        self.user = None
        self.log.info("%s: STARTTLS: %s", self.client, describe(stream))
        return True

    async def on_invalid_command(self, event: smtp.InvalidCommand) -> bool:
        self.counters.bump("unknown" if event.reply_hint.code == 500 else "error")
        if (
            event.line[:5].upper() in (b"AUTH", b"AUTH ")
            and self.tls is None
            and self.service.tls is not None
            and self.service.mechanisms
            and not self.service.auth_offered(tls_active=False, client_ip=self.peer[0])
        ):
            # AUTH is not offered before TLS here: say why (RFC 4954 §6, 538).
            event = attrs.evolve(event, reply_hint=_ENCRYPTION_REQUIRED)
        self.log.info(
            "%s: %d %s %s: %s",
            self.client,
            event.reply_hint.code,
            event.reply_hint.enhanced or "",
            event.reason,
            _printable(event.line.decode("utf-8", "replace")[:100]),
        )
        await self.wire.send(event.reply_hint)
        return True

    async def on_auth(self, event: smtp.Auth) -> bool:
        """One SMTP AUTH exchange (RFC 4954 §4), driven by a `sansmail.sasl` mechanism;
        password checks and throttling by the shared auth service."""
        self.counters.bump("auth")
        service = self.service
        auth = service.auth
        assert auth is not None, "AUTH is never offered without the auth service"
        ip = self.peer[0]
        verdict = auth.begin(ip, trio.current_time())
        if not verdict.allowed:
            self.log.info(
                throttle_log_line(
                    service=service.service, client_ip=ip, retry_after=verdict.retry_after
                )
            )
            await self.wire.send(_AUTH_THROTTLED)
            return True
        if verdict.delay:
            await trio.sleep(verdict.delay)
        last: list[object] = []

        async def challenge(data: bytes) -> bytes | None:
            await self.wire.send(Reply.challenge(data))
            answer = await self._next_event()
            last[:] = [answer]
            return answer.data if isinstance(answer, smtp.AuthResponse) else None

        outcome = await run_exchange(
            mechanism=event.mechanism,
            initial_response=event.initial_response,
            auth=auth,
            users=service.users,
            hostname=self.config.hostname,
            client_ip=ip,
            challenge=challenge,
        )
        if outcome.unexpected_initial_response:
            await self.wire.send(_NO_INITIAL_RESPONSE)
            return True
        if outcome.user is not None:
            self.user = outcome.user
            self.log.info(
                "%s: authenticated as <%s> (%s)", self.client, outcome.user, outcome.mechanism
            )
            await self.wire.send(_AUTH_OK)
            return True
        if outcome.interrupted:
            answer = last[0] if last else None
            if isinstance(answer, smtp.InvalidAuthResponse):  # undecodable, too long
                await self.wire.send(answer.reply_hint)
                return True
            if isinstance(answer, smtp.AuthCancel | smtp.AuthResponse):
                await self.wire.send(_AUTH_CANCELLED)
                return True
            return False  # the client went away mid-exchange
        line = failure_log_line(
            service=service.service, method=outcome.mechanism, user=outcome.authcid, client_ip=ip
        )
        self.log.info(line)
        await trio.sleep(outcome.delay)
        await self.wire.send(_AUTH_FAILED)
        return True

    async def on_closed(self, event: smtp.ConnectionClosed) -> bool:
        if self.transaction is not None:
            self.log.info(
                "%s: lost connection from %s during transaction",
                self.transaction.queue_id,
                self.client,
            )
        return False

    async def _abort_transaction(self) -> None:
        tx, self.transaction = self.transaction, None
        if tx is not None and tx.delivery is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._abort_all, tx)


class _NoLocalDelivery:
    """Stands in for the store's `Delivery` when every recipient is remote, so "content
    has started" keeps one meaning (`tx.delivery is not None`) for the timeouts."""

    size = 0
    pending = 0


_NO_LOCAL_DELIVERY: Any = _NoLocalDelivery()


def _resolve_without_intake(session: _Session, rcpt: Address) -> Resolution:
    decision = evaluate_recipient(
        rcpt,
        restrictions=session.config.smtp.recipient_restrictions,
        sasl_authenticated=session.user is not None,
        client_ip=session.peer[0],
        mynetworks=session.config.mynetworks,
        domains=session.config.domains,
        user_exists=session.service.users.__contains__,
        recipient_delimiter=session.config.recipient_delimiter,
    )
    if decision.remote:
        return Resolution(reply=_NO_RELAY)
    local = (decision.mailbox,) if decision.mailbox is not None else ()
    return Resolution(reply=decision.reply, local=local)


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
