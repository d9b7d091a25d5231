"""IMAP IDLE on the PostgreSQL backend, end to end: a client idling on node B (the Trio
adapter on a real socket, its own `Database`, its process's listener) hears of a message
appended and a flag changed through node A (another `Database`: another node's
connections), with nothing but PostgreSQL's NOTIFY between them. The client is the
standard library's imaplib; IDLE (which imaplib lacks before Python 3.14) is sent on
its connection by hand."""

from __future__ import annotations

import functools
import imaplib
import logging
import pathlib
import re

import trio
from argon2 import PasswordHasher

from sansmail.config import Config
from sansmail.mail.address import MailboxId, parse_address
from sansmail.mail.auth import AuthService
from sansmail.sessions.imapd import ImapService
from sansmail.storage.maildir import FlagMode
from sansmail.storage.pg import Database
from sansmail.storage.pg._imapstore import PgImapStore
from sansmail.storage.pg._users import PgUserStore
from sansmail_trio._imap_server import IMAPService
from sansmail_trio._pgnotify import run_listener

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
ALICE = "alice@example.test"
HOST = "mx.example.test"
MESSAGE = b"From: a@example.org\r\nTo: alice@example.test\r\nSubject: hi\r\n\r\nhello\r\n"
GUARD = 30  # seconds: a bound on a hang only


def _idle_until(client: imaplib.IMAP4, pattern: bytes) -> bytes:
    """Read untagged lines while idling until one matches `pattern`."""
    while True:
        line = client.readline()
        assert line, "the server closed the connection"
        if re.search(pattern, line):
            return line


def _session(port: int, node_a: PgImapStore) -> list[bytes]:
    client = imaplib.IMAP4("127.0.0.1", port, timeout=GUARD)
    try:
        client.login(ALICE, "secret")
        typ, data = client.select("INBOX")
        assert (typ, data) == ("OK", [b"0"])
        client.send(b"i1 IDLE\r\n")
        assert client.readline().startswith(b"+ ")
        # Node A delivers: node B's idler hears it through NOTIFY alone.
        inbox = node_a.account(MailboxId(domain="example.test", local="alice"))
        inbox.append("INBOX", MESSAGE)
        heard = [_idle_until(client, rb"^\* 1 EXISTS")]
        # And a flag set through node A.
        view = inbox.select("INBOX")
        try:
            view.store_flags([1], {"\\Seen"}, FlagMode.ADD)
        finally:
            view.close()
        heard.append(_idle_until(client, rb"^\* 1 FETCH "))
        client.send(b"DONE\r\n")
        heard.append(_idle_until(client, rb"^i1 "))
    finally:
        client.logout()
    return heard


async def test_idle_on_node_b_hears_an_append_on_node_a(
    tmp_path: pathlib.Path, pg_db: Database, pg_dsn: str
) -> None:
    db_b = Database(pg_dsn)
    node_a = PgImapStore(pg_db, hostname=HOST)
    users = PgUserStore(db_b, hasher=FAST)
    users.add(parse_address(ALICE), "secret")
    config = Config(source=None, hostname=HOST, domains=("example.test",), data_dir=tmp_path)
    shared = ImapService(
        config=config,
        store=PgImapStore(db_b, hostname=HOST),
        users=users,
        auth=AuthService(users, secret=b"k" * 32),
        tls_available=False,
    )
    service = IMAPService(shared=shared, log=logging.getLogger("sansmail.imap"))

    async def handler(stream: trio.SocketStream) -> None:
        host, port = stream.socket.getpeername()[:2]
        await service.handle(stream, (host, port))

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(run_listener, db_b)
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
            with trio.fail_after(GUARD):
                heard = await trio.to_thread.run_sync(_session, port, node_a)
            nursery.cancel_scope.cancel()
    finally:
        db_b.close()
    assert heard[0].startswith(b"* 1 EXISTS")
    assert b"\\Seen" in heard[1]
    assert heard[2].startswith(b"i1 OK")
