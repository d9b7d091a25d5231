"""The SMTP service on Trio: one task per connection, moving bytes between the socket and
a `sansmail.sessions.smtpd.SmtpSession`, which decides everything.

This file owns what the session cannot: time (the per-command and DATA timeouts, the
failure delays of logging in, shutdown), the TLS handshake, the worker threads for the
session's blocking calls, and writing the log lines the session hands over.

Durability rule: the `250` that ends a transaction is what `SmtpSession.commit` returns
once every copy is on disk; the commit runs in a worker thread that is never abandoned,
so shutdown can never turn a stored message into an unacknowledged one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs
import trio

from sansmail import PAUSED, LocalProtocolError, RemoteProtocolError, smtp
from sansmail.config import Config
from sansmail.sessions.smtpd import AUTH_THROTTLED, INTERNAL_ERROR, SmtpService, SmtpSession
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

__all__ = ["SMTPService"]


def _nothing(_queue_id: str) -> None:
    return None


@attrs.define
class SMTPService:
    """One `smtp`, `submission` or `submissions` listener."""

    shared: SmtpService
    log: logging.Logger
    #: The server certificate; None: no TLS at all (STARTTLS is then not offered).
    tls: TLSContextHolder | None = None
    #: Called with each queue id a session queued: the queue runner of this process.
    wake: Callable[[str], None] = _nothing

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
        """Run one session to its end. `refuse` is sent as the greeting instead of 220
        (connection limits, shutdown). The session is in `registry` while it runs, so
        shutdown can ask it to stop. `tls` describes the TLS session when `stream` is
        already encrypted (implicit TLS)."""
        connection = _Connection(self, stream, peer, tls)
        await run_registered(connection.time, registry, lambda: connection.run(refuse))


class _Connection:
    """One SMTP conversation. Time: `SessionTime`'s one cancel scope per session, whose
    deadline is set before each wait for the client; shutdown cuts a wait between
    transactions at once and otherwise waits for the transaction to end."""

    def __init__(
        self, service: SMTPService, stream: trio.abc.Stream, peer: tuple[str, int], tls: str | None
    ) -> None:
        self.service = service
        self.session = SmtpSession(
            service.shared, client_ip=peer[0], client_port=peer[1], log=service.log.log, tls=tls
        )
        self.wire = Wire(stream, self.session.conn)
        self.time = SessionTime()
        self.last_words = b""

    async def run(self, refuse: Reply | None) -> None:
        session = self.session
        try:
            with self.time.scope:
                greeting = session.greeting() if refuse is None else session.refuse(refuse)
                await self.wire.send(greeting, flush=True)
                await self._loop()
            if self.time.scope.cancelled_caught:
                stopping = self.time.stopping
                hint = session.shutdown_reply() if stopping else session.timeout_reply()
                self.last_words = session.last_words(hint)
        except RemoteProtocolError as exc:
            session.protocol_error(exc)
            self.last_words = session.last_words(exc.reply_hint)
        except Exception:  # LocalProtocolError, or any other bug
            # A bug must cost one session, never the server: its task would otherwise
            # take the whole nursery down.
            self.service.log.exception("%s: internal error, closing", session.client)
            self.last_words = session.last_words(INTERNAL_ERROR)
        except trio.Cancelled:
            # The shutdown grace period ran out with this session still busy.
            self.last_words = session.last_words(session.shutdown_reply())
            raise
        finally:
            with trio.CancelScope(shield=True):
                session.closed()
                await self._cleanup()
                await self.wire.aclose(last_words=self.last_words)

    async def _loop(self) -> None:
        session = self.session
        wire = self.wire
        while not session.ended:
            event = await self.time.wait_for_client(
                wire, session.timeout, interruptible=not session.in_transaction
            )
            if event is PAUSED:
                # The core waits for something only we can do; nothing here leaves it
                # paused except a bug.
                raise LocalProtocolError(f"core paused in {session.conn.our_state}")
            if isinstance(event, smtp.MessageData):
                if session.content(event.data, wall_clock()):
                    await trio.to_thread.run_sync(session.flush)
            elif isinstance(event, smtp.EndOfMessage):
                committed = await trio.to_thread.run_sync(session.commit, wall_clock())
                for queue_id in committed.queued:
                    self.service.wake(queue_id)
                await wire.send(committed.reply)
            elif isinstance(event, smtp.StartTLS):
                await self._starttls()
            elif isinstance(event, smtp.Auth):
                await self._auth(event)
            else:
                assert isinstance(event, smtp.Event)
                reply = session.handle(event, wall_clock())
                if reply is not None:
                    await wire.send(reply)
            await self._cleanup()

    async def _cleanup(self) -> None:
        if self.session.cleanup_due:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.session.cleanup)

    async def _starttls(self) -> None:
        session = self.session
        await self.wire.send(session.starttls(), flush=True)
        holder = self.service.tls
        assert holder is not None, "STARTTLS is never offered without a certificate"
        try:
            stream = await start_tls(self.wire, holder)
        except TLSHandshakeError as exc:
            session.tls_failed(str(exc))
            return
        session.tls_started(received_tls(stream), describe(stream))

    async def _auth(self, event: smtp.Auth) -> None:
        session = self.session
        login = session.login()
        if not await admitted(login):
            await self.wire.send(AUTH_THROTTLED)
            return
        exchange = session.auth(event, login, nonce=nonce(), now=wall_clock())
        last: list[object] = []

        async def challenge(data: bytes) -> bytes | None:
            await self.wire.send(Reply.challenge(data))
            answer = await self.time.wait_for_client(self.wire, session.timeout)
            last[:] = [answer]
            return answer.data if isinstance(answer, smtp.AuthResponse) else None

        result = await drive(exchange, challenge)
        reply = session.auth_result(result, last[0] if last else None)
        if reply is not None:
            await self.wire.send(reply)
