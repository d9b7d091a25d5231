"""The IMAP services: `imap` (STARTTLS offered, RFC 9051 §6.2.1) and `imaps` (implicit
TLS, RFC 8314), one session per connection driving `sansmail.imap` as a server and
handing the logged-in commands to a `sansmail.sessions.imapd.ImapSession`.

Theory of operation
-------------------
The core parses and enforces the session states; `ImapSession` decides what every
command of the authenticated and selected states answers, blocking on the store, so it
runs in a worker thread (one call at a time). This file moves bytes and owns time, as
`_pop3_server.py` does for POP3:

* One cancel scope per session. Before each wait for a command its deadline is set to
  `IDLE_TIMEOUT` (RFC 9051 §5.4: the autologout timer is at least 30 minutes); expiry
  sends ``* BYE`` and closes. Shutdown cancels the same scope, but only while the
  session waits for a command: a command being answered (an APPEND being stored) is
  finished first, then the session says ``* BYE`` (RFC 9051 §7.1.5). Worker threads are
  never abandoned, so a store call always completes.
* Authentication stays here, with the shared `AuthService` (delays, throttle, log
  lines) exactly as SMTP and POP3 use it. LOGIN (RFC 9051 §6.2.3) and AUTHENTICATE
  (§6.2.2, SASL-IR RFC 4959, the mechanisms of `sansmail.sasl`) are allowed only under
  TLS unless ``[smtp] plaintext_auth`` allows them for this client; before that
  CAPABILITY says LOGINDISABLED and lists no AUTH= (§7.2.2), and both commands get
  NO [PRIVACYREQUIRED] (RFC 5530). A wrong password is NO [AUTHENTICATIONFAILED] after
  the service's delay; a throttled client gets NO [UNAVAILABLE] without a check.
* Literals: the core checks sizes against `imap.Config` (an APPEND over
  ``max_message_size`` is NO [TOOBIG] before the client sends it, RFC 7889); what it
  lets through is answered with a continuation.
* After login, every other command goes to the session, whose responses are sent in
  order; a BYE among them (LOGOUT, or a selected folder that vanished) ends the
  connection. IDLE is not offered (it is not in CAPABILITY) and gets BAD.

Log lines in Dovecot's manner: ``login: user=<...>, method=..., rip=..., tls=...`` and
``logout: user=<...>, in=..., out=..., expunged=..., reason=...`` (octets of the IMAP
conversation, TLS overhead excluded).
"""

from __future__ import annotations

import functools
import logging
import ssl
from typing import Any

import attrs
import trio

from sansmail import (
    PAUSED,
    SERVER,
    LocalProtocolError,
    RemoteProtocolError,
    __version__,
    imap,
    sasl,
)
from sansmail.config import Config
from sansmail.mail.address import MailboxId
from sansmail.mail.auth import (
    AuthService,
    failure_log_line,
    login_key,
    password_allowed,
    throttle_log_line,
)
from sansmail.mail.logtext import show_ip as _show_ip
from sansmail.sessions.imapd import ImapSession, capabilities
from sansmail.smtp import Reply
from sansmail.storage.maildir import ImapStore
from sansmail.storage.users import UserStore
from sansmail_trio._sasl import run_exchange
from sansmail_trio._session import SessionRegistry, SessionTime, run_registered
from sansmail_trio._tls import TLS_HANDSHAKE_TIMEOUT, TLSContextHolder, describe, received_tls
from sansmail_trio._wire import Wire

__all__ = ["IDLE_TIMEOUT", "IMAPService"]

#: RFC 9051 §5.4: "an autologout timer MUST be of at least 30 minutes duration".
IDLE_TIMEOUT = 1800.0

_AUTOLOGOUT = imap.UntaggedStatus(status="BYE", text="Autologout; idle for too long")
_SHUTTING_DOWN = imap.UntaggedStatus(
    status="BYE", code=imap.ResponseCode(name="UNAVAILABLE"), text="Server shutting down"
)
_INTERNAL_ERROR = imap.UntaggedStatus(
    status="BYE", code=imap.ResponseCode(name="SERVERBUG"), text="Internal error, closing"
)


