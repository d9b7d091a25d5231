"""`SmtpSession`: one SMTP conversation, command by command (see the package docstring)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sansmail import SERVER, smtp
from sansmail.mail import trace
from sansmail.mail.address import Address, AddressError, MailboxId, parse_address
from sansmail.mail.authres import remove_claiming_fields
from sansmail.mail.envelope import QueuedRecipient
from sansmail.mail.headeredit import apply_edits
from sansmail.mail.logtext import LogSink, command_for_log, printable
from sansmail.mail.policy import check_sender_login, in_networks
from sansmail.mail.recipients import Resolution
from sansmail.sessions.common import Refusal, refusal_text
from sansmail.sessions.login import Exchange, Login, Result
from sansmail.sessions.smtpd._checks import CLIENT_NAME, Inquiry, Stage, Verdict
from sansmail.sessions.smtpd._observer import reason_of
from sansmail.sessions.smtpd._replies import (
    AUTH_CANCELLED,
    AUTH_FAILED,
    AUTH_OK,
    AUTH_REQUIRED,
    AUTH_THROTTLED,
    BYE,
    CANNOT_VRFY,
    ENCRYPTION_REQUIRED,
    HELP_REPLY,
    INTERNAL_ERROR,
    MAIL_OK,
    NO_INITIAL_RESPONSE,
    OK,
    READY_FOR_TLS,
    START_DATA,
)
from sansmail.sessions.smtpd._service import SmtpService
from sansmail.sessions.smtpd._transaction import (
    Committed,
    Outgoing,
    Storing,
    Transaction,
    header_end,
    notify_values,
    storage_reply,
    store_all,
    xtext,
)
from sansmail.smtp import Reply

__all__ = ["HEADER_LIMIT", "SmtpSession"]

#: The header section is held in memory until its end, for the END_OF_HEADERS checks; a
#: longer one counts as ended here (Postfix's header_size_limit is 100 KiB per field).
HEADER_LIMIT = 1024 * 1024


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
        self.client_port = client_port
        self.client = f"[{client_ip}]:{client_port}"
        self.conn = smtp.Connection(SERVER, config=service.core_config, tls_active=tls is not None)
        #: "TLSv1.3 TLS_AES_256_GCM_SHA384" once the session is encrypted.
        self.tls = tls
        self.helo = ""
        #: The user-store key of the authenticated user (SMTP AUTH), if any.
        self.user: str | None = None
        #: The SASL mechanism the user logged in with (milters' {auth_type}).
        self.auth_mechanism: str | None = None
        self.transaction: Transaction | None = None
        #: The session is over: the adapter closes after sending what it has.
        self.ended = False
        #: What the checks' inquiries found out, by the check's own keys (`Inquiring`).
        self.findings: dict[str, Any] = {}
        #: The wall clock given with the last inquiries (`SessionView.now`).
        self.now = 0.0
        self._counters: dict[str, int] = {}
        # Transactions that died with files started: `cleanup` removes them.
        self._dead: list[Transaction] = []
        self._inquiring = service.inquiring
        self._observer = service.observer
        # The RCPT being inquired about, and its resolution (see `inquiries`).
        self._resolved: tuple[smtp.Rcpt, Resolution] | None = None
        # Whether each local mailbox of that RCPT goes through Sieve, asked by `look_up`.
        self._sieve_known: dict[MailboxId, bool] = {}

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

    @property
    def trusted(self) -> bool:
        """Authenticated, or in mynetworks: the sender checks leave the client be, as
        Postfix's permit_sasl_authenticated and permit_mynetworks come before them."""
        return self.user is not None or in_networks(self.client_ip, self.config.mynetworks)

    @property
    def client_name(self) -> str | None:
        """The client's forward-confirmed reverse DNS name, when a check found one."""
        name = self.findings.get(CLIENT_NAME)
        return name if isinstance(name, str) else None

    def inquiries(
        self, stage: Stage, command: smtp.Event | None = None, now: float = 0.0
    ) -> list[Inquiry]:
        """What the adapter must find out (DNS, milters, blocking errands) before it
        lets `stage` be asked: at CONNECT before `greeting`, at HELO, MAIL and RCPT
        before `handle` of that `command` (with the same `now`), at END_OF_DATA before
        `finish`. The inquiries write into `findings`; carry them all out, then go on.
        A recipient that is refused anyway (unknown user, relay denied) asks nothing:
        its resolution is kept for `handle`, as Postfix's restrictions come before
        its policy services."""
        self.now = now
        if not self._inquiring:
            return []
        if stage is Stage.RCPT and isinstance(command, smtp.Rcpt):
            resolution = self._resolve(command, now)
            if not resolution.accepted:
                return []
        found: list[Inquiry] = []
        for check in self._inquiring:
            found.extend(check.inquiries(stage, self, command))
        return found

    def greeting(self) -> Reply:
        """The 220, or a CONNECT check's refusal (then the session ends)."""
        self.log(logging.INFO, f"connect from {self.client}")
        refusal = self._check(Stage.CONNECT)
        if refusal is not None:
            self.ended = True
            return refusal
        return self.service.greeting_reply

    def refuse(self, refusal: Refusal) -> Reply:
        """Greet with a 421 instead (connection limits, shutdown) and end."""
        text = refusal_text(refusal, hostname=self.config.hostname, client_ip=self.client_ip)
        # RFC 3463: 4.3.2 "system not accepting network messages"; 4.7.0 for a policy.
        enhanced = "4.3.2" if refusal is Refusal.SHUTTING_DOWN else "4.7.0"
        reply = Reply(code=421, lines=text, enhanced=enhanced)
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

    def internal_error(self) -> Reply:
        """A bug ended the session (the adapter logs the traceback)."""
        return INTERNAL_ERROR

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
            return START_DATA
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
            return OK
        if isinstance(event, smtp.Noop):
            self._bump("noop")
            return OK
        if isinstance(event, smtp.Verify):
            self._bump("vrfy")
            return CANNOT_VRFY
        if isinstance(event, smtp.Help):
            self._bump("help")
            return HELP_REPLY
        if isinstance(event, smtp.Quit):
            self._bump("quit")
            self._kill_transaction()
            self.ended = True
            return BYE
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
            return self.service.helo_reply
        tls_active = self.tls is not None
        auth = self.service.auth_offered(tls_active=tls_active, client_ip=self.client_ip)
        return self.service.ehlo_reply(tls_active=tls_active, auth=auth)

    def _mail(self, event: smtp.Mail) -> Reply:
        self._bump("mail")
        service = self.service
        if service.requires_auth and self.user is None:
            self._observer.rejected(stage="mail", reason="auth_required", code=AUTH_REQUIRED.code)
            return AUTH_REQUIRED
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
                self._observer.rejected(stage="mail", reason="sender_mismatch", code=refusal.code)
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
        return MAIL_OK

    def look_up(self, event: smtp.Rcpt, now: float) -> None:
        """BLOCKING: what RCPT `event` needs of the stores (the recipient's resolution,
        and whether its mailboxes' mail goes through Sieve), kept for `inquiries` and
        `handle` of the same event, so that those then block on nothing. An adapter
        whose stores answer over the network (`SmtpService.lookups_block`) calls it in
        a worker thread before them; without it they ask as they go."""
        if self.service.catch_up is not None:
            self.service.catch_up()
        resolution = self._resolve(event, now)
        self._sieve_known = {m: self.service.through_sieve(m) for m in resolution.local}

    def _rcpt(self, event: smtp.Rcpt, now: float) -> Reply:
        self._bump("rcpt")
        tx = self.transaction
        assert tx is not None, "the core only passes RCPT inside a transaction"
        rcpt = event.forward_path
        resolution = self._resolve(event, now)
        sieve_known, self._resolved, self._sieve_known = self._sieve_known, None, {}
        for problem in resolution.problems:
            self.log(logging.WARNING, f"{tx.queue_id}: to=<{_path(rcpt)}>: aliases: {problem}")
        reply = resolution.reply
        if not resolution.accepted:
            self._observer.rejected(stage="rcpt", reason=_rcpt_reason(reply), code=reply.code)
        else:
            tx.rcpt.append(rcpt)
            refusal = self._check(Stage.RCPT)
            if refusal is not None:
                tx.rcpt.pop()
                reply = refusal
            else:
                self._take(tx, rcpt, resolution, event.parameters, now, sieve_known=sieve_known)
        if not reply.is_positive:
            self._log_rejected(tx, rcpt, reply)
        return reply

    def _change_envelope(self, tx: Transaction, now: float) -> None:
        """A check's ADDRCPT, DELRCPT and CHGFROM, before the copies start: the envelope
        is made again from the recipients that stay and the ones added. Added ones are
        resolved as an authenticated client's would be (Postfix applies no restriction
        to a milter's recipients); one that resolves nowhere is logged and left out."""
        if tx.new_sender is not None:
            sender = _milter_address(tx.new_sender)
            if sender is None and tx.new_sender.strip("<> "):
                self.log(logging.WARNING, f"{tx.queue_id}: sender change to"
                         f" {printable(tx.new_sender)!r} ignored: not an address")  # fmt: skip
            else:
                self.log(
                    logging.INFO,
                    f"{tx.queue_id}: sender changed from <{_path(tx.reverse_path)}>"
                    f" to <{_path(sender)}>",
                )
                tx.reverse_path = sender
        deleted = {text.strip().strip("<>").lower() for text in tx.deleted}
        kept = [entry for entry in tx.taken if str(entry[0]).lower() not in deleted]
        for address, _resolution, _parameters in tx.taken:
            if str(address).lower() in deleted:
                self.log(logging.INFO, f"{tx.queue_id}: recipient <{_path(address)}> deleted")
        for text in tx.added:
            added = _milter_address(text)
            if added is None:
                self.log(logging.WARNING, f"{tx.queue_id}: recipient {printable(text)!r}"
                         " not added: not an address")  # fmt: skip
                continue
            address = added
            resolution = self.service.resolve(
                address, sasl_authenticated=True, client_ip=self.client_ip, now=now
            )
            if not resolution.accepted:
                self.log(
                    logging.WARNING,
                    f"{tx.queue_id}: recipient <{_path(address)}> not added:"
                    f" {resolution.reply.code} {resolution.reply.text}",
                )
                continue
            self.log(logging.INFO, f"{tx.queue_id}: recipient <{_path(address)}> added")
            kept.append((address, resolution, {}))
        tx.taken, tx.rcpt, tx.recipients, tx.sieved = [], [], [], []
        tx.relay = tx.forward = None
        for address, resolution, parameters in kept:
            tx.rcpt.append(address)
            self._take(tx, address, resolution, parameters, now)

    def _resolve(self, event: smtp.Rcpt, now: float) -> Resolution:
        """The recipient's resolution, made once for `inquiries` and `handle`."""
        if self._resolved is not None and self._resolved[0] is event:
            return self._resolved[1]
        resolution = self.service.resolve(
            event.forward_path,
            sasl_authenticated=self.user is not None,
            client_ip=self.client_ip,
            now=now,
        )
        self._resolved = (event, resolution)
        return resolution

    def _take(
        self,
        tx: Transaction,
        rcpt: Address,
        resolution: Resolution,
        parameters: Mapping[str, str | None],
        now: float,
        *,
        sieve_known: Mapping[MailboxId, bool] | None = None,
    ) -> None:
        """Take `rcpt` into `tx`; `sieve_known` (from `look_up`) says for some of its
        mailboxes whether their mail goes through Sieve, the others are asked now."""
        sieve_known = sieve_known or {}
        tx.taken.append((rcpt, resolution, {k: v for k, v in parameters.items() if v is not None}))
        notify = notify_values(parameters.get("NOTIFY"))
        orcpt = parameters.get("ORCPT")
        for mailbox in resolution.local:
            sieved = sieve_known.get(mailbox)
            if sieved is None:
                sieved = self.service.through_sieve(mailbox)  # BLOCKING: one stat
            if sieved:
                queued = _sieve_recipient(
                    rcpt, mailbox, orcpt, notify, delimiters=self.config.recipient_delimiter
                )
                tx.sieved.append((rcpt, mailbox, queued))
            else:
                tx.recipients.append((rcpt, mailbox))
        if not (resolution.remote or resolution.forward):
            return
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
            orcpt = orcpt or "rfc822;" + xtext(str(rcpt))
            for target in resolution.forward:
                queued = QueuedRecipient(address=str(target), orcpt=orcpt, notify=notify)
                tx.forward.recipients.append((target, queued))

    def _invalid_message(self, event: smtp.InvalidMessage) -> Reply:
        tx = self.transaction
        hint = event.reply_hint
        self._observer.rejected(
            stage="data", reason="size" if hint.enhanced == "5.3.4" else "other", code=hint.code
        )
        if tx is not None:
            for address, _mailbox in tx.recipients:
                self._log_rejected(tx, address, hint)
            for address, _mailbox, _queued in tx.sieved:
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
            hint = ENCRYPTION_REQUIRED
        line = command_for_log(event.line)
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
        return READY_FOR_TLS

    def tls_started(self, description: str, log_description: str) -> None:
        """The handshake succeeded (`description` goes into Received headers)."""
        self.tls = description
        # RFC 3207 §4.2: forget everything the client said before TLS.
        self.helo = ""
        self.user = None
        self.auth_mechanism = None
        self.log(logging.INFO, f"{self.client}: STARTTLS: {log_description}")

    def tls_failed(self, reason: str) -> None:
        self.log(logging.INFO, f"{self.client}: STARTTLS handshake failed: {reason}")
        self.ended = True

    def login_refusal(self, event: smtp.Auth) -> Reply | None:
        """An AUTH command (RFC 4954 §4) the core accepted: nothing more to refuse (the
        core refuses what our EHLO reply did not offer)."""
        self._bump("auth")
        return None

    def login(self) -> Login:
        """The shared login rules for this client (throttle, delays, fail2ban lines)."""
        return Login.on(self.service, client_ip=self.client_ip, log=self.log)

    def throttled(self, event: smtp.Auth) -> Reply:
        return AUTH_THROTTLED

    def exchange(self, event: smtp.Auth, login: Login, *, nonce: str, now: float) -> Exchange:
        """The AUTH exchange, once the gate let it through: 334 challenges."""
        return login.sasl(event.mechanism, event.initial_response, nonce=nonce, timestamp=int(now))

    def challenge(self, data: bytes) -> Reply:
        return Reply.challenge(data)

    def answer(self, event: object) -> bytes | None:
        return event.data if isinstance(event, smtp.AuthResponse) else None

    def login_result(self, event: smtp.Auth, result: Result, last: object) -> Reply | None:
        """The reply to an AUTH exchange that ended with `result`; `last` is the last
        event the core gave during it. None: the client went away (the session ends)."""
        if result.unexpected_initial_response:
            return NO_INITIAL_RESPONSE
        if result.user is not None:
            self.user = result.user
            self.auth_mechanism = result.mechanism
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
        if tx.message is not None:
            # Held for END_OF_DATA: the copies start in `finish`. The core has bounded
            # the message by max_message_size.
            start = max(0, len(tx.message) - 3)
            tx.message += data
            if not tx.headers_done:
                end = header_end(tx.message, start)
                if end >= 0 or len(tx.message) >= HEADER_LIMIT:
                    tx.headers = bytearray(tx.message[: end if end >= 0 else HEADER_LIMIT])
                    tx.headers_done = True
                    tx.refusal = self._check(Stage.END_OF_HEADERS, tx)
            return False
        if not tx.headers_done:
            headers = tx.headers
            start = max(0, len(headers) - 3)
            headers += data
            end = header_end(headers, start)
            if end < 0:
                if len(headers) < HEADER_LIMIT:
                    return False
                end = len(headers)
            content = bytes(headers)
            del headers[end:]  # the checks see the header section, no more
            tx.headers_done = True
            tx.refusal = self._check(Stage.END_OF_HEADERS, tx)
            self._start_files(tx, now)
            return tx.write(self._own_header(tx, content[:end]) + content[end:])
        return tx.write(data)

    def flush(self) -> None:
        """Blocking: hand buffered content to the tmp files. A failure (a full disk, an
        I/O error) is not the client's: every file of the transaction is removed at
        once, so a full disk is not kept full by a message that cannot be stored, and
        the rest of the content is read and dropped until its end, which `finish`
        answers with a temporary failure (never 250)."""
        tx = self.transaction
        assert tx is not None
        if tx.failed is not None:
            return
        try:
            tx.flush()
        except OSError as exc:
            tx.failed = exc
            tx.abort()
            self.log(
                logging.ERROR,
                f"{tx.queue_id}: cannot write the message: {exc}; the rest is dropped",
            )

    def commit(self, now: float) -> Committed:
        """Blocking: the message ended (CRLF.CRLF, or BDAT LAST). Make every copy durable,
        and only then return the 250 (see the module docstring); any failure returns the
        451 with nothing stored. The transaction is over either way. This is `finish`,
        `store_all` and `stored` in one, for an adapter that commits one message at a
        time."""
        job = self.finish(now)
        if isinstance(job, Committed):
            self.cleanup()
            return job
        store_all([job])
        return self.stored(job)

    def finish(self, now: float) -> Committed | Storing:
        """The message ended (CRLF.CRLF, or BDAT LAST); no I/O. Either the answer at once
        (a refusal; the files are left to `cleanup`), or the `Storing` to make durable with
        `store_all` (blocking; an adapter may batch the jobs of several sessions into one
        call) and then hand to `stored` for the reply. The transaction is over either
        way."""
        tx = self.transaction
        assert tx is not None
        assert tx.receiving
        if tx.failed is not None:
            # `flush` failed and removed the files; no check need see the message.
            self.transaction = None
            return Committed(self._not_stored(tx, tx.failed))
        if tx.message is None and not tx.headers_done:
            # Content ended inside the header section (or there was none).
            tx.headers_done = True
            tx.refusal = self._check(Stage.END_OF_HEADERS, tx)
            self._start_files(tx, now)
            tx.write(self._own_header(tx, bytes(tx.headers)))
        elif tx.message is not None and not tx.headers_done:
            tx.headers = bytearray(tx.message)
            tx.headers_done = True
            tx.refusal = self._check(Stage.END_OF_HEADERS, tx)
        refusal = tx.refusal or self._check(Stage.END_OF_DATA, tx)
        self.transaction = None
        if refusal is not None:
            self._dead.append(tx)
            for address in tx.rcpt:
                self._log_rejected(tx, address, refusal)
            return Committed(refusal)
        if tx.added or tx.deleted or tx.new_sender is not None:
            self._change_envelope(tx, now)
            if tx.empty:
                tx.discard = True  # every recipient deleted: nobody to deliver to
        if tx.discard:
            if not tx.rcpt:
                self.log(
                    logging.INFO,
                    f"{tx.queue_id}: from=<{_path(tx.reverse_path)}>, client={self.client},"
                    " status=discarded (no recipient left)",
                )
            for address in tx.rcpt:
                self.log(
                    logging.INFO,
                    f"{tx.queue_id}: from=<{_path(tx.reverse_path)}>, to=<{_path(address)}>,"
                    f" client={self.client}, relay=none, status=discarded",
                )
            self._dead.append(tx)
            return Committed(
                Reply(code=250, lines=f"Ok: queued as {tx.queue_id}", enhanced="2.0.0")
            )
        if tx.message is not None:
            self._start_files(tx, now)
            message, tx.message = bytes(tx.message), None
            end = header_end(bytearray(message), 0)
            end = len(message) if end < 0 else end
            header = self._own_header(tx, message[:end])
            if tx.new_body is None:
                body = message[end:]
            elif header.endswith(b"\r\n\r\n") or header == b"\r\n":
                body = tx.new_body
            else:  # a message of header fields only gains the empty line
                body = b"\r\n" + tx.new_body
            tx.write(header + body)
        if tx.quarantine is not None:
            self.log(logging.INFO, f"{tx.queue_id}: quarantined (Junk): {tx.quarantine}")
        service = self.service
        return Storing(tx, store=service.store, queue=service.queue, now=now, log=self.log)

    def stored(self, job: Storing) -> Committed:
        """The reply, and the log lines, for a job `store_all` has run: the 250 if every
        copy is durable, else the 451 (nothing of the message is left)."""
        tx = job.transaction
        size = tx.size
        if job.error is not None:
            return Committed(self._not_stored(tx, job.error))
        self._observer.stored(local=len(tx.recipients), arrival=job.now)
        text = f"Ok: queued as {tx.queue_id}"
        for address, _mailbox in tx.recipients:
            self.log(
                logging.INFO,
                f"{tx.queue_id}: from=<{_path(tx.reverse_path)}>, to=<{_path(address)}>,"
                f" client={self.client}, relay=local, size={size},"
                f" status=sent (250 2.0.0 {text})",
            )
        for message in tx.queued:
            self.log(
                logging.INFO,
                f"{message.queue_id}: from=<{printable(message.sender)}>,"
                f" client={self.client}, size={message.size},"
                f" nrcpt={len(message.recipients)} (queue active)",
            )
        return Committed(
            Reply(code=250, lines=text, enhanced="2.0.0"),
            tuple(m.queue_id for m in tx.queued),
        )

    def _not_stored(self, tx: Transaction, error: OSError) -> Reply:
        reply = storage_reply(error)
        self._observer.rejected(stage="end-of-data", reason="storage", code=reply.code)
        self.log(
            logging.ERROR,
            f"{tx.queue_id}: from=<{_path(tx.reverse_path)}>, client={self.client},"
            f" size={tx.size}, status=deferred (cannot store: {error}; {reply.code}"
            f" {reply.enhanced})",
        )
        return reply

    def cleanup(self) -> None:
        """Blocking: remove the files of transactions that died (RSET, a new EHLO, a
        refused or broken message, a lost connection). Safe at any point."""
        dead, self._dead = self._dead, []
        for tx in dead:
            tx.abort()

    # -- internals ----------------------------------------------------------------------

    def _begin_content(self) -> None:
        tx = self.transaction
        assert tx is not None
        assert not tx.empty
        tx.receiving = True
        if any(check.wants_message(self) for check in self._inquiring):
            tx.message = bytearray()

    def _own_header(self, tx: Transaction, section: bytes) -> bytes:
        """The message's header section as stored: Authentication-Results fields that
        claim our host name dropped (RFC 8601 §5: only we may write them), then the
        checks' edits."""
        section = remove_claiming_fields(section, self.config.hostname)
        return apply_edits(section, tx.header_edits) if tx.header_edits else section

    def _start_files(self, tx: Transaction, now: float) -> None:
        """Start the copies with Return-Path (local only), the checks' fields and
        Received."""
        # A single local recipient is named in Received whether its copy is stored now or
        # queued for its Sieve scripts.
        local = [*tx.recipients, *((a, m) for a, m, _q in tx.sieved)]
        single = local[0][0] if len(local) == 1 and not tx.outgoing else None
        fields = b"".join(f"{name}: {text}\r\n".encode() for name, text in tx.added_fields)
        received = fields + trace.received(
            helo=self.helo,
            client_ip=self.client_ip,
            client_name=self.client_name,
            by=self.config.hostname,
            protocol=trace.with_protocol(
                esmtp=self.conn.esmtp,
                tls=self.tls is not None,
                auth=self.user is not None,
                utf8=tx.smtputf8,
            ),
            queue_id=tx.queue_id,
            recipient=single,
            when=self.service.local_time(now),
            tls=self.tls,
        )
        tx.start(self.service.store, self.service.queue, received)

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
            self._observe(verdict, stage)
            late = stage is Stage.END_OF_DATA
            if verdict.header_fields:
                if tx is None or (late and tx.message is None):
                    raise ValueError(
                        f"{verdict.source}: header fields at {stage.value} are not supported"
                        " (without the message held)"
                    )
                tx.added_fields.extend(verdict.header_fields)
            if verdict.header_edits:
                if (
                    tx is None
                    or stage not in (Stage.END_OF_HEADERS, Stage.END_OF_DATA)
                    or (late and tx.message is None)
                ):
                    raise ValueError(f"{verdict.source}: header edits at {stage.value}")
                tx.header_edits.extend(verdict.header_edits)
            if verdict.body is not None or verdict.quarantine or verdict.discard:
                if tx is None or not late or tx.message is None:
                    raise ValueError(
                        f"{verdict.source}: body, quarantine and discard need the message held"
                    )
                if verdict.body is not None:
                    tx.new_body = verdict.body
                tx.quarantine = tx.quarantine or verdict.quarantine
                tx.discard = tx.discard or verdict.discard
            if (
                verdict.add_recipients
                or verdict.delete_recipients
                or verdict.new_sender is not None
            ):
                if tx is None or not late or tx.message is None:
                    raise ValueError(f"{verdict.source}: envelope changes need the message held")
                tx.added.extend(verdict.add_recipients)
                tx.deleted.extend(verdict.delete_recipients)
                if verdict.new_sender is not None:
                    tx.new_sender = verdict.new_sender
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

    def _observe(self, verdict: Verdict, stage: Stage) -> None:
        observer = self._observer
        for method, result in verdict.results:
            observer.verdict(method, result)
        source = verdict.source
        reason = reason_of(source)
        if verdict.reply is not None:
            observer.rejected(stage=stage.value, reason=reason, code=verdict.reply.code)
        # The filters' own actions (the sender checks report theirs in `results`).
        if reason == "greylist":
            observer.verdict(reason, "passed" if verdict.reply is None else "greylisted")
        elif reason == "milter":
            if verdict.reply is not None:
                observer.verdict(reason, "tempfail" if verdict.reply.code < 500 else "reject")
            elif verdict.discard:
                observer.verdict(reason, "discard")
            elif verdict.quarantine is not None:
                observer.verdict(reason, "quarantine")

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


