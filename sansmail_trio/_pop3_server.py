"""The POP3 services: `pop3` (STLS offered, RFC 2595) and `pop3s` (implicit TLS, RFC 8314),
one session per connection driving `sansmail.pop3` as a server over a `sansmail.storage.maildir`
`Maildrop`.

Theory of operation
-------------------
The core parses commands and enforces RFC 1939's states; the maildrop takes the lock,
the snapshot, reads and deletes; the shared `AuthService` checks passwords and throttles.
This file wires them together and owns time, as `_smtp_server.py` does for SMTP:

* One cancel scope per session. Before each wait for the client its deadline is set to
  `IDLE_TIMEOUT` (RFC 1939 §3: the autologout timer is at least 10 minutes), and while a
  RETR or TOP answer is written, each chunk must leave within `SEND_TIMEOUT`, so a
  client that stops reading cannot keep its maildrop locked; our own disk work never
  counts against the client. Expiry ends the session with an unprompted -ERR (RFC 1939
  has no 421; a final -ERR is what servers send). Shutdown cancels the same scope while
  the session waits for a command: nothing is deleted then (no QUIT, no UPDATE state).
* Login (RFC 1939 §7 USER/PASS, RFC 5034 AUTH) is offered only under TLS unless
  ``[smtp] plaintext_auth`` allows it for this client: the server-wide switch that SMTP
  AUTH obeys. Before that, CAPA lists neither USER nor SASL (RFC 2449 §6.2, §6.3: a
  client must not use what is not listed) and the commands get ``-ERR [AUTH]`` (RFC
  3206; RFC 2595 §2.3 wants clear-text logins refusable until TLS is on). The login
  name is the full address (user@domain), as for SMTP AUTH and as Dovecot needs it
  unless configured otherwise. A wrong password is answered ``-ERR [AUTH]`` after the
  auth service's delay; a throttled client gets ``-ERR [SYS/TEMP]`` without a check.
* After a good password the maildrop is opened (lock, then snapshot) and only then is
  +OK sent (RFC 1939 §4: "maildrop locked and ready"); a maildrop already locked by
  another POP3 session, in this process or another, is ``-ERR [IN-USE]`` (RFC 2449
  §8.1.2), and the session stays in AUTHORIZATION.
* RETR and TOP stream the file in chunks read by a worker thread (`MessageReader`),
  so at most one chunk (about `_READ_AHEAD` octets) of a message is in memory; the core
  byte-stuffs. The file is opened and its first chunk read in the same hop, so a
  typical message costs one hop: a client that RETRs thousands of messages one by one
  waits for each hop in turn. Reading changes
  nothing on disk (POP3 has no \\Seen flag; Dovecot with ``pop3_no_flag_updates``).
* DELE only marks, RSET unmarks; QUIT in TRANSACTION enters UPDATE (RFC 1939 §6):
  `Maildrop.expunge` unlinks and fsyncs, and only then is +OK sent. A connection that
  ends any other way deletes nothing.

Resources that must not leak past the session (the maildrop's lock, an open message
file) are made in worker threads under a shield, so a cancellation never drops one
between the thread and the variable that holds it; ``finally`` releases them.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import math
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from sansmail import PAUSED, SERVER, LocalProtocolError, RemoteProtocolError, pop3, sasl
from sansmail.config import Config
from sansmail.mail.address import MailboxId
from sansmail.mail.auth import (
    AuthService,
    failure_log_line,
    login_key,
    password_allowed,
    throttle_log_line,
)
from sansmail.mail.logtext import printable as _printable
from sansmail.smtp import Reply
from sansmail.storage.maildir import (
    Maildrop,
    MaildropInUseError,
    MailStore,
    MessageGoneError,
    MessageInfo,
    MessageReader,
)
from sansmail.storage.users import UserStore
from sansmail_trio._sasl import run_exchange
from sansmail_trio._session import SessionRegistry, SessionTime, run_registered
from sansmail_trio._tls import TLS_HANDSHAKE_TIMEOUT, TLSContextHolder, describe, received_tls
from sansmail_trio._wire import Wire

__all__ = ["IDLE_TIMEOUT", "SEND_TIMEOUT", "POP3Service"]

#: RFC 1939 §3: "the autologout timer MUST be of at least 10 minutes duration".
IDLE_TIMEOUT = 600.0
#: How long one chunk of a RETR or TOP answer may take to leave.
SEND_TIMEOUT = 600.0
#: Octets of a message read per worker-thread hop (bounds the memory a RETR holds).
_READ_AHEAD = 128 * 1024

_IMPLEMENTATION = "sansmail"
_OK = pop3.Ok()
_PLAINTEXT_REFUSED = pop3.Err(
    code="AUTH", text="Plaintext authentication disallowed on non-secure connections: use STLS"
)
_AUTH_FAILED = pop3.Err(code="AUTH", text="Authentication failed")
_AUTH_THROTTLED = pop3.Err(
    code="SYS/TEMP", text="Too many authentication failures, try again later"
)
_AUTH_CANCELLED = pop3.Err(text="Authentication cancelled")
_NO_INITIAL_RESPONSE = pop3.Err(text="This mechanism takes no initial response")
_UNKNOWN_MECHANISM = pop3.Err(text="Unrecognized authentication type")
_IN_USE = pop3.Err(code="IN-USE", text="Maildrop already locked by another POP3 session")
_MAILDROP_ERROR = pop3.Err(code="SYS/TEMP", text="Cannot open the maildrop, try again later")
_NOT_REMOVED = pop3.Err(code="SYS/TEMP", text="Some deleted messages not removed")
_INTERNAL_ERROR = pop3.Err(code="SYS/TEMP", text="Internal error, closing connection")
_SHUTTING_DOWN = pop3.Err(code="SYS/TEMP", text="Server shutting down")
_AUTOLOGOUT = pop3.Err(text="Autologout: idle for too long")
_NO_TLS = pop3.Err(text="TLS not available")
_ALREADY_TLS = pop3.Err(text="Already using TLS")


@attrs.define
class POP3Service:
    """Everything the sessions of one `pop3` or `pop3s` listener share."""

    config: Config
    store: MailStore
    users: UserStore
    log: logging.Logger
    service: str = "pop3"
    #: The server certificate; None: no TLS at all (STLS is then not offered).
    tls: TLSContextHolder | None = None
    #: Password checks, failure delays and throttling, shared with SMTP.
    auth: AuthService | None = None

    @property
    def implicit_tls(self) -> bool:
        """The listener speaks TLS from the first byte (RFC 8314 §3.3: port 995)."""
        return self.service == "pop3s"

    @functools.cached_property
    def mechanisms(self) -> tuple[str, ...]:
        return sasl.server_mechanisms(self.config.smtp.auth_mechanisms) if self.auth else ()

    def login_allowed(self, *, tls_active: bool, client_ip: str) -> bool:
        """USER/PASS and AUTH only over TLS, unless `plaintext_auth` allows them for this
        client (RFC 2595 §2.3)."""
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
        connection caps, shutdown) becomes a -ERR greeting. `tls` describes the TLS
        session when `stream` is already encrypted (pop3s)."""
        session = _Session(self, stream, peer)
        session.tls = tls
        greeting = None if refuse is None else pop3.Err(code="SYS/TEMP", text=refuse.text)
        await run_registered(session, registry, lambda: session.run(greeting))


