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

from sansmail import PAUSED, LocalProtocolError, imap
from sansmail.config import Config
from sansmail.sessions.common import Refusal
from sansmail.sessions.imapd import ImapConversation, ImapService
from sansmail_trio._login import log_in
from sansmail_trio._session import (
    SessionRegistry,
    SessionTime,
    carry,
    send_all,
    upgrade,
)
from sansmail_trio._tls import TLSContextHolder
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
    def implicit_tls(self) -> bool:
        return self.shared.implicit_tls

    async def handle(
        self,
        stream: trio.abc.Stream,
        peer: tuple[str, int],
        *,
        refuse: Refusal | None = None,
        registry: SessionRegistry | None = None,
        tls: str | None = None,
    ) -> None:
        """Run one session to its end: `refuse` (connection limits, shutdown) turns it
        away with a BYE; while it runs it is in `registry`, so shutdown can reach it.
        `tls` describes the TLS session when `stream` is already encrypted (imaps)."""
        session = ImapConversation(
            self.shared, client_ip=peer[0], client_port=peer[1], log=self.log.log, tls=tls
        )
        # Through `counted`: the logout line reports the octets of the conversation.
        wire = Wire(stream, session.counted)
        await carry(
            session,
            wire,
            self.log,
            registry=registry,
            refusal=refuse,
            loop=lambda time: _loop(self, session, wire, time),
        )


async def _loop(
    service: IMAPService, session: ImapConversation, wire: Wire, time: SessionTime
) -> None:
    while not session.ended:
        event = await time.wait_for_client(wire, session.timeout)
        if event is PAUSED:
            # The core waits for something only we can do; nothing here leaves it paused
            # except a bug.
            raise LocalProtocolError(f"core paused in {session.conn.our_state}")
        if isinstance(event, imap.StartTLS):
            reply = session.starttls(event)
            await wire.send(reply, flush=True)
            if reply.status == "OK":
                await upgrade(session, wire, service.tls)
        elif isinstance(event, imap.Login | imap.Authenticate):
            await log_in(session, event, wire, time)
        else:
            assert isinstance(event, imap.Event)
            if session.blocks(event):
                await send_all(wire, await trio.to_thread.run_sync(session.handle, event))
            else:
                await send_all(wire, session.handle(event))
