"""`ImapConversation`: one IMAP connection from its greeting to its BYE, as the server
decides it (Dovecot's imap-login and the start and end of its imap process): the greeting
and the CAPABILITY list before and after STARTTLS and login, who may log in and how each
attempt is answered, which mailbox a login opens, the BYEs that end a connection, and the
mail log's login and logout lines. Once logged in, the commands of the authenticated and
selected states go to an `ImapSession`.

Theory of operation
-------------------
The protocol core (`sansmail.imap.Connection`, owned here as `conn`) parses commands and
enforces the session states (RFC 9051 §3); this object answers the events it hands out.
An adapter moves bytes between the client and `counted` (the core seen through a counter
of octets, for the logout line), and for each event does (a sketch;
`sansmail_trio._imap_server` is the real one; the life cycle and logging in are the same
for every session, see `sansmail.sessions.common`)::

    StartTLS          -> send starttls(event); after an OK, handshake, then
                         tls_started(description, log_description) or tls_failed(reason)
    Compress          -> send compress(event); after an OK, flushed uncompressed, put
                         deflate under the core, then inflate and feed back what
                         compression_started() returns
    Idle              -> send handle(event) ("+ idling"); until the next event, watch
                         watch_paths and send idle_updates() [blocking] when they
                         change, and still_here() every IDLE_KEEPALIVE seconds; the
                         DONE that ends it is answered by handle [blocking]
    Login, Authenticate
                      -> the common login steps (`LoginSteps`): a challenge is a
                         Continuation, login_result opens the mailbox [blocking]
    anything else     -> send handle(event)              [blocking when blocks(event)]
    until `ended`; at the end closed(), then cleanup() if cleanup_due  [blocking]

The methods marked blocking do file I/O (opening, using and closing the user's folders)
and belong in a worker thread, one call at a time; the others only compute. Nothing here
reads a clock or draws a random number: the wall clock and nonces come in as arguments.
Log lines go to the `log` sink, ``(level, text)``, from whichever thread runs the method.

The rules, with their sources:

* LOGIN (RFC 9051 §6.2.3) and AUTHENTICATE (§6.2.2, SASL-IR RFC 4959, the mechanisms of
  `sansmail.sasl`) only over TLS, unless ``[smtp] plaintext_auth`` allows passwords in
  clear for this client (§11.1, the key SMTP and POP3 obey too). Until then CAPABILITY
  says LOGINDISABLED and lists no AUTH= (§7.2.2), and both commands get
  NO [PRIVACYREQUIRED] (RFC 5530). STARTTLS is listed only on a plaintext link with a
  certificate; after login neither it nor AUTH= is.
* A throttled client gets NO [UNAVAILABLE] without a check; a wrong password
  NO [AUTHENTICATIONFAILED], after the delay the adapter waits out. "*" cancels an
  exchange (BAD); an undecodable answer gets the core's BAD; a non-empty answer to
  SCRAM's final challenge fails it. The shared rules (delays, throttle, the fail2ban line)
  are `sansmail.sessions.login`'s.
* A login opens the mailbox of the user-store key it authenticated as, and its OK carries
  the new capabilities (§6.2.3: they may change at login).
* A literal the core let through (it refused what breaks `imap.Config`, TOOBIG included,
  RFC 7889) gets a continuation.
* IDLE (RFC 2177, RFC 9051 §6.3.13) in the authenticated and selected states: "+ idling",
  then the selected folder's news (EXISTS, EXPUNGE, FETCH FLAGS: any untagged response
  may be sent while idling) as the adapter learns of changes, ``* OK Still here`` every
  `IDLE_KEEPALIVE` seconds (Dovecot's imap_idle_notify_interval, so NAT boxes keep the
  connection), and after DONE the news not sent yet and the tagged OK. Idling is waiting
  for the client: the autologout timer runs from the IDLE command (re-armed by each
  command, so a client that re-issues IDLE within 29 minutes, as RFC 2177 §3 advises,
  stays), and shutdown ends an idler with its BYE.
* COMPRESS=DEFLATE (RFC 4978) in the authenticated and selected states, with or without
  TLS (§3: data is compressed, then encrypted; our TLS never compresses, so TLS is no
  reason for COMPRESSIONACTIVE): OK "DEFLATE active", after which the adapter
  compresses both ways; the core refuses other mechanisms (NO) and a second COMPRESS
  (NO [COMPRESSIONACTIVE]). The logout line's in= and out= stay the octets of the
  conversation, before compression.
* The autologout timer is `AUTOLOGOUT` (§5.4: at least 30 minutes); its BYE, shutdown's
  BYE [UNAVAILABLE] and a bug's BYE [SERVERBUG] are the last words (§7.1.5).

Log lines in Dovecot's manner: ``login: user=<...>, method=..., rip=..., tls=...`` and
``logout: user=<...>, rip=..., in=..., out=..., expunged=..., reason=...`` (octets of the
IMAP conversation, TLS overhead excluded), or ``disconnect: rip=..., no login, reason=...``.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any, Literal

import attrs

from sansmail import SERVER, LocalProtocolError, RemoteProtocolError, __version__, imap, sasl
from sansmail.config import Config
from sansmail.mail.address import MailboxId
from sansmail.mail.auth import AuthService, password_allowed
from sansmail.mail.logtext import LogSink, show_ip
from sansmail.sessions.common import Refusal, refusal_text
from sansmail.sessions.imapd._capabilities import capabilities
from sansmail.sessions.imapd._folders import is_storage_failure, storage_failure
from sansmail.sessions.imapd._session import ImapSession
from sansmail.sessions.login import Exchange, Login, Result
from sansmail.storage.maildir import ImapStore
from sansmail.storage.maildir._imapbase import StoreUnavailableError
from sansmail.storage.users import Users

__all__ = ["AUTOLOGOUT", "IDLE_KEEPALIVE", "INTERNAL_ERROR", "ImapConversation", "ImapService"]

#: RFC 9051 §5.4: "an autologout timer MUST be of at least 30 minutes duration".
AUTOLOGOUT = 1800.0
#: Seconds between two ``* OK Still here`` to an idling client (Dovecot's default).
IDLE_KEEPALIVE = 120.0

INTERNAL_ERROR = imap.UntaggedStatus(
    status="BYE", code=imap.ResponseCode(name="SERVERBUG"), text="Internal error, closing"
)
_AUTOLOGOUT_BYE = imap.UntaggedStatus(status="BYE", text="Autologout; idle for too long")
_SHUTDOWN_BYE = imap.UntaggedStatus(
    status="BYE", code=imap.ResponseCode(name="UNAVAILABLE"), text="Server shutting down"
)
_LOGOUT_BYE = imap.UntaggedStatus(status="BYE", text="Logging out")
_READY_FOR_LITERAL = imap.Continuation(text="Ready for literal data")
_IDLING = imap.Continuation(text="idling")
_STILL_HERE = imap.UntaggedStatus(status="OK", text="Still here")
_CORRUPT_COMPRESSION = imap.UntaggedStatus(status="BYE", text="Corrupt compressed data, closing")
_PLAINTEXT_REFUSED = "Plaintext authentication disallowed: use STARTTLS"
# Handled by this object even after login: the rest of a logged-in session's commands
# are the `ImapSession`'s.
_NOT_FOR_THE_MAILBOX = (
    imap.Capability,
    imap.Idle,
    imap.StartTLS,
    imap.Compress,
    imap.Login,
    imap.Authenticate,
)


@attrs.define
class ImapService:
    """Everything the conversations of one `imap` or `imaps` listener share."""

    config: Config
    store: ImapStore
    users: Users
    #: Password checks, failure delays and throttling, shared with SMTP and POP3.
    auth: AuthService
    service: str = "imap"
    #: A certificate exists, so STARTTLS may be offered on a plaintext link.
    tls_available: bool = True
    _core_config: imap.Config | None = attrs.field(default=None, init=False)

    @property
    def implicit_tls(self) -> bool:
        """The listener speaks TLS from the first byte (RFC 8314 §3.3: port 993)."""
        return self.service == "imaps"

    @property
    def mechanisms(self) -> tuple[str, ...]:
        return sasl.server_mechanisms(self.config.smtp.auth_mechanisms)

    @property
    def append_limit(self) -> int:
        """The largest message APPEND takes (APPENDLIMIT, RFC 7889): the SMTP limit, so
        what can arrive can also be filed."""
        return self.config.smtp.max_message_size

    @property
    def core_config(self) -> imap.Config:
        if self._core_config is None:
            limits = self.config.limits
            self._core_config = imap.Config(
                max_message_size=self.append_limit,
                max_line_length=limits.imap_max_line_length,
                max_command_size=limits.imap_max_command_size,
            )
        return self._core_config

    def login_allowed(self, *, tls_active: bool, client_ip: str) -> bool:
        """LOGIN and AUTHENTICATE only over TLS, unless `plaintext_auth` allows them for
        this client (RFC 9051 §11.1, the same server-wide key POP3 and SMTP obey)."""
        return password_allowed(
            tls_active=tls_active,
            client_ip=client_ip,
            plaintext_auth=self.config.smtp.plaintext_auth,
        )


class _Counted:
    """The core, seen through a counter of the octets it reads and writes."""

    def __init__(self, conn: imap.Connection) -> None:
        self.conn = conn
        self.received = 0
        self.sent = 0

    def receive_data(self, data: bytes) -> None:
        self.received += len(data)
        self.conn.receive_data(data)

    def next_event(self) -> Any:
        return self.conn.next_event()

    def send(self, event: Any) -> bytes:
        data = self.conn.send(event)
        self.sent += len(data)
        return data

    def send_failed(self) -> None:
        self.conn.send_failed()

    def start_tls(self) -> None:
        self.conn.start_tls()


class ImapConversation:
    """One IMAP connection (see the module docstring).

    Args:
        service: what the listener's conversations share.
        client_ip, client_port: the peer.
        log: where log lines go, ``(level, text)``.
        tls: "<version> <cipher>" when the link is already encrypted (imaps).
    """

    def __init__(
        self,
        service: ImapService,
        *,
        client_ip: str,
        client_port: int,
        log: LogSink,
        tls: str | None = None,
    ) -> None:
        self.service = service
        self.log = log
        self.client_ip = client_ip
        self.client = f"[{client_ip}]:{client_port}"
        self.conn = imap.Connection(
            SERVER, config=service.core_config, tls_active=service.implicit_tls
        )
        #: What the adapter pumps: `conn`, with the octets counted for the logout line.
        self.counted = _Counted(self.conn)
        #: "TLSv1.3 TLS_AES_256_GCM_SHA384" once the link is encrypted.
        self.tls = tls
        #: The user-store key of the logged-in user.
        self.user: str | None = None
        #: The logged-in session, which answers the commands of its states.
        self.mailbox: ImapSession | None = None
        #: The conversation is over: the adapter closes after sending what it has.
        self.ended = False
        #: Why it ended, for the logout line.
        self.reason = "disconnected"
        self._released = False
        # The tag of the IDLE being answered (its OK follows DONE).
        self._idle_tag: str | None = None

    # -- what the adapter asks ------------------------------------------------------------

    @property
    def timeout(self) -> float:
        """How long to wait for the client's next command."""
        return AUTOLOGOUT

    def greeting(self) -> imap.UntaggedStatus:
        self.log(logging.INFO, f"connect from {self.client}")
        return imap.UntaggedStatus(
            status="OK",
            code=imap.ResponseCode.capability(self._capabilities()),
            text=f"{self.service.config.hostname} IMAP server ready",
        )

    def refuse(self, refusal: Refusal) -> imap.UntaggedStatus:
        """Greet with a BYE instead (connection limits, shutdown) and end."""
        text = refusal_text(
            refusal, hostname=self.service.config.hostname, client_ip=self.client_ip
        )
        self.log(logging.INFO, f"connect from {self.client}")
        self.log(logging.INFO, f"{self.client}: refused: {text}")
        self._end("refused")
        return imap.UntaggedStatus(
            status="BYE", code=imap.ResponseCode(name="UNAVAILABLE"), text=text
        )

    def timeout_reply(self) -> imap.UntaggedStatus:
        self.log(logging.INFO, f"{self.client}: autologout")
        self._end("timeout")
        return _AUTOLOGOUT_BYE

    def shutdown_reply(self) -> imap.UntaggedStatus:
        self._end("shutdown")
        return _SHUTDOWN_BYE

    def internal_error(self) -> imap.UntaggedStatus:
        """A bug (the adapter logs its traceback): the BYE to close with."""
        self._end("internal error")
        return INTERNAL_ERROR

    def protocol_error(self, exc: Exception) -> None:
        self.log(logging.INFO, f"{self.client}: protocol error: {exc}")
        self._end("protocol error")

    def last_words(self, hint: object) -> bytes:
        """A closing BYE serialised by the core, or nothing when it can send no more."""
        if not isinstance(hint, imap.UntaggedStatus):
            return b""
        try:
            return self.counted.send(hint)
        except LocalProtocolError:
            return b""

    @property
    def cleanup_due(self) -> bool:
        return self.mailbox is not None and not self._released

    def cleanup(self) -> None:
        """Blocking: release the user's folders (once the connection is gone)."""
        if self.mailbox is not None and not self._released:
            self._released = True
            self.mailbox.close()

    def closed(self) -> None:
        """The connection is gone: the logout line."""
        ip = show_ip(self.client_ip)
        if self.user is None:
            self.log(logging.INFO, f"disconnect: rip={ip}, no login, reason={self.reason}")
            return
        expunged = self.mailbox.expunged if self.mailbox is not None else 0
        self.log(
            logging.INFO,
            f"logout: user=<{self.user}>, rip={ip}, in={self.counted.received},"
            f" out={self.counted.sent}, expunged={expunged}, reason={self.reason}",
        )

    # -- commands ---------------------------------------------------------------------------

    def blocks(self, event: object) -> bool:
        """Whether `handle(event)` does file I/O: a command of the logged-in session,
        or the DONE that ends its IDLE (the last news goes before the OK)."""
        if self.mailbox is None:
            return False
        if isinstance(event, imap.IdleDone):
            return True
        return isinstance(event, imap.Command) and not isinstance(event, _NOT_FOR_THE_MAILBOX)

    # -- IDLE -------------------------------------------------------------------------------

    @property
    def idling(self) -> bool:
        """An IDLE was accepted and its DONE has not come: the adapter pushes news."""
        return self._idle_tag is not None and not self.ended

    @property
    def watch_paths(self) -> tuple[str, ...]:
        """The directories whose changes may be news for an idler (none: nothing
        selected, nothing to watch)."""
        return () if self.mailbox is None else self.mailbox.watch_paths

    @property
    def watch_keys(self) -> tuple[str, ...]:
        """The notification keys whose news may be news for an idler (PostgreSQL
        NOTIFY payloads; none: nothing selected, or a store that sends none)."""
        return () if self.mailbox is None else self.mailbox.watch_keys

    def idle_updates(self, changed_before: int | None = None) -> list[imap.Response]:
        """Blocking: the selected folder's news since the last report, for an idler
        (a BYE, and the conversation ends, when the folder is gone). `changed_before`:
        the wall clock in nanoseconds when the adapter learnt that something changed."""
        if self.mailbox is None:
            return []
        try:
            responses = self.mailbox.updates(
                rev2=self.conn.imap4rev2, changed_before=changed_before
            )
        except (OSError, sqlite3.OperationalError) as exc:
            if not is_storage_failure(exc):
                raise
            # A full disk kept the index from catching up: the news waits for the next
            # wake-up, or DONE, and the idler stays.
            self.log(logging.ERROR, f"{self.client}: user=<{self.user}>: IDLE: {exc}")
            return []
        if self.mailbox.ended:
            self._end("mailbox gone")
        return responses

    def still_here(self) -> imap.UntaggedStatus:
        """What an idler hears every `IDLE_KEEPALIVE` seconds."""
        return _STILL_HERE

    def handle(self, event: imap.Event) -> list[imap.Response]:
        """The responses to one event, in order (all but StartTLS, Login and
        Authenticate). Blocking when `blocks(event)`."""
        if self.mailbox is not None and self.blocks(event):
            if isinstance(event, imap.IdleDone):
                return self._idle_done(self.mailbox)
            assert isinstance(event, imap.Command)
            return self._to_mailbox(event, self.mailbox)
        if isinstance(event, imap.ConnectionClosed):
            self._end("connection closed")
            return []
        if isinstance(event, imap.InvalidCommand):
            self._idle_tag = None  # a line other than DONE ends IDLE with its BAD
            return [event.reply_hint]
        if isinstance(event, imap.LiteralRequested):
            return [_READY_FOR_LITERAL]
        if isinstance(event, imap.Capability):
            return [
                imap.Untagged.capability(self._capabilities()),
                _tagged(event.tag, "OK", "CAPABILITY completed"),
            ]
        if isinstance(event, imap.Idle):
            # The core lets IDLE through only once logged in.
            self._idle_tag = event.tag
            return [_IDLING]
        # The core lets only these through before login.
        if isinstance(event, imap.Logout):
            # RFC 9051 §6.1.3: BYE first, then the tagged OK.
            self._end("logged out")
            return [_LOGOUT_BYE, _tagged(event.tag, "OK", "LOGOUT completed")]
        if isinstance(event, imap.Noop):
            return [_tagged(event.tag, "OK", "NOOP completed")]
        if isinstance(event, imap.Id):
            # RFC 2971 §3.1: ID may come before login (clients send it right away).
            return [
                imap.Untagged.id([("name", "sansmail"), ("version", __version__)]),
                _tagged(event.tag, "OK", "ID completed"),
            ]
        raise LocalProtocolError(f"unexpected event {type(event).__name__}")

    def _idle_done(self, session: ImapSession) -> list[imap.Response]:
        tag, self._idle_tag = self._idle_tag, None
        assert tag is not None, "the core sends DONE only after our continuation"
        responses = session.updates(rev2=self.conn.imap4rev2)
        if session.ended:
            self._end("mailbox gone")
            return responses
        return [*responses, _tagged(tag, "OK", "IDLE terminated")]

    def _to_mailbox(self, command: imap.Command, session: ImapSession) -> list[imap.Response]:
        try:
            responses = session.handle(command, rev2=self.conn.imap4rev2, utf8=self.conn.utf8)
        except (OSError, sqlite3.OperationalError) as exc:
            # A full or failing disk refused a write: the store undid the command, and
            # the session goes on (reads are still served). Anything else is a bug.
            refusal = storage_failure(command.tag, exc)
            if refusal is None:
                raise
            self.log(
                logging.ERROR,
                f"{self.client}: user=<{self.user}>: {type(command).__name__.upper()}"
                f" failed: {exc}",
            )
            return [refusal]
        if session.ended:
            # A BYE among the responses: LOGOUT, or the selected folder vanished.
            self._end("logged out" if isinstance(command, imap.Logout) else "mailbox gone")
        return responses

    # -- STARTTLS ---------------------------------------------------------------------------

    def starttls(self, event: imap.StartTLS) -> imap.Tagged:
        """RFC 9051 §6.2.1: OK, after which the adapter does the handshake; NO without a
        certificate. (On imaps the core refuses STARTTLS itself.)"""
        if not self.service.tls_available:
            return _no(event.tag, None, "TLS not available")
        return _tagged(event.tag, "OK", "Begin TLS negotiation now")

    def tls_started(self, description: str, log_description: str) -> None:
        """The handshake succeeded; `description` is "<version> <cipher>"."""
        self.tls = description
        self.log(logging.INFO, f"{self.client}: STARTTLS: {log_description}")

    def tls_failed(self, reason: str) -> None:
        self.log(logging.INFO, f"{self.client}: STARTTLS handshake failed: {reason}")
        self._end("TLS handshake failed")

    # -- COMPRESS ---------------------------------------------------------------------------

    def compress(self, event: imap.Compress) -> imap.Tagged:
        """RFC 4978 §3: OK, after which the adapter compresses (the core lets through
        only DEFLATE, once, after login)."""
        return _tagged(event.tag, "OK", "DEFLATE active")

    def compression_error(self, reason: str) -> RemoteProtocolError:
        """What the adapter raises when the client's compressed octets do not inflate:
        a protocol error (logged, the session ends) with a BYE to send, compressed."""
        return RemoteProtocolError(f"corrupt compressed data: {reason}", _CORRUPT_COMPRESSION)

    def compression_started(self) -> bytes:
        """The adapter's deflate is in place under the core: the octets the client sent
        after COMPRESS, still compressed, for the adapter to inflate and feed back."""
        self.log(logging.DEBUG, f"{self.client}: COMPRESS: DEFLATE")
        return self.conn.start_compression()

    # -- LOGIN and AUTHENTICATE -------------------------------------------------------------

    def login_refusal(self, event: imap.Login | imap.Authenticate) -> imap.Tagged | None:
        """The answer when this attempt may not even start: passwords in clear, or a
        mechanism we do not offer. None: go on (`login`)."""
        if not self._login_allowed():
            return _no(event.tag, "PRIVACYREQUIRED", _PLAINTEXT_REFUSED)
        if isinstance(event, imap.Authenticate) and event.mechanism not in self.service.mechanisms:
            return _no(event.tag, None, "Unsupported authentication mechanism")
        return None

    def login(self) -> Login:
        """The shared login rules for this client (throttle, delays, fail2ban lines)."""
        return Login.on(self.service, client_ip=self.client_ip, log=self.log)

    def throttled(self, event: imap.Login | imap.Authenticate) -> imap.Tagged:
        """The answer when `Login.gate` refused the client (no password was checked)."""
        return _no(event.tag, "UNAVAILABLE", "Too many authentication failures, try again later")

    def challenge(self, data: bytes) -> imap.Continuation:
        return imap.Continuation(data=data)

    def answer(self, event: object) -> bytes | None:
        return event.data if isinstance(event, imap.AuthResponse) else None

    def exchange(
        self, event: imap.Login | imap.Authenticate, login: Login, *, nonce: str, now: float
    ) -> Exchange:
        """The exchange of an attempt `login_refusal` let through and the gate admitted.
        `nonce` is fresh randomness, `now` the wall clock (CRAM-MD5's challenge)."""
        if isinstance(event, imap.Login):
            return login.password(event.userid, event.password)
        return login.sasl(event.mechanism, event.initial_response, nonce=nonce, timestamp=int(now))

    def login_result(
        self, event: imap.Login | imap.Authenticate, result: Result, last: object
    ) -> list[imap.Response]:
        """The answer to an attempt that ended with `result`; `last` is the last event the
        core gave during its exchange. Blocking: a success opens the user's folders."""
        tag = event.tag
        if result.unexpected_initial_response:
            return [_tagged(tag, "BAD", "This mechanism takes no initial response")]
        if result.user is not None:
            return [self._open(tag, result.user, result.mechanism)]
        if result.refusal is not None:  # max_userip_connections, in Dovecot's words
            return [_no(tag, "LIMIT", result.refusal)]
        if result.interrupted:
            if isinstance(last, imap.InvalidCommand):  # not base64
                return [last.reply_hint]
            if isinstance(last, imap.AuthCancel):  # "*", RFC 9051 §6.2.2
                return [_tagged(tag, "BAD", "Authentication cancelled")]
            if isinstance(last, imap.AuthResponse):  # data after the final challenge
                return [_no(tag, "AUTHENTICATIONFAILED", "Authentication failed")]
            self._end("connection closed")
            return []
        return [_no(tag, "AUTHENTICATIONFAILED", "Authentication failed")]

    def _open(self, tag: str, key: str, method: str) -> imap.Tagged:
        local, _, domain = key.rpartition("@")
        self.user = key
        caps = self._capabilities()
        try:
            self.mailbox = ImapSession(
                self.service.store,
                MailboxId(domain=domain, local=local),
                append_limit=self.service.append_limit,
                capabilities=caps,
            )
        except (OSError, StoreUnavailableError) as exc:
            # A disk that fails, or a database out of reach: the client may try again.
            self.user = None
            self.log(logging.ERROR, f"{self.client}: cannot open the mailbox of <{key}>: {exc}")
            return _no(tag, "UNAVAILABLE", "Cannot open the mailbox, try again later")
        tls = self.tls.split()[0] if self.tls else "no"
        self.log(
            logging.INFO,
            f"login: user=<{key}>, method={method}, rip={show_ip(self.client_ip)}, tls={tls}",
        )
        return imap.Tagged(
            tag=tag, status="OK", code=imap.ResponseCode.capability(caps), text="Logged in"
        )

    # -- internals --------------------------------------------------------------------------

    def _login_allowed(self) -> bool:
        return self.service.login_allowed(tls_active=self.tls is not None, client_ip=self.client_ip)

    def _capabilities(self) -> list[str]:
        return capabilities(
            append_limit=self.service.append_limit,
            authenticated=self.user is not None,
            starttls=self.service.tls_available and self.tls is None,
            login_allowed=self._login_allowed(),
            mechanisms=self.service.mechanisms,
        )

    def _end(self, reason: str) -> None:
        self.ended = True
        self.reason = reason


def _tagged(tag: str, status: Literal["OK", "NO", "BAD"], text: str) -> imap.Tagged:
    return imap.Tagged(tag=tag, status=status, text=text)


def _no(tag: str, code: str | None, text: str) -> imap.Tagged:
    return imap.Tagged(
        tag=tag, status="NO", code=imap.ResponseCode(name=code) if code else None, text=text
    )