def _open_and_read(
    maildrop: Maildrop, message: MessageInfo, lines: int | None
) -> tuple[MessageReader, bytes]:
    """Open a message and read its first `_READ_AHEAD` octets in the same worker thread: a
    typical message then costs one thread hop, not three (open, read, read to the end)."""
    reader = maildrop.reader(message, lines=lines)
    try:
        return reader, reader.read_up_to(_READ_AHEAD)
    except BaseException:
        reader.close()
        raise


@attrs.define
class _Counters:
    """What the disconnect line reports (Dovecot's logout line is the model)."""

    top: int = 0
    top_bytes: int = 0
    retr: int = 0
    retr_bytes: int = 0
    deleted: int = 0


class _Session(SessionTime):
    """One POP3 conversation; see the module docstring for time and resources."""

    def __init__(
        self, service: POP3Service, stream: trio.abc.Stream, peer: tuple[str, int]
    ) -> None:
        self.service = service
        self.config = service.config
        self.log = service.log
        self.peer = peer
        self.client = f"[{peer[0]}]:{peer[1]}"
        self.conn = pop3.Connection(SERVER)
        self.wire = Wire(stream, self.conn)
        #: "TLSv1.3 TLS_AES_256_GCM_SHA384" once the session is encrypted.
        self.tls: str | None = None
        #: The user-store key of the logged-in user.
        self.user: str | None = None
        self.maildrop: Maildrop | None = None
        self.deleted: set[int] = set()
        self.counters = _Counters()
        self.reason = "disconnected"
        self.last_words = b""
        super().__init__()

    # -- the loop --------------------------------------------------------------------

    async def run(self, refuse: pop3.Err | None) -> None:
        self.log.info("connect from %s", self.client)
        try:
            with self.scope:
                if refuse is not None:
                    await self.wire.send(refuse, flush=True)
                    self.log.info("%s: refused: %s", self.client, refuse.text)
                    self.reason = "refused"
                    return
                await self.wire.send(pop3.Ok(text=f"{self.config.hostname} POP3 server ready"))
                await self._loop()
            if self.scope.cancelled_caught:
                if self.stopping:
                    self.reason = "shutdown"
                    self._last_word(_SHUTTING_DOWN)
                else:
                    self.reason = "timeout"
                    self.log.info("%s: timeout", self.client)
                    self._last_word(_AUTOLOGOUT)
        except RemoteProtocolError as exc:
            self.reason = "protocol error"
            self.log.info("%s: protocol error: %s", self.client, exc)
            if isinstance(exc.reply_hint, pop3.Err):
                self._last_word(exc.reply_hint)
        except Exception:  # LocalProtocolError, a disk error mid-RETR, or any other bug
            # A bug must cost one session, never the server.
            self.reason = "internal error"
            self.log.exception("%s: internal error, closing", self.client)
            self._last_word(_INTERNAL_ERROR)
        except trio.Cancelled:
            # The shutdown grace period ran out with this session still busy.
            self.reason = "shutdown"
            self._last_word(_SHUTTING_DOWN)
            raise
        finally:
            with trio.CancelScope(shield=True):
                if self.maildrop is not None:
                    await trio.to_thread.run_sync(self.maildrop.close)
                await self.wire.aclose(last_words=self.last_words)
            self._log_disconnect()

    def _last_word(self, err: pop3.Err) -> None:
        # Only where the core allows an unprompted -ERR: never inside a multi-line answer,
        # where the client would read it as message content.
        try:
            self.last_words = self.conn.send(err)
        except LocalProtocolError:
            self.last_words = b""

    async def _loop(self) -> None:
        handlers: dict[type[pop3.Event], Callable[[Any], Awaitable[bool]]] = {
            pop3.Capa: self.on_capa,
            pop3.Stls: self.on_stls,
            pop3.User: self.on_user,
            pop3.Pass: self.on_pass,
            pop3.Auth: self.on_auth,
            pop3.Stat: self.on_stat,
            pop3.List: self.on_list,
            pop3.Uidl: self.on_uidl,
            pop3.Retr: self.on_retr,
            pop3.Top: self.on_top,
            pop3.Dele: self.on_dele,
            pop3.Noop: self.on_noop,
            pop3.Rset: self.on_rset,
            pop3.Quit: self.on_quit,
            pop3.InvalidCommand: self.on_invalid_command,
            pop3.ConnectionClosed: self.on_closed,
        }
        while True:
            event = await self._next_event()
            if event is PAUSED:
                raise LocalProtocolError(f"core paused in {self.conn.our_state}")
            assert isinstance(event, pop3.Event)
            if not await handlers[type(event)](event):
                return

    async def _next_event(self) -> object:
        return await self.wait_for_client(self.wire, IDLE_TIMEOUT)

    async def _send_chunk(self, data: bytes) -> None:
        scope = self.scope
        scope.deadline = trio.current_time() + SEND_TIMEOUT
        try:
            await self.wire.send(pop3.MultilineData(data=data), flush=True)
        finally:
            scope.deadline = math.inf

    async def _multiline(self, text: str, body: bytes) -> None:
        await self.wire.send(pop3.Ok(text=text))
        if body:
            await self._send_chunk(body)
        await self.wire.send(pop3.EndOfMultiline())

    # -- AUTHORIZATION -----------------------------------------------------------------

    def _login_allowed(self) -> bool:
        return self.service.login_allowed(tls_active=self.tls is not None, client_ip=self.peer[0])

    async def on_capa(self, event: pop3.Capa) -> bool:
        # RFC 2449 §5; what is offered depends on the state and on TLS (RFC 2595 §4).
        if self.conn.stage is pop3.Stage.AUTHORIZATION:
            login = self._login_allowed()
            listing = pop3.capability_listing(
                user=login,
                sasl=self.service.mechanisms if login else (),
                stls=self.service.tls is not None and self.tls is None,
                implementation=_IMPLEMENTATION,
            )
        else:
            listing = pop3.capability_listing(user=False, implementation=_IMPLEMENTATION)
        await self._multiline("Capability list follows", listing)
        return True

    async def on_stls(self, event: pop3.Stls) -> bool:
        # RFC 2595 §4. On pop3s the core does not know TLS is on: we refuse here.
        holder = self.service.tls
        if holder is None or self.tls is not None:
            await self.wire.send(_NO_TLS if holder is None else _ALREADY_TLS)
            return True
        await self.wire.send(pop3.Ok(text="Begin TLS negotiation"), flush=True)
        try:
            with trio.fail_after(TLS_HANDSHAKE_TIMEOUT):
                # Plaintext pipelined behind STLS makes the core raise
                # RemoteProtocolError here (an injection attempt): handled by run().
                await self.wire.start_tls(holder.context)
        except (trio.TooSlowError, trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
            self.log.info("%s: STLS handshake failed: %s", self.client, exc or "timeout")
            self.reason = "TLS handshake failed"
            return False
        stream = self.wire.stream
        assert isinstance(stream, trio.SSLStream)
        self.tls = received_tls(stream)
        self.log.info("%s: STLS: %s", self.client, describe(stream))
        return True

    async def on_user(self, event: pop3.User) -> bool:
        # RFC 1939 §7. The answer never says whether the user exists.
        if not self._login_allowed():
            await self.wire.send(_PLAINTEXT_REFUSED)
        else:
            await self.wire.send(_OK)
        return True

    async def on_pass(self, event: pop3.Pass) -> bool:
        name = self.conn.user  # the USER just answered +OK (the core checked there is one)
        assert name is not None
        auth = self.service.auth
        assert auth is not None, "USER is never accepted without the auth service"
        if not await self._may_try(auth):
            return True
        ip = self.peer[0]
        key = login_key(name)
        attempt = auth.attempt_id(key, event.password)
        ok = await trio.to_thread.run_sync(auth.verify_password, key, event.password)
        if ok:
            auth.record(ip, True, trio.current_time())
            await self._login(key, "USER")
        else:
            await self._failed(auth, "USER", name, attempt)
        return True

    async def on_auth(self, event: pop3.Auth) -> bool:
        """One AUTH exchange (RFC 5034 §4), driven by a `sansmail.sasl` mechanism."""
        service = self.service
        if not self._login_allowed():
            await self.wire.send(_PLAINTEXT_REFUSED)
            return True
        if event.mechanism not in service.mechanisms:
            await self.wire.send(_UNKNOWN_MECHANISM)
            return True
        auth = service.auth
        assert auth is not None
        if not await self._may_try(auth):
            return True
        last: list[object] = []

        async def challenge(data: bytes) -> bytes | None:
            answer = await self._challenge(data)
            last[:] = [answer]
            return answer.data if isinstance(answer, pop3.AuthResponse) else None

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
            # RFC 5034 §4: an initial response to a server-first mechanism is refused.
            await self.wire.send(_NO_INITIAL_RESPONSE)
            return True
        if outcome.user is not None:
            await self._login(outcome.user, outcome.mechanism)
            return True
        if outcome.interrupted:
            return await self._auth_interrupted(last[0] if last else None)
        await self._report_failure(outcome.mechanism, outcome.authcid, outcome.delay)
        return True

    async def _challenge(self, data: bytes) -> object:
        await self.wire.send(pop3.Challenge(data=data))
        return await self._next_event()

    async def _auth_interrupted(self, answer: object) -> bool:
        # "*" (RFC 5034 §4), an undecodable line, or a non-empty answer to the final
        # challenge: the exchange fails and the session goes on; EOF ends it.
        if isinstance(answer, pop3.InvalidCommand):
            await self.wire.send(answer.reply_hint)
            return True
        if isinstance(answer, pop3.AuthCancel | pop3.AuthResponse):
            await self.wire.send(_AUTH_CANCELLED)
            return True
        self.reason = "connection closed"
        return False

    async def _may_try(self, auth: AuthService) -> bool:
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
            await self.wire.send(_AUTH_THROTTLED)
            return False
        if verdict.delay:
            await trio.sleep(verdict.delay)
        return True

    async def _failed(
        self, auth: AuthService, method: str, user: str, attempt: bytes | None
    ) -> None:
        delay = auth.record(self.peer[0], False, trio.current_time(), attempt=attempt)
        await self._report_failure(method, user, delay)

    async def _report_failure(self, method: str, user: str, delay: float) -> None:
        ip = self.peer[0]
        self.log.info(
            failure_log_line(service=self.service.service, method=method, user=user, client_ip=ip)
        )
        await trio.sleep(delay)
        await self.wire.send(_AUTH_FAILED)

    async def _login(self, key: str, method: str) -> None:
        """Lock the maildrop and take the snapshot, then +OK (RFC 1939 §4)."""
        local, _, domain = key.rpartition("@")
        root = self.service.store.maildir(MailboxId(domain=domain, local=local))
        try:
            # Shielded: a maildrop opened by the thread must reach self.maildrop, or
            # its lock would outlive the session.
            with trio.CancelScope(shield=True):
                maildrop = await trio.to_thread.run_sync(Maildrop.open, root)
        except MaildropInUseError:
            self.log.info(
                "login refused: user=<%s>, rip=%s, maildrop in use", key, _show_ip(self.peer[0])
            )
            await self.wire.send(_IN_USE)
            return
        except OSError as exc:
            self.log.error("%s: cannot open the maildrop of <%s>: %s", self.client, key, exc)
            await self.wire.send(_MAILDROP_ERROR)
            return
        self.maildrop = maildrop
        self.user = key
        count, size = self._totals()
        self.log.info(
            "login: user=<%s>, method=%s, rip=%s, tls=%s",
            key,
            method,
            _show_ip(self.peer[0]),
            self.tls.split()[0] if self.tls else "no",
        )
        await self.wire.send(pop3.Ok(text=f"Logged in, {count} messages ({size} octets)"))

    # -- TRANSACTION -------------------------------------------------------------------

    def _messages(self) -> tuple[MessageInfo, ...]:
        assert self.maildrop is not None, "the core allows this only after login"
        return self.maildrop.messages

    def _live(self) -> list[tuple[int, MessageInfo]]:
        return [
            (number, message)
            for number, message in enumerate(self._messages(), 1)
            if number not in self.deleted
        ]

    def _totals(self) -> tuple[int, int]:
        live = self._live()
        return len(live), sum(message.size for _number, message in live)

    def _message(self, number: int) -> MessageInfo | pop3.Err:
        """Message `number` of the snapshot, or the -ERR for it (RFC 1939 §5: a message
        marked as deleted may not be referred to)."""
        messages = self._messages()
        if number > len(messages):
            return pop3.Err(text=f"No such message, only {len(messages)} messages in maildrop")
        if number in self.deleted:
            return pop3.Err(text=f"Message {number} already deleted")
        return messages[number - 1]

    async def on_stat(self, event: pop3.Stat) -> bool:
        count, size = self._totals()
        await self.wire.send(pop3.Ok(text=f"{count} {size}"))
        return True

    async def on_list(self, event: pop3.List) -> bool:
        if event.msg is None:
            live = self._live()
            listing = b"".join(b"%d %d\r\n" % (n, m.size) for n, m in live)
            size = sum(m.size for _n, m in live)
            await self._multiline(f"{len(live)} messages ({size} octets)", listing)
            return True
        message = self._message(event.msg)
        if isinstance(message, pop3.Err):
            await self.wire.send(message)
        else:
            await self.wire.send(pop3.Ok(text=f"{event.msg} {message.size}"))
        return True

    async def on_uidl(self, event: pop3.Uidl) -> bool:
        if event.msg is None:
            listing = "".join(f"{n} {m.uid}\r\n" for n, m in self._live())
            await self._multiline("", listing.encode("ascii"))
            return True
        message = self._message(event.msg)
        if isinstance(message, pop3.Err):
            await self.wire.send(message)
        else:
            await self.wire.send(pop3.Ok(text=f"{event.msg} {message.uid}"))
        return True

    async def on_retr(self, event: pop3.Retr) -> bool:
        sent = await self._send_message(event.msg, None)
        if sent is not None:
            self.counters.retr += 1
            self.counters.retr_bytes += sent
        return True

    async def on_top(self, event: pop3.Top) -> bool:
        sent = await self._send_message(event.msg, event.lines)
        if sent is not None:
            self.counters.top += 1
            self.counters.top_bytes += sent
        return True

    async def _send_message(self, number: int, lines: int | None) -> int | None:
        """RETR (`lines` None) or TOP: the octets sent, or None after an -ERR."""
        message = self._message(number)
        if isinstance(message, pop3.Err):
            await self.wire.send(message)
            return None
        maildrop = self.maildrop
        assert maildrop is not None
        try:
            with trio.CancelScope(shield=True):  # the open file must reach `reader`
                reader, chunk = await trio.to_thread.run_sync(
                    _open_and_read, maildrop, message, lines
                )
        except MessageGoneError:
            self.log.info(
                "%s: message %d (%s) removed by another client", self.client, number, message.base
            )
            await self.wire.send(pop3.Err(text=f"Message {number} was removed by another client"))
            return None
        except OSError as exc:
            self.log.error("%s: cannot read %s: %s", self.client, message.base, exc)
            await self.wire.send(pop3.Err(code="SYS/TEMP", text="Cannot read the message"))
            return None
        sent = 0
        try:
            text = f"{message.size} octets" if lines is None else "Top of message follows"
            await self.wire.send(pop3.Ok(text=text))
            while chunk:
                await self._send_chunk(chunk)
                sent += len(chunk)
                if reader.done:
                    break
                chunk = await trio.to_thread.run_sync(reader.read_up_to, _READ_AHEAD)
        finally:
            reader.close()
        await self.wire.send(pop3.EndOfMultiline())
        return sent

    async def on_dele(self, event: pop3.Dele) -> bool:
        message = self._message(event.msg)
        if isinstance(message, pop3.Err):
            await self.wire.send(message)
        else:
            self.deleted.add(event.msg)
            await self.wire.send(pop3.Ok(text=f"Message {event.msg} deleted"))
        return True

    async def on_noop(self, event: pop3.Noop) -> bool:
        await self.wire.send(_OK)
        return True

    async def on_rset(self, event: pop3.Rset) -> bool:
        self.deleted.clear()
        count, size = self._totals()
        await self.wire.send(pop3.Ok(text=f"Maildrop has {count} messages ({size} octets)"))
        return True

    async def on_quit(self, event: pop3.Quit) -> bool:
        self.reason = "logged out"
        if self.conn.stage is not pop3.Stage.UPDATE:
            await self.wire.send(pop3.Ok(text="Bye"))
            return False
        # RFC 1939 §6: remove the marked messages, then answer.
        maildrop = self.maildrop
        assert maildrop is not None
        messages = self._messages()
        marked = [messages[number - 1] for number in sorted(self.deleted)]
        result = await trio.to_thread.run_sync(maildrop.expunge, marked)
        self.counters.deleted = result.removed + result.gone
        if result.failed:
            self.log.error(
                "%s: user=<%s>: could not remove %s",
                self.client,
                self.user,
                ", ".join(result.failed),
            )
            await self.wire.send(_NOT_REMOVED)
        else:
            await self.wire.send(pop3.Ok(text=f"Logging out, {len(marked)} messages deleted"))
        return False

    # -- either state ------------------------------------------------------------------

    async def on_invalid_command(self, event: pop3.InvalidCommand) -> bool:
        self.log.info(
            "%s: -ERR %s: %s",
            self.client,
            event.reason,
            _printable(event.line.decode("utf-8", "replace")[:100]),
        )
        await self.wire.send(event.reply_hint)
        return True

    async def on_closed(self, event: pop3.ConnectionClosed) -> bool:
        self.reason = "connection closed"
        return False

    def _log_disconnect(self) -> None:
        ip = _show_ip(self.peer[0])
        if self.user is None:
            self.log.info("disconnect: rip=%s, no login, reason=%s", ip, self.reason)
            return
        c = self.counters
        total = sum(message.size for message in self.maildrop.messages) if self.maildrop else 0
        self.log.info(
            "disconnect: user=<%s>, rip=%s, top=%d/%d, retr=%d/%d, del=%d/%d, size=%d, reason=%s",
            self.user,
            ip,
            c.top,
            c.top_bytes,
            c.retr,
            c.retr_bytes,
            c.deleted,
            len(self.maildrop.messages) if self.maildrop else 0,
            total,
            self.reason,
        )


def _show_ip(ip: str) -> str:
    # As the auth failure line shows it: an IPv4 client on a dual-stack socket as IPv4.
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)
