"""The ManageSieve service on Trio (RFC 5804, port 4190; STARTTLS offered): one task per
connection, moving bytes between the socket and a
`sansmail.sessions.managesieved.ManageSieveSession`, which decides everything.

This file owns what the session cannot: time (the idle timeout, `converse`'s scope), the
STARTTLS handshake and the capability listing owed after it (§2.2), command pacing, the
worker threads for the session's blocking calls (each script command: the store's
file I/O and the Sieve parser's CPU; the password check of logging in, by `_login.py`),
and writing the log lines the session hands over. The connection caps are the
listener's (`_serve.py`, family `MANAGESIEVE`).
"""

from __future__ import annotations

import logging
from typing import Any

import attrs
import trio

from sansmail import PAUSED, LocalProtocolError, managesieve
from sansmail.config import Config
from sansmail.mail.pacing import connection_pacer
from sansmail.sessions.common import Refusal
from sansmail.sessions.managesieved import ManageSieveService, ManageSieveSession
from sansmail_trio._log import line_logger
from sansmail_trio._login import log_in
from sansmail_trio._session import (
    SessionRegistry,
    SessionTime,
    carry,
    new_session_id,
    send_all,
    upgrade,
)
from sansmail_trio._tls import TLSContextHolder
from sansmail_trio._wire import Wire

__all__ = ["MAX_CONNECTIONS", "MAX_CONNECTIONS_PER_IP", "ManageSieveServer"]

#: Simultaneous ManageSieve connections, and from one address (in every server
#: process). A client opens one while its user edits filters: far fewer than IMAP's.
MAX_CONNECTIONS = 200
MAX_CONNECTIONS_PER_IP = 20


@attrs.define
class ManageSieveServer:
    """One `managesieve` listener."""

    shared: ManageSieveService
    log: logging.Logger
    #: The server certificate; None: no TLS at all (STARTTLS is then not offered).
    tls: TLSContextHolder | None = None

    @property
    def config(self) -> Config:
        return self.shared.config

    @property
    def implicit_tls(self) -> bool:
        return False

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
        away at the greeting with BYE; while it runs it is in `registry`, so shutdown can
        reach it."""
        session_id = new_session_id()
        log_line = line_logger(self.log, session_id)
        session = ManageSieveSession(
            self.shared,
            client_ip=peer[0],
            client_port=peer[1],
            local_ip=_local_ip(stream),
            log=log_line,
            tls=tls,
        )
        wire = Wire(stream, session.conn)
        await carry(
            session,
            wire,
            self.log,
            registry=registry,
            refusal=refuse,
            loop=lambda time: _loop(self, session, wire, time),
            pacer=connection_pacer(self.config, peer[0]),
            session_id=session_id,
            service=self.shared.service,
            peer=peer,
            log_line=log_line,
        )


async def _loop(
    server: ManageSieveServer, session: ManageSieveSession, wire: Wire, time: SessionTime
) -> None:
    while not session.ended:
        event = await time.wait_for_client(wire, session.timeout)
        if time.pacer is not None:
            await time.pace()
        if event is PAUSED:
            # Lockstep: the core pauses only while we owe an answer or a handshake, and
            # both are given below before the next wait.
            raise LocalProtocolError(f"core paused in {session.conn.our_state}")
        assert isinstance(event, managesieve.Event)
        if isinstance(event, managesieve.Authenticate):
            await log_in(session, event, wire, time)
        elif isinstance(event, managesieve.StartTls):
            reply = session.starttls()
            await wire.send(reply, flush=True)
            if isinstance(reply, managesieve.Ok):
                await upgrade(session, wire, server.tls)
                if not session.ended:
                    await wire.send(session.capabilities())  # RFC 5804 §2.2
        elif session.blocking(event):
            await wire.send(await trio.to_thread.run_sync(session.run, event))
        else:
            await send_all(wire, session.handle(event))


def _local_ip(stream: Any) -> str:
    """The address the client connected to, for the log (lip=)."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    sock = getattr(stream, "socket", None)  # PlainStream's and trio.SocketStream's
    if sock is None:
        return "unknown"
    try:
        return str(sock.getsockname()[0])
    except OSError:
        return "unknown"
