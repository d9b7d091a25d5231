"""The IMAP services on Trio, `imap` (STARTTLS offered, RFC 9051 §6.2.1) and `imaps`
(implicit TLS, RFC 8314): one task per connection, moving bytes between the socket and a
`sansmail.sessions.imapd.ImapConversation`, which decides everything.

This file owns what the conversation cannot: time (the autologout timer, shutdown, the
failure delays of logging in), the TLS handshake, the worker threads for the blocking
calls (every command of a logged-in session, which work on the store), and writing the
log lines the conversation hands over.

Time: `SessionTime`'s one cancel scope per session. Before each wait for a command its
deadline is set to the conversation's `timeout` (the autologout timer); expiry sends its
BYE and closes. Shutdown cancels the same scope, but only while the session waits for a
command: a command being answered (an APPEND being stored) is finished first, then the
session says BYE. Worker threads are never abandoned, so a store call always completes.
"""

from __future__ import annotations

import logging

import attrs
import trio

from sansmail import PAUSED, LocalProtocolError, RemoteProtocolError, imap
from sansmail.config import Config
from sansmail.sessions.imapd import ImapConversation, ImapService
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

__all__ = ["IMAPService"]


@attrs.define
class IMAPService:
    """One `imap` or `imaps` listener."""

    shared: ImapService
    log: logging.Logger
    #: The server certificate; None: no TLS at all (STARTTLS is then not offered).
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
        connection caps, shutdown) becomes a BYE greeting. `tls` describes the TLS
        session when `stream` is already encrypted (imaps)."""
        connection = _Connection(self, stream, peer, tls)
        await run_registered(connection.time, registry, lambda: connection.run(refuse))


class _Connection:
    """One IMAP conversation, carried."""

    def __init__(
        self, service: IMAPService, stream: trio.abc.Stream, peer: tuple[str, int], tls: str | None
    ) -> None:
        self.service = service
        self.session = ImapConversation(
            service.shared, client_ip=peer[0], client_port=peer[1], log=service.log.log, tls=tls
        )
        self.wire = Wire(stream, self.session.counted)
        self.time = SessionTime()

    async def run(self, refuse: Reply | None) -> None:
        session = self.session
        last_words = b""
        try:
            with self.time.scope:
                greeting = session.greeting() if refuse is None else session.refuse(refuse.text)
                await self.wire.send(greeting, flush=True)
                await self._loop()
            if self.time.scope.cancelled_caught:
                stopping = self.time.stopping
                hint = session.shutdown_reply() if stopping else session.timeout_reply()
                last_words = session.last_words(hint)
        except RemoteProtocolError as exc:
            session.protocol_error(exc)
            last_words = session.last_words(exc.reply_hint)
        except Exception:  # LocalProtocolError, a disk error, or any other bug
            # A bug must cost one session, never the server.
            self.service.log.exception("%s: internal error, closing", session.client)
            last_words = session.last_words(session.internal_error())
        except trio.Cancelled:
            # The shutdown grace period ran out with this session still busy.
            last_words = session.last_words(session.shutdown_reply())
            raise
        finally:
            with trio.CancelScope(shield=True):
                if session.cleanup_due:
                    await trio.to_thread.run_sync(session.cleanup)
                await self.wire.aclose(last_words=last_words)
            session.closed()

    async def _loop(self) -> None:
        session = self.session
        while not session.ended:
            event = await self._next_event()
            if event is PAUSED:
                # The core waits for something only we can do; nothing here leaves it
                # paused except a bug.
                raise LocalProtocolError(f"core paused in {session.conn.our_state}")
            if isinstance(event, imap.StartTLS):
                await self._starttls(event)
                continue
            if isinstance(event, imap.Login | imap.Authenticate):
                await self._login(event)
                continue
            assert isinstance(event, imap.Event)
            if session.blocks(event):
                responses = await trio.to_thread.run_sync(session.handle, event)
            else:
                responses = session.handle(event)
            for response in responses:
                await self.wire.send(response)

    async def _next_event(self) -> object:
        return await self.time.wait_for_client(self.wire, self.session.timeout)

    async def _starttls(self, event: imap.StartTLS) -> None:
        session = self.session
        reply = session.starttls(event)
        await self.wire.send(reply, flush=True)
        if reply.status != "OK":
            return
        holder = self.service.tls
        assert holder is not None, "the conversation offers TLS only with a certificate"
        try:
            stream = await start_tls(self.wire, holder)
        except TLSHandshakeError as exc:
            session.tls_failed(str(exc))
            return
        session.tls_started(received_tls(stream), describe(stream))

    async def _login(self, event: imap.Login | imap.Authenticate) -> None:
        session = self.session
        refusal = session.login_refusal(event)
        if refusal is not None:
            await self.wire.send(refusal)
            return
        login = session.login()
        if not await admitted(login):
            await self.wire.send(session.throttled(event))
            return
        exchange = session.exchange(event, login, nonce=nonce(), now=wall_clock())
        last: list[object] = []

        async def challenge(data: bytes) -> bytes | None:
            await self.wire.send(imap.Continuation(data=data))
            answer = await self._next_event()
            last[:] = [answer]
            return answer.data if isinstance(answer, imap.AuthResponse) else None

        result = await drive(exchange, challenge)
        last_event = last[0] if last else None
        responses = await trio.to_thread.run_sync(session.login_result, event, result, last_event)
        for response in responses:
            await self.wire.send(response)