def _rcpt_reason(reply: Reply) -> str:
    """The reason a recipient the resolution refused is counted under."""
    enhanced = reply.enhanced or ""
    if enhanced.endswith(".7.1"):  # relay access denied, access denied (restrictions)
        return "relay_denied"
    if enhanced.endswith(".1.1"):
        return "unknown_user"
    if enhanced.endswith(".2.2"):
        return "mailbox_full"
    return "other"


def _sieve_recipient(
    rcpt: Address,
    mailbox: MailboxId,
    orcpt: str | None,
    notify: tuple[str, ...],
    *,
    delimiters: str,
) -> QueuedRecipient:
    """The queued recipient for `mailbox`'s delivery through its scripts. The envelope
    "to" the scripts see is the address as given when it names the mailbox itself
    (``bob+lists@`` for ``bob``); an alias's target is the mailbox's own address, with
    the address given as the original recipient (RFC 3461 §4.2), as Postfix hands an
    expanded alias to Dovecot's LDA."""
    local = rcpt.local_part.lower()
    detail = local[len(mailbox.local) :] if local.startswith(mailbox.local) else None
    own = rcpt.domain.lower() == mailbox.domain and (
        detail == "" or (detail is not None and detail[0] in delimiters)
    )
    if own:
        return QueuedRecipient(address=str(rcpt), orcpt=orcpt, notify=notify, mailbox=mailbox)
    return QueuedRecipient(
        address=f"{mailbox.local}@{mailbox.domain}",
        orcpt=orcpt or "rfc822;" + xtext(str(rcpt)),
        notify=notify,
        mailbox=mailbox,
    )


def _milter_address(text: str) -> Address | None:
    """An address as a milter writes one ("<a@b>" or "a@b"); None for "<>" or junk."""
    bare = text.strip()
    if bare.startswith("<") and bare.endswith(">"):
        bare = bare[1:-1]
    if not bare:
        return None
    try:
        return parse_address(bare)
    except AddressError:
        return None


def _path(address: Address | None) -> str:
    return "" if address is None else printable(str(address))
