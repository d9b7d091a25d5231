"""`SmtpService`: what the sessions of one listener share: configuration, the stores,
the auth service, the checks, and the decisions that depend on nothing else (the EHLO
offer, where a recipient goes, the sender of forwarded copies)."""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable, Sequence

import attrs

from sansmail import sasl, smtp
from sansmail.config import Config
from sansmail.mail import srs
from sansmail.mail.address import Address, MailboxId
from sansmail.mail.auth import AuthService, password_allowed
from sansmail.mail.recipients import Resolution, resolve_recipient
from sansmail.sessions.lda import wants_sieve
from sansmail.sessions.smtpd._checks import Check, Inquiring
from sansmail.sessions.smtpd._observer import NO_OBSERVER, SmtpObserver
from sansmail.smtp import Reply
from sansmail.storage.aliasfile import Aliases
from sansmail.storage.maildir import MailStore
from sansmail.storage.queue import Queue
from sansmail.storage.sieve import SieveStore
from sansmail.storage.users import Users, UsersUnavailableError

__all__ = ["SUBMISSION_SERVICES", "SmtpService"]

SUBMISSION_SERVICES = ("submission", "submissions")


@attrs.define
class SmtpService:
    """Everything the sessions of one listener (`smtp`, `submission`, `submissions`)
    share: configuration, stores, the auth service, and the checks."""

    config: Config
    store: MailStore
    users: Users
    queue: Queue
    aliases: Aliases
    auth: AuthService
    srs_key: bytes
    service: str = "smtp"
    #: A certificate exists, so STARTTLS may be offered on a plaintext link.
    tls_available: bool = True
    checks: Sequence[Check] = ()
    #: Whether a mailbox is at its storage limit (`MailStore.full`); None: no quota.
    mailbox_full: Callable[[MailboxId], bool] | None = None
    #: Whether a mailbox's mail goes through Sieve (`sansmail.sessions.lda.wants_sieve`:
    #: an active script, or ``[sieve] before``); BLOCKING, one stat. None: made from
    #: `config` on first use.
    sieve_wants: Callable[[MailboxId], bool] | None = None
    #: Told what the sessions decide (the server's metrics); by default nobody.
    observer: SmtpObserver = NO_OBSERVER
    #: The users, aliases, quota and Sieve lookups of a RCPT make network round trips
    #: (the PostgreSQL backend), so the adapter makes them in a worker thread
    #: (`SmtpSession.look_up`) rather than on its event loop; the Maildir backend's
    #: are memory reads and one stat, made where they are needed.
    lookups_block: bool = False
    #: BLOCKING, called first by `look_up`: brings the users and aliases up to date with
    #: changes committed elsewhere whose notice has not arrived yet (the PostgreSQL
    #: backend's `account_changes` serials, one query), so that a change made before the
    #: RCPT is in force for it on every node. None: the stores follow their changes
    #: themselves (the Maildir backend's generations counter).
    catch_up: Callable[[], None] | None = None
    _ehlo_cache: dict[tuple[bool, bool], Reply] = attrs.field(factory=dict, init=False)
    _core_config: smtp.Config | None = attrs.field(default=None, init=False)
    _greeting: Reply | None = attrs.field(default=None, init=False)
    _stamp: tuple[int, datetime.datetime] = attrs.field(
        default=(-1, datetime.datetime.min), init=False
    )
    _helo: Reply | None = attrs.field(default=None, init=False)
    _inquiring: tuple[Inquiring, ...] | None = attrs.field(default=None, init=False)

    @property
    def inquiring(self) -> tuple[Inquiring, ...]:
        """The checks that inquire (`Inquiring`), worked out once: an isinstance against
        a runtime Protocol costs microseconds a check, and every connection asked."""
        if self._inquiring is None:
            self._inquiring = tuple(c for c in self.checks if isinstance(c, Inquiring))
        return self._inquiring

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

    @property
    def greeting_reply(self) -> Reply:
        """The 220 every connection is greeted with (built once: a validated Reply per
        connection showed in the profile)."""
        if self._greeting is None:
            self._greeting = Reply(code=220, lines=f"{self.config.hostname} ESMTP sansmail")
        return self._greeting

    @property
    def helo_reply(self) -> Reply:
        """The 250 to HELO (RFC 5321 §4.1.1.1: the server's name, no extensions)."""
        if self._helo is None:
            self._helo = Reply(code=250, lines=self.config.hostname)
        return self._helo

    def local_time(self, now: float) -> datetime.datetime:
        """`now` (seconds since the epoch) as an aware local time, to the second: what a
        Received field shows. Made once per second (time zone conversion costs more
        than the rest of the field)."""
        second = int(now)
        stamp = self._stamp
        if stamp[0] != second:
            stamp = self._stamp = (second, datetime.datetime.fromtimestamp(second).astimezone())
        return stamp[1]

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

    def through_sieve(self, mailbox: MailboxId) -> bool:
        """BLOCKING (one stat of the mailbox's active script link, made at RCPT beside
        the quota file read of `resolve`): whether mail for `mailbox` is queued for the
        queue runner's delivery through its Sieve scripts instead of stored at once."""
        if self.sieve_wants is None:
            scripts = SieveStore(self.config.data_dir)
            self.sieve_wants = functools.partial(wants_sieve, self.config, scripts)
        return self.sieve_wants(mailbox)

    def resolve(
        self, rcpt: Address, *, sasl_authenticated: bool, client_ip: str, now: float
    ) -> Resolution:
        """One RCPT TO: restrictions, users, aliases, SRS and full mailboxes
        (`resolve_recipient`). May read an aliases ``:include:`` file the first time it
        is used (then cached), and reads a limited mailbox's small quota file."""
        try:
            return self._resolve(rcpt, sasl_authenticated, client_ip, now)
        except UsersUnavailableError:
            # users.json is broken with no good copy: deferring keeps the mail (RFC 5321
            # §4.2.1 451, RFC 3463 X.3.0), a 550 would bounce it.
            return Resolution(
                reply=Reply(code=451, lines="user database unavailable", enhanced="4.3.0")
            )

    def _resolve(
        self, rcpt: Address, sasl_authenticated: bool, client_ip: str, now: float
    ) -> Resolution:
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
            mailbox_full=self.mailbox_full,
        )

    def forward_sender(self, reverse_path: Address | None, now: float) -> Address | None:
        """The envelope sender for copies an alias forwards outside
        (`srs.forward_sender`: SRS at our first domain; the null sender and our own
        stay as they are), as a Sieve redirect's (`sansmail.sessions.lda`)."""
        return srs.forward_sender(
            reverse_path, domains=self.config.domains, key=self.srs_key, day=srs.today(now)
        )
