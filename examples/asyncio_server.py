"""SMTP and POP3 on asyncio, through the same sessions as `sansmail-trio serve`.

It proves the layering: every mail decision (who may relay, where a recipient goes,
aliases and SRS, the durable Maildir delivery before ``250``, POP3's numbering, DELE and
QUIT) comes from `sansmail.sessions`, and nothing comes from `sansmail_trio`. What is
left is what an adapter owns: bytes, time, worker threads for the blocking calls.

    python3 examples/asyncio_server.py --config sansmail.toml

It serves the config's `smtp` and `pop3` listeners with its users, aliases, domains and
`mynetworks`. Left out, to stay short: TLS (so POP3 logins work only where
`plaintext_auth` allows them, loopback by default), the queue runner (relayed mail, and
mail for users with an active Sieve script, waits in ``<data_dir>/queue``; `sansmail-trio
serve` on the same data_dir delivers it),
connection caps, graceful shutdown and several processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import pathlib
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sansmail import NEED_DATA, RemoteProtocolError, pop3, smtp
from sansmail.config import Config, load_config
from sansmail.mail.auth import AuthService, AuthSettings
from sansmail.sessions.login import BLOCKING, FINISHED, Exchange, Result
from sansmail.sessions.pop3d import Pop3Service, Pop3Session
from sansmail.sessions.smtpd import SmtpService, SmtpSession
from sansmail.storage.aliasfile import AliasSource
from sansmail.storage.keys import load_or_create_srs_key
from sansmail.storage.maildir import MaildirMaildrops, MaildirStore
from sansmail.storage.queue import QueueStore
from sansmail.storage.users import UserStore

log = logging.getLogger("asyncio-example")


class Wire:
    """Bytes between an asyncio stream and a sansmail core (`sansmail_trio._wire`'s job)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Any
    ) -> None:
        self.reader, self.writer, self.conn = reader, writer, conn

    async def next_event(self, timeout: float) -> Any:
        while (event := self.conn.next_event()) is NEED_DATA:
            await self.writer.drain()
            async with asyncio.timeout(timeout):
                data = await self.reader.read(65536)
            self.conn.receive_data(data)
        return event

    def send(self, event: Any) -> None:
        self.writer.write(self.conn.send(event))

    def close(self, last_words: bytes) -> None:
        """Send `last_words`, then close. Not a coroutine: the transport writes what is
        buffered before it closes, and a cancellation (shutdown) cannot skip it."""
        self.writer.write(last_words)
        self.writer.close()


async def drive(exchange: Exchange, challenge: Callable[[bytes], Awaitable[Any]]) -> Result:
    """A login exchange: the expensive step in a thread, the failure delay waited out."""
    step = exchange.start()
    while step is not FINISHED:
        if step is BLOCKING:
            step = await asyncio.to_thread(exchange.work)
        else:
            step = exchange.answer(await challenge(step.data))
    result = exchange.finish(time.monotonic())
    if result.user is None and not result.interrupted:
        await asyncio.sleep(result.delay)
    return result


async def log_in(session: Any, event: Any, wire: Wire) -> None:
    """SMTP AUTH, POP3 USER/PASS or AUTH: the session words answers and challenges."""
    refusal = session.login_refusal(event)
    if refusal is not None:
        wire.send(refusal)
        return
    login = session.login()
    verdict = login.gate(time.monotonic())
    if not verdict.allowed:
        wire.send(session.throttled(event))
        return
    await asyncio.sleep(verdict.delay)
    exchange = session.exchange(event, login, nonce=secrets.token_urlsafe(18), now=time.time())
    last: Any = None

    async def challenge(data: bytes) -> bytes | None:
        nonlocal last
        wire.send(session.challenge(data))
        last = await wire.next_event(session.timeout)
        answer: bytes | None = session.answer(last)
        return answer

    result = await drive(exchange, challenge)
    # Blocking for POP3: a good login opens the maildrop.
    reply = await asyncio.to_thread(session.login_result, event, result, last)
    if reply is not None:
        wire.send(reply)