def _no(tag: str, code: str | None, text: str) -> imap.Tagged:
    return imap.Tagged(
        tag=tag, status="NO", code=imap.ResponseCode(name=code) if code else None, text=text
    )


@attrs.define
class IMAPService:
    """Everything the sessions of one `imap` or `imaps` listener share."""

    config: Config
    store: ImapStore
    users: UserStore
    log: logging.Logger
    service: str = "imap"
    #: The server certificate; None: no TLS at all (STARTTLS is then not offered).
    tls: TLSContextHolder | None = None
    #: Password checks, failure delays and throttling, shared with SMTP and POP3.
    auth: AuthService | None = None

    @property
    def implicit_tls(self) -> bool:
        """The listener speaks TLS from the first byte (RFC 8314 §3.3: port 993)."""
        return self.service == "imaps"

    @functools.cached_property
    def mechanisms(self) -> tuple[str, ...]:
        return sasl.server_mechanisms(self.config.smtp.auth_mechanisms) if self.auth else ()

    @functools.cached_property
    def imap_config(self) -> imap.Config:
        return imap.Config(max_message_size=self.config.smtp.max_message_size)

    def login_allowed(self, *, tls_active: bool, client_ip: str) -> bool:
        """LOGIN and AUTHENTICATE only over TLS, unless `plaintext_auth` allows them for
        this client (RFC 9051 §11.1, the same server-wide key POP3 and SMTP obey)."""
        if self.auth is None:
            return False
        return password_allowed(
            tls_active=tls_active,
            client_ip=client_ip,
            plaintext_auth=self.config.smtp.plaintext_auth,
        )

    async def handle(
        self,
        stream: trio.abc.Stream,
        peer: tuple[str, int],
        *,
        refuse: Reply | None = None,
        registry: SessionRegistry | None = None,
        tls: str | None = None,
    ) -> None:
        """Run one session to its end. `refuse` (the listeners' SMTP-worded refusal:
        connection caps, shutdown) becomes a BYE greeting. `tls` describes the TLS
        session when `stream` is already encrypted (imaps)."""
        session = _Session(self, stream, peer, tls)
        await run_registered(session, registry, lambda: session.run(refuse))


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


