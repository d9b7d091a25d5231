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
first chunk together), then one per further chunk; at most one chunk is in memory. A
RETR read from disk also reads the small messages after it (`READ_AHEAD_BATCH` octets),
whose RETRs `Pop3Session.ready` then answers with no hop: a client downloading the
maildrop in order pays a thread hop per few dozen messages. The session holds the
maildrop, the open message and what it read ahead itself, so a cancellation can never
drop one between a thread and a variable; `Pop3Session.cleanup` at the end releases them.

Writes. A message's answer is queued whole and leaves with the next read from the
client (one write per RETR of a small message, the +OK, the text and the final dot
together); a chunk with more to come, or more than `FLUSH_AT` octets queued by
pipelined RETRs, is written at once, so the queue stays bounded.
"""

from __future__ import annotations

import logging
import math

import attrs
import trio

from sansmail import PAUSED, LocalProtocolError, pop3
from sansmail.config import Config
from sansmail.mail.pacing import connection_pacer
from sansmail.sessions.common import Refusal
from sansmail.sessions.pop3d import READ_AHEAD_BATCH, Pop3Service, Pop3Session, Transfer
from sansmail_trio._counts import SharedCounts
from sansmail_trio._log import line_logger
from sansmail_trio._login import log_in
from sansmail_trio._session import (
    SessionRegistry,
    SessionTime,
    UserSlot,
    carry,
    new_session_id,
    send_all,
    upgrade,
)
from sansmail_trio._tls import TLSContextHolder
from sansmail_trio._wire import Wire

__all__ = ["SEND_TIMEOUT", "POP3Service"]

#: How long one chunk of a RETR or TOP answer may take to leave.
SEND_TIMEOUT = 600.0
#: Queued answer octets past which they are written before the next command is read.
FLUSH_AT = 256 * 1024


@attrs.define
class POP3Service:
    """One `pop3` or `pop3s` listener."""

    shared: Pop3Service
    log: logging.Logger
    #: The server certificate; None: no TLS at all (STLS is then not offered).
    tls: TLSContextHolder | None = None
    #: The table every server process counts in (None: no max_userip_connections).
    counts: SharedCounts | None = None

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
        away at the greeting; while it runs it is in `registry`, so shutdown can reach
        it. `tls` describes the TLS session when `stream` is already encrypted (pop3s)."""
        session_id = new_session_id()
        log_line = line_logger(self.log, session_id)
        session = Pop3Session(
            self.shared,
            client_ip=peer[0],
            client_port=peer[1],
            log=log_line,
            tls=tls,
            read_ahead=READ_AHEAD_BATCH,
        )
        wire = Wire(stream, session.conn)
        slot = UserSlot(self.counts, "pop3", peer[0])
        try:
            await carry(
                session,
                wire,
                self.log,
                registry=registry,
                refusal=refuse,
                loop=lambda time: _loop(self, session, wire, time, slot),
                pacer=connection_pacer(self.config, peer[0]),
                session_id=session_id,
                service=self.shared.service,
                peer=peer,
                log_line=log_line,
            )
        finally:
            slot.release()


async def _loop(
    service: POP3Service, session: Pop3Session, wire: Wire, time: SessionTime, slot: UserSlot
) -> None:
    queued = _Queued()
    while not session.ended:
        event = await time.wait_for_client(wire, session.timeout)
        if time.pacer is not None:
            await time.pace()
        if event is PAUSED:
            # The core waits for something only we can do; nothing here leaves it paused
            # except a bug.
            raise LocalProtocolError(f"core paused in {session.conn.our_state}")
        if isinstance(event, pop3.Retr | pop3.Top):
            await _retrieve(session, wire, time, event, queued)
        elif isinstance(event, pop3.Pass | pop3.Auth):
            await log_in(session, event, wire, time, userip=slot)
            slot.settle(session.user)
        elif isinstance(event, pop3.Stls):
            reply = session.stls()
            await wire.send(reply, flush=True)
            if isinstance(reply, pop3.Ok):
                await upgrade(session, wire, service.tls)
        elif isinstance(event, pop3.Quit):
            await wire.send(await trio.to_thread.run_sync(session.quit))
        else:
            assert isinstance(event, pop3.Event)
            await send_all(wire, session.handle(event))


class _Queued:
    """Answer octets queued since the last write we asked for (the wire may have written
    them already, when it read the next command: then this counts high, which costs at
    most one early write)."""

    octets = 0


async def _retrieve(
    session: Pop3Session,
    wire: Wire,
    time: SessionTime,
    event: pop3.Retr | pop3.Top,
    queued: _Queued,
) -> None:
    answer: Transfer | pop3.Err | None = session.ready(event)
    if answer is None:
        answer = await trio.to_thread.run_sync(session.retrieve, event)
    if isinstance(answer, pop3.Err):
        await wire.send(answer)
        return
    try:
        await wire.send(answer.reply)
        chunk = answer.first
        while chunk:
            queued.octets += len(chunk)
            # A chunk with more to come, or a long queue, leaves now, in time: a client
            # that stops reading must not keep its maildrop locked. The wait for
            # commands has its own deadline.
            data = pop3.MultilineData(data=chunk)
            if answer.done and queued.octets <= FLUSH_AT:
                await wire.send(data)  # queued only: no I/O, no deadline to keep
            else:
                time.scope.deadline = trio.current_time() + SEND_TIMEOUT
                try:
                    await wire.send(data, flush=True)
                finally:
                    time.scope.deadline = math.inf
                queued.octets = 0
            chunk = b"" if answer.done else await trio.to_thread.run_sync(answer.read)
    finally:
        answer.close()
    await wire.send(session.transferred(answer))
