"""The POP3 services on Trio, `pop3` (STLS offered, RFC 2595) and `pop3s` (implicit TLS,
RFC 8314): one task per connection, moving bytes between the socket and a
`sansmail.sessions.pop3d.Pop3Session`, which decides everything.

This file owns what the session cannot: time, the STLS handshake, the worker threads for
the session's blocking calls (opening the maildrop, reading a message, the QUIT commit),
and writing the log lines the session hands over.

Time. One cancel scope per session (`SessionTime`). Before each wait for the client its
deadline is the session's `timeout` (RFC 1939's autologout); while a RETR or TOP answer
is written, each chunk must leave within `SEND_TIMEOUT`, so a client that stops reading
cannot keep its maildrop locked; our own disk work never counts against the client.
Expiry ends the session with the session's unprompted -ERR. Shutdown cancels the same
scope while the session waits for a command: nothing is deleted or marked then (no QUIT).
Failure delays of logging in are waited out by `_login.py`.

Threads. A RETR or TOP costs one hop for a message up to `READ_AHEAD` octets (open and
first chunk together), then one per further chunk; at most one chunk is in memory. The
session holds the maildrop and the open message itself, so a cancellation can never drop
one between a thread and a variable; `Pop3Session.close` in ``finally`` releases them.
"""

from __future__ import annotations

import logging
import math

import attrs
import trio

from sansmail import PAUSED, LocalProtocolError, RemoteProtocolError, pop3
from sansmail.config import Config
from sansmail.sessions.pop3d import AUTH_THROTTLED, Pop3Service, Pop3Session
from sansmail.smtp import Reply
from sansmail_trio._login import admitted, drive, nonce, wall_clock
from sansmail_trio._session import SessionRegistry, SessionTime, run_registered
from sansmail_trio._tls import (
    TLSContextHolder,
    TLSHandshakeError,
    describe,
    received_tls,
    start_tls,
)
from sansmail_trio._wire import Wire

__all__ = ["SEND_TIMEOUT", "POP3Service"]

#: How long one chunk of a RETR or TOP answer may take to leave.
SEND_TIMEOUT = 600.0


@attrs.define
class POP3Service:
    """One `pop3` or `pop3s` listener."""

    shared: Pop3Service
    log: logging.Logger
    #: The server certificate; None: no TLS at all (STLS is then not offered).
    tls: TLSContextHolder | None = None

    @property
    def config(self) -> Config:
        return self.shared.config

    @property
    def service(self) -> str:
        return self.shared.service

    @property
    def implicit_tls(self) -> bool:
        return self.shared.implicit_tls

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
        connection caps, shutdown) becomes a -ERR greeting. The session is in `registry`
        while it runs, so shutdown can ask it to stop. `tls` describes the TLS session
        when `stream` is already encrypted (pop3s)."""
        connection = _Connection(self, stream, peer, tls)
        await run_registered(connection.time, registry, lambda: connection.run(refuse))


class _Connection:
    """One POP3 conversation; see the module docstring for time and resources."""

    def __init__(
        self, service: POP3Service, stream: trio.abc.Stream, peer: tuple[str, int], tls: str | None
    ) -> None:
        self.service = service
        self.session = Pop3Session(
            service.shared, client_ip=peer[0], client_port=peer[1], log=service.log.log, tls=tls
        )
        self.wire = Wire(stream, self.session.conn)
        self.time = SessionTime()
        self.last_words = b""

    async def run(self, refuse: Reply | None) -> None:
        session = self.session
        try:
            with self.time.scope:
                greeting = session.greeting() if refuse is None else session.refuse(refuse.text)
                await self.wire.send(greeting, flush=True)
                await self._loop()
            if self.time.scope.cancelled_caught:
                stopping = self.time.stopping
                hint = session.shutdown_reply() if stopping else session.timeout_reply()
                self.last_words = session.last_words(hint)
        except RemoteProtocolError as exc:
            session.protocol_error(exc)
            self.last_words = session.last_words(exc.reply_hint)
        except Exception:  # LocalProtocolError, a disk error mid-RETR, or any other bug
            # A bug must cost one session, never the server.
            self.service.log.exception("%s: internal error, closing", session.client)
            self.last_words = session.last_words(session.internal_error())
        except trio.Cancelled:
            # The shutdown grace period ran out with this session still busy.
            self.last_words = session.last_words(session.shutdown_reply())
            raise
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(session.close)
                await self.wire.aclose(last_words=self.last_words)

    async def _loop(self) -> None:
        session = self.session
        wire = self.wire
        while not session.ended:
            event = await self._next_event()
            if event is PAUSED:
                # The core waits for something only we can do; nothing here leaves it
                # paused except a bug.
                raise LocalProtocolError(f"core paused in {session.conn.our_state}")
            if isinstance(event, pop3.Retr | pop3.Top):
                await self._retrieve(event)
            elif isinstance(event, pop3.Pass | pop3.Auth):
                await self._login(event)
            elif isinstance(event, pop3.Stls):
                await self._stls()
            elif isinstance(event, pop3.Quit):
                await wire.send(await trio.to_thread.run_sync(session.quit))
            else:
                assert isinstance(event, pop3.Event)
                for answer in session.handle(event):
                    await wire.send(answer)

    async def _next_event(self) -> object:
        return await self.time.wait_for_client(self.wire, self.session.timeout)

    async def _retrieve(self, event: pop3.Retr | pop3.Top) -> None:
        session = self.session
        answer = await trio.to_thread.run_sync(session.retrieve, event)
        if isinstance(answer, pop3.Err):
            await self.wire.send(answer)
            return
        try:
            await self.wire.send(answer.reply)
            chunk = answer.first
            while chunk:
                await self._send_chunk(chunk)
                chunk = b"" if answer.done else await trio.to_thread.run_sync(answer.read)
        finally:
            answer.close()
        await self.wire.send(session.transferred(answer))

    async def _send_chunk(self, data: bytes) -> None:
        scope = self.time.scope
        scope.deadline = trio.current_time() + SEND_TIMEOUT
        try:
            await self.wire.send(pop3.MultilineData(data=data), flush=True)
        finally:
            scope.deadline = math.inf

    async def _stls(self) -> None:
        session = self.session
        reply = session.stls()
        await self.wire.send(reply, flush=True)
        if isinstance(reply, pop3.Err):
            return
        holder = self.service.tls
        assert holder is not None, "STLS is never accepted without a certificate"
        try:
            stream = await start_tls(self.wire, holder)
        except TLSHandshakeError as exc:
            session.tls_failed(str(exc))
            return
        session.tls_started(received_tls(stream), describe(stream))

    async def _login(self, event: pop3.Pass | pop3.Auth) -> None:
        session = self.session
        login = session.login(event)
        if isinstance(login, pop3.Err):
            await self.wire.send(login)
            return
        if not await admitted(login):
            await self.wire.send(AUTH_THROTTLED)
            return
        exchange = session.exchange(event, login, nonce=nonce(), now=wall_clock())
        last: list[object] = []

        async def challenge(data: bytes) -> bytes | None:
            await self.wire.send(pop3.Challenge(data=data))
            answer = await self._next_event()
            last[:] = [answer]
            return answer.data if isinstance(answer, pop3.AuthResponse) else None

        result = await drive(exchange, challenge)
        reply = await trio.to_thread.run_sync(
            session.login_result, result, last[0] if last else None
        )
        if reply is not None:
            await self.wire.send(reply)
