"""The SMTP services on Trio (`smtp`, `submission` with STARTTLS, `submissions` with
implicit TLS): one task per connection, moving bytes between the socket and a
`sansmail.sessions.smtpd.SmtpSession`, which decides everything.

This file owns what the session cannot: time (the per-command and DATA timeouts, the
failure delays of logging in, shutdown), the TLS handshake, the worker threads for the
session's blocking calls, and writing the log lines the session hands over. Shutdown cuts
a wait between transactions at once; a transaction in flight is let finish first.

Durability rule: the `250` that ends a transaction is what `SmtpSession.stored` returns
once every copy is on disk. The blocking part runs in the process's group committer
(`_commit.py`), which commits the messages of sessions that end at about the same time
together, in one worker thread that is never abandoned; without a committer (tests that
build one service alone) each message gets a worker thread of its own. Either way the
wait is shielded, so shutdown can never turn a stored message into an unacknowledged one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs
import trio

from sansmail import PAUSED, LocalProtocolError, smtp
from sansmail.config import Config
from sansmail.mail.pacing import connection_pacer
from sansmail.sessions.common import Refusal
from sansmail.sessions.smtpd import SmtpService, SmtpSession, Stage, Storing, store_all
from sansmail_trio._commit import Committer
from sansmail_trio._dns import Resolver
from sansmail_trio._inquiry import Inquirer
from sansmail_trio._log import line_logger
from sansmail_trio._login import log_in, wall_clock
from sansmail_trio._session import (
    SessionRegistry,
    SessionTime,
    carry,
    new_session_id,
    upgrade,
)
from sansmail_trio._tls import TLSContextHolder
from sansmail_trio._wire import Wire

__all__ = ["SMTPService"]


#: The commands whose stage may need inquiries first (CONNECT and END_OF_DATA have none).
_STAGES: dict[type, Stage] = {
    smtp.Hello: Stage.HELO,
    smtp.Mail: Stage.MAIL,
    smtp.Rcpt: Stage.RCPT,
}


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
    #: The group committer of this process (its task runs in `serve`).
    committer: Committer[Storing] = attrs.Factory(lambda: Committer(store_all))
    #: Answers the sender checks' DNS questions (None: no check asks any).
    resolver: Resolver | None = None

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
        it. `tls` describes the TLS session when `stream` is already encrypted."""
        session_id = new_session_id()
        log_line = line_logger(self.log, session_id)
        session = SmtpSession(
            self.shared, client_ip=peer[0], client_port=peer[1], log=log_line, tls=tls
        )
        wire = Wire(stream, session.conn)
        inquirer = Inquirer(self.resolver, log=log_line)
        try:
            await carry(
                session,
                wire,
                self.log,
                registry=registry,
                refusal=refuse,
                loop=lambda time: _loop(self, session, wire, time, inquirer),
                before_greeting=lambda: _inquire(session, inquirer, Stage.CONNECT),
                pacer=connection_pacer(self.config, peer[0]),
                session_id=session_id,
                service=self.shared.service,
                peer=peer,
                log_line=log_line,
            )
        finally:
            with trio.CancelScope(shield=True):
                await inquirer.aclose()


async def _inquire(
    session: SmtpSession, inquirer: Inquirer, stage: Stage, command: smtp.Event | None = None
) -> None:
    """Carry out what the checks need to know before `stage` (DNS, milters, errands)."""
    inquiries = session.inquiries(stage, command, wall_clock())
    if inquiries:
        await inquirer.run(inquiries)


async def _loop(
    service: SMTPService, session: SmtpSession, wire: Wire, time: SessionTime, inquirer: Inquirer
) -> None:
    while not session.ended:
        event = await time.wait_for_client(
            wire, session.timeout, interruptible=not session.in_transaction
        )
        if event is PAUSED:
            # The core waits for something only we can do; nothing here leaves it paused
            # except a bug.
            raise LocalProtocolError(f"core paused in {session.conn.our_state}")
        if time.pacer is not None and not isinstance(event, smtp.MessageData):
            await time.pace()  # a command (message content is never paced)
        if isinstance(event, smtp.MessageData):
            if session.content(event.data, wall_clock()):
                await trio.to_thread.run_sync(session.flush)
        elif isinstance(event, smtp.EndOfMessage):
            await _inquire(session, inquirer, Stage.END_OF_DATA)
            job = session.finish(wall_clock())
            if isinstance(job, Storing):
                await service.committer.commit(job)
                committed = session.stored(job)
            else:
                committed = job
            for queue_id in committed.queued:
                service.wake(queue_id)
            await wire.send(committed.reply)
        elif isinstance(event, smtp.StartTLS):
            await wire.send(session.starttls(), flush=True)
            await upgrade(session, wire, service.tls)
        elif isinstance(event, smtp.Auth):
            await log_in(session, event, wire, time)
        else:
            assert isinstance(event, smtp.Event)
            stage = _STAGES.get(type(event))
            if isinstance(event, smtp.Rcpt) and service.shared.lookups_block:
                await trio.to_thread.run_sync(session.look_up, event, wall_clock())
            if stage is not None:
                await _inquire(session, inquirer, stage, event)
            reply = session.handle(event, wall_clock())
            if reply is not None:
                await wire.send(reply)
        if session.cleanup_due:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(session.cleanup)