class _Session(SessionTime):
    """One IMAP conversation; see the module docstring for time and resources."""

    def __init__(
        self, service: IMAPService, stream: trio.abc.Stream, peer: tuple[str, int], tls: str | None
    ) -> None:
        self.service = service
        self.config = service.config
        self.log = service.log
        self.peer = peer
        self.client = f"[{peer[0]}]:{peer[1]}"
        self.conn = imap.Connection(
            SERVER, config=service.imap_config, tls_active=service.implicit_tls
        )
        self.counted = _Counted(self.conn)
        self.wire = Wire(stream, self.counted)
        #: "TLSv1.3 TLS_AES_256_GCM_SHA384" once the session is encrypted.
        self.tls = tls
        #: The user-store key of the logged-in user.
        self.user: str | None = None
        self.imap: ImapSession | None = None
        self.reason = "disconnected"
        super().__init__()

    # -- the loop --------------------------------------------------------------------

    async def run(self, refuse: Reply | None) -> None:
        self.log.info("connect from %s", self.client)
        last_words = b""
        try:
            with self.scope:
                if refuse is not None:
                    await self.wire.send(
                        imap.UntaggedStatus(
                            status="BYE",
                            code=imap.ResponseCode(name="UNAVAILABLE"),
                            text=refuse.text,
                        ),
                        flush=True,
                    )
                    self.log.info("%s: refused: %s", self.client, refuse.text)
                    self.reason = "refused"
                    return
                await self.wire.send(
                    imap.UntaggedStatus(
                        status="OK",
                        code=imap.ResponseCode.capability(self._capabilities()),
                        text=f"{self.config.hostname} IMAP server ready",
                    )
                )
                await self._loop()
            if self.scope.cancelled_caught:
                if self.stopping:
                    self.reason = "shutdown"
                    last_words = self._last_word(_SHUTTING_DOWN)
                else:
                    self.reason = "timeout"
                    self.log.info("%s: autologout", self.client)
                    last_words = self._last_word(_AUTOLOGOUT)
        except RemoteProtocolError as exc:
            self.reason = "protocol error"
            self.log.info("%s: protocol error: %s", self.client, exc)
            if isinstance(exc.reply_hint, imap.UntaggedStatus):
                last_words = self._last_word(exc.reply_hint)
        except Exception:  # LocalProtocolError, a disk error, or any other bug
            # A bug must cost one session, never the server.
            self.reason = "internal error"
            self.log.exception("%s: internal error, closing", self.client)
            last_words = self._last_word(_INTERNAL_ERROR)
        except trio.Cancelled:
            # The shutdown grace period ran out with this session still busy.
            self.reason = "shutdown"
            last_words = self._last_word(_SHUTTING_DOWN)
            raise
        finally:
            with trio.CancelScope(shield=True):
                if self.imap is not None:
                    await trio.to_thread.run_sync(self.imap.close)
                await self.wire.aclose(last_words=last_words)
            self._log_disconnect()

    def _last_word(self, bye: imap.UntaggedStatus) -> bytes:
        try:
            return self.counted.send(bye)
        except LocalProtocolError:
            return b""

    async def _loop(self) -> None:
        while True:
            event = await self._next_event()
            if event is PAUSED:
                raise LocalProtocolError(f"core paused in {self.conn.our_state}")
            if not await self._dispatch(event):
                return

    async def _next_event(self) -> object:
        return await self.wait_for_client(self.wire, IDLE_TIMEOUT)

    async def _dispatch(self, event: object) -> bool:
        """Answer one event; False ends the session."""
        if isinstance(event, imap.ConnectionClosed):
            self.reason = "connection closed"
            return False
        if isinstance(event, imap.InvalidCommand):
            await self.wire.send(event.reply_hint)
            return True
        if isinstance(event, imap.LiteralRequested):
            # Sizes were checked by the core against imap.Config (TOOBIG included).
            await self.wire.send(imap.Continuation(text="Ready for literal data"))
            return True
        if isinstance(event, imap.Capability):
            await self.wire.send(imap.Untagged.capability(self._capabilities()))
            await self.wire.send(
                imap.Tagged(tag=event.tag, status="OK", text="CAPABILITY completed")
            )
            return True
        if isinstance(event, imap.StartTLS):
            return await self._starttls(event)
        if isinstance(event, imap.Login):
            return await self._on_login(event)
        if isinstance(event, imap.Authenticate):
            return await self._on_authenticate(event)
        if isinstance(event, imap.Idle):
            await self.wire.send(
                imap.Tagged(tag=event.tag, status="BAD", text="IDLE is not supported")
            )
            return True
        if isinstance(event, imap.Logout) and self.imap is None:
            self.reason = "logged out"
            await self.wire.send(imap.UntaggedStatus(status="BYE", text="Logging out"))
            await self.wire.send(imap.Tagged(tag=event.tag, status="OK", text="LOGOUT completed"))
            return False
        if isinstance(event, imap.Command) and self.imap is not None:
            return await self._to_session(event, self.imap)
        if isinstance(event, imap.Noop):
            await self.wire.send(imap.Tagged(tag=event.tag, status="OK", text="NOOP completed"))
            return True
        if isinstance(event, imap.Id):
            # RFC 2971 §3.1: ID may come before login (clients send it right away).
            await self.wire.send(imap.Untagged.id([("name", "sansmail"), ("version", __version__)]))
            await self.wire.send(imap.Tagged(tag=event.tag, status="OK", text="ID completed"))
            return True
        # The core lets nothing else through in the states it allows without login.
        raise LocalProtocolError(f"unexpected event {type(event).__name__}")

    async def _to_session(self, command: imap.Command, session: ImapSession) -> bool:
        responses = await trio.to_thread.run_sync(
            functools.partial(
                session.handle, command, rev2=self.conn.imap4rev2, utf8=self.conn.utf8
            )
        )
        for response in responses:
            await self.wire.send(response)
        if session.ended:
            self.reason = "logged out" if isinstance(command, imap.Logout) else "mailbox gone"
            return False
        return True

    # -- before login ----------------------------------------------------------------

    def _login_allowed(self) -> bool:
        return self.service.login_allowed(tls_active=self.tls is not None, client_ip=self.peer[0])

    def _capabilities(self) -> list[str]:
        authenticated = self.user is not None
        return capabilities(
            append_limit=self.config.smtp.max_message_size,
            authenticated=authenticated,
            starttls=self.service.tls is not None and self.tls is None,
            login_allowed=self._login_allowed(),
            mechanisms=self.service.mechanisms,
        )

    async def _starttls(self, event: imap.StartTLS) -> bool:
        # RFC 9051 §6.2.1. On imaps the core refuses STARTTLS itself.
        holder = self.service.tls
        if holder is None:
            await self.wire.send(_no(event.tag, None, "TLS not available"))
            return True
        await self.wire.send(
            imap.Tagged(tag=event.tag, status="OK", text="Begin TLS negotiation now"), flush=True
        )
        try:
            with trio.fail_after(TLS_HANDSHAKE_TIMEOUT):
                # Plaintext pipelined behind STARTTLS makes the core raise
                # RemoteProtocolError here (an injection attempt): handled by run().
                await self.wire.start_tls(holder.context)
        except (trio.TooSlowError, trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
            self.log.info("%s: STARTTLS handshake failed: %s", self.client, exc or "timeout")
            self.reason = "TLS handshake failed"
            return False
        stream = self.wire.stream
        assert isinstance(stream, trio.SSLStream)
        self.tls = received_tls(stream)
        self.log.info("%s: STARTTLS: %s", self.client, describe(stream))
        return True

    async def _on_login(self, event: imap.Login) -> bool:
        if not self._login_allowed():
            await self.wire.send(
                _no(
                    event.tag,
                    "PRIVACYREQUIRED",
                    "Plaintext authentication disallowed: use STARTTLS",
                )
            )
            return True
        auth = self.service.auth
        assert auth is not None
        if not await self._may_try(auth, event.tag):
            return True
        key = login_key(event.userid)
        attempt = auth.attempt_id(key, event.password)
        ok = await trio.to_thread.run_sync(auth.verify_password, key, event.password)
        if ok:
            auth.record(self.peer[0], True, trio.current_time())
            await self._login(event.tag, key, "LOGIN")
        else:
            await self._failed(auth, event.tag, "LOGIN", event.userid, attempt)
        return True

    async def _on_authenticate(self, event: imap.Authenticate) -> bool:
        """One AUTHENTICATE exchange (RFC 9051 §6.2.2), driven by a `sansmail.sasl`
        mechanism, as SMTP AUTH and POP3 AUTH are."""
        service = self.service
        tag = event.tag
        if not self._login_allowed():
            await self.wire.send(
                _no(tag, "PRIVACYREQUIRED", "Plaintext authentication disallowed: use STARTTLS")
            )
            return True
        if event.mechanism not in service.mechanisms:
            await self.wire.send(_no(tag, None, "Unsupported authentication mechanism"))
            return True
        auth = service.auth
        assert auth is not None
        if not await self._may_try(auth, tag):
            return True
        last: list[object] = []

        async def challenge(data: bytes) -> bytes | None:
            answer = await self._challenge(data)
            last[:] = [answer]
            return answer.data if isinstance(answer, imap.AuthResponse) else None

        outcome = await run_exchange(
            mechanism=event.mechanism,
            initial_response=event.initial_response,
            auth=auth,
            users=service.users,
            hostname=self.config.hostname,
            client_ip=self.peer[0],
            challenge=challenge,
        )
        if outcome.unexpected_initial_response:
            await self.wire.send(
                imap.Tagged(tag=tag, status="BAD", text="This mechanism takes no initial response")
            )
            return True
        if outcome.user is not None:
            await self._login(tag, outcome.user, outcome.mechanism)
            return True
        if outcome.interrupted:
            return await self._auth_interrupted(tag, last[0] if last else None)
        await self._report_failure(tag, outcome.mechanism, outcome.authcid, outcome.delay)
        return True

    async def _challenge(self, data: bytes) -> object:
        await self.wire.send(imap.Continuation(data=data))
        return await self._next_event()

    async def _auth_interrupted(self, tag: str, answer: object) -> bool:
        # "*" (RFC 9051 §6.2.2: BAD), an undecodable line, or a non-empty answer to the
        # final challenge: the exchange fails and the session goes on; EOF ends it.
        if isinstance(answer, imap.InvalidCommand):
            await self.wire.send(answer.reply_hint)
            return True
        if isinstance(answer, imap.AuthCancel):
            await self.wire.send(
                imap.Tagged(tag=tag, status="BAD", text="Authentication cancelled")
            )
            return True
        if isinstance(answer, imap.AuthResponse):
            await self.wire.send(_no(tag, "AUTHENTICATIONFAILED", "Authentication failed"))
            return True
        self.reason = "connection closed"
        return False

    async def _may_try(self, auth: AuthService, tag: str) -> bool:
        """The auth service's first step: False (and the client answered) when this
        client is throttled; otherwise after its delay."""
        ip = self.peer[0]
        verdict = auth.begin(ip, trio.current_time())
        if not verdict.allowed:
            self.log.info(
                throttle_log_line(
                    service=self.service.service, client_ip=ip, retry_after=verdict.retry_after
                )
            )
            await self.wire.send(
                _no(tag, "UNAVAILABLE", "Too many authentication failures, try again later")
            )
            return False
        if verdict.delay:
            await trio.sleep(verdict.delay)
        return True

    async def _failed(
        self, auth: AuthService, tag: str, method: str, user: str, attempt: bytes | None
    ) -> None:
        delay = auth.record(self.peer[0], False, trio.current_time(), attempt=attempt)
        await self._report_failure(tag, method, user, delay)

    async def _report_failure(self, tag: str, method: str, user: str, delay: float) -> None:
        ip = self.peer[0]
        self.log.info(
            failure_log_line(service=self.service.service, method=method, user=user, client_ip=ip)
        )
        await trio.sleep(delay)
        await self.wire.send(_no(tag, "AUTHENTICATIONFAILED", "Authentication failed"))

    async def _login(self, tag: str, key: str, method: str) -> None:
        """Open the user's folders, then the tagged OK with the new capabilities."""
        local, _, domain = key.rpartition("@")
        mailbox = MailboxId(domain=domain, local=local)
        self.user = key
        caps = self._capabilities()
        try:
            self.imap = await trio.to_thread.run_sync(
                functools.partial(
                    ImapSession,
                    self.service.store,
                    mailbox,
                    append_limit=self.config.smtp.max_message_size,
                    capabilities=caps,
                )
            )
        except OSError as exc:
            self.user = None
            self.log.error("%s: cannot open the mailbox of <%s>: %s", self.client, key, exc)
            await self.wire.send(
                _no(tag, "UNAVAILABLE", "Cannot open the mailbox, try again later")
            )
            return
        self.log.info(
            "login: user=<%s>, method=%s, rip=%s, tls=%s",
            key,
            method,
            _show_ip(self.peer[0]),
            self.tls.split()[0] if self.tls else "no",
        )
        # RFC 9051 §6.2.3: the capabilities may change at login; say them in the OK.
        await self.wire.send(
            imap.Tagged(
                tag=tag, status="OK", code=imap.ResponseCode.capability(caps), text="Logged in"
            )
        )

    def _log_disconnect(self) -> None:
        ip = _show_ip(self.peer[0])
        if self.user is None:
            self.log.info("disconnect: rip=%s, no login, reason=%s", ip, self.reason)
            return
        self.log.info(
            "logout: user=<%s>, rip=%s, in=%d, out=%d, expunged=%d, reason=%s",
            self.user,
            ip,
            self.counted.received,
            self.counted.sent,
            self.imap.expunged if self.imap else 0,
            self.reason,
        )