async def converse(session: Any, wire: Wire, loop: Callable[[], Awaitable[None]]) -> None:
    """A connection's life around any session: greeting, the protocol's loop, last words."""
    last_words = b""
    try:
        wire.send(session.greeting())
        await loop()
    except TimeoutError:
        last_words = session.last_words(session.timeout_reply())
    except RemoteProtocolError as exc:
        session.protocol_error(exc)
        last_words = session.last_words(exc.reply_hint)
    finally:
        # Inline, not in a thread: a cancellation at shutdown must not skip releasing a
        # maildrop's lock or removing a half-received message (a few closes and unlinks).
        session.closed()
        wire.close(last_words)
        if session.cleanup_due:
            session.cleanup()


async def pop3_retrieve(session: Pop3Session, wire: Wire, event: pop3.Retr | pop3.Top) -> None:
    transfer = await asyncio.to_thread(session.retrieve, event)
    if isinstance(transfer, pop3.Err):
        wire.send(transfer)
        return
    try:
        wire.send(transfer.reply)
        chunk = transfer.first
        while chunk:
            wire.send(pop3.MultilineData(data=chunk))
            await wire.writer.drain()
            chunk = b"" if transfer.done else await asyncio.to_thread(transfer.read)
    finally:
        transfer.close()
    wire.send(session.transferred(transfer))


async def smtp_connection(
    service: SmtpService, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    ip, port = writer.get_extra_info("peername")[:2]
    session = SmtpSession(service, client_ip=ip, client_port=port, log=log.log)
    wire = Wire(reader, writer, session.conn)

    async def loop() -> None:
        while not session.ended:
            event = await wire.next_event(session.timeout)
            if isinstance(event, smtp.MessageData):
                if session.content(event.data, time.time()):
                    await asyncio.to_thread(session.flush)
            elif isinstance(event, smtp.EndOfMessage):
                # The 250 comes back only once the message is on disk.
                committed = await asyncio.to_thread(session.commit, time.time())
                wire.send(committed.reply)
            elif isinstance(event, smtp.Auth):
                await log_in(session, event, wire)
            else:
                reply = session.handle(event, time.time())
                if reply is not None:
                    wire.send(reply)
            if session.cleanup_due:
                await asyncio.to_thread(session.cleanup)

    await converse(session, wire, loop)


async def pop3_connection(
    service: Pop3Service, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    ip, port = writer.get_extra_info("peername")[:2]
    session = Pop3Session(service, client_ip=ip, client_port=port, log=log.log)
    wire = Wire(reader, writer, session.conn)

    async def loop() -> None:
        while not session.ended:
            event = await wire.next_event(session.timeout)
            if isinstance(event, pop3.Retr | pop3.Top):
                await pop3_retrieve(session, wire, event)
            elif isinstance(event, pop3.Pass | pop3.Auth):
                await log_in(session, event, wire)
            elif isinstance(event, pop3.Quit):
                wire.send(await asyncio.to_thread(session.quit))  # deletes, then +OK
            else:
                for answer in session.handle(event):
                    wire.send(answer)

    await converse(session, wire, loop)


async def serve(config: Config, *, started: asyncio.Event | None = None) -> None:
    """Serve the `smtp` and `pop3` listeners of `config` until cancelled."""
    data = config.data_dir
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = MaildirStore(data, hostname=config.hostname)
    users = UserStore(data / "users.json")
    auth = AuthService(
        users, secret=secrets.token_bytes(32), settings=AuthSettings(exempt=config.mynetworks)
    )
    smtp_service = SmtpService(
        config=config,
        store=store,
        users=users,
        queue=QueueStore(data / "queue"),
        aliases=AliasSource(config.aliases),
        auth=auth,
        srs_key=load_or_create_srs_key(data / "srs.key"),
        tls_available=False,
    )
    pop3_service = Pop3Service(
        config=config,
        maildrops=MaildirMaildrops(store),
        users=users,
        auth=auth,
        tls_available=False,
    )
    servers = []
    for host, port in config.listen.get("smtp", ()):
        handler = lambda r, w: smtp_connection(smtp_service, r, w)  # noqa: E731
        servers.append(await asyncio.start_server(handler, host, port))
    for host, port in config.listen.get("pop3", ()):
        handler = lambda r, w: pop3_connection(pop3_service, r, w)  # noqa: E731
        servers.append(await asyncio.start_server(handler, host, port))
    for server in servers:
        for sock in server.sockets:
            log.info("listening on %s:%d", *sock.getsockname()[:2])
    if started is not None:
        started.set()
    try:
        await asyncio.gather(*(server.serve_forever() for server in servers))
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=pathlib.Path, help="default: ./sansmail.toml")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(load_config(args.config, default_hostname="localhost")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
