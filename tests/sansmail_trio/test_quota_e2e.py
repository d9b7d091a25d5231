"""Storage quota end to end (RFC 9208; CONTRACT.md ``[quota] storage``): serve() with a
limit, imaplib asking GETQUOTAROOT and GETQUOTA and meeting NO [OVERQUOTA] at APPEND and
COPY, smtplib meeting 552 5.2.2 at RCPT once the mailbox is full, and a user's own
limit (users.json, as ``sansmail-trio user quota`` writes it) in force at the next
command without a restart.

imaplib and smtplib block, so each client runs in a worker thread while the server runs
in the test's Trio loop."""

from __future__ import annotations

import contextlib
import imaplib
import pathlib
import smtplib
import ssl
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import trio
from trio_helpers import (
    BOTH_BACKENDS,
    FAST_HASHER,
    RunningServer,
    add_users,
    logged,
    quick_auth,
    write_config,
)

from sansmail.config import load_config
from sansmail.mail.address import parse_address
from sansmail.storage.users import UserStore
from sansmail_trio import serve

pytestmark = BOTH_BACKENDS

ALICE = "alice@example.test"
BOB = "bob@example.test"
LISTEN = {"smtp": "127.0.0.1:0", "imap": "127.0.0.1:0"}
LIMIT = 4096  # octets: a few small messages
_T = TypeVar("_T")


def message(subject: str, size: int = 1000) -> bytes:
    head = f"From: s@example.org\r\nTo: {ALICE}\r\nSubject: {subject}\r\n\r\n".encode()
    return head + b"x" * (size - len(head) - 2) + b"\r\n"


@pytest.fixture
def dsn(server_backend: str, request: pytest.FixtureRequest) -> str | None:
    """The database of a postgresql server (a fresh one), None for Maildir."""
    return request.getfixturevalue("pg_dsn") if server_backend == "postgresql" else None  # type: ignore[no-any-return]


@contextlib.contextmanager
def user_store(server: RunningServer) -> Iterator[Any]:
    """The server's users as the CLI changes them: users.json, or the users table."""
    if server.dsn is None:
        yield UserStore(server.data_dir / "users.json", hasher=FAST_HASHER)
        return
    from sansmail.storage.pg import Database  # noqa: PLC0415
    from sansmail.storage.pg._users import PgUserStore  # noqa: PLC0415

    db = Database(server.dsn)
    try:
        yield PgUserStore(db, hasher=FAST_HASHER)
    finally:
        db.close()


async def start(
    tmp_path: pathlib.Path,
    nursery: trio.Nursery,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    storage: str | int,
    dsn: str | None,
) -> RunningServer:
    path = write_config(tmp_path, tls=tls_files, listen=LISTEN, dsn=dsn)
    with path.open("a") as f:
        f.write(f"[quota]\nstorage = {storage!r}\n".replace("'", '"'))
    config = load_config(path, default_hostname="unused.test")
    config.data_dir.mkdir(parents=True, exist_ok=True)
    add_users(config, dsn, (ALICE, BOB))
    shutdown, done = trio.Event(), trio.Event()

    async def run(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await serve(
                config, shutdown=shutdown, task_status=task_status, auth_settings=quick_auth(config)
            )
        finally:
            done.set()

    bound = await nursery.start(run)
    host, port = bound["smtp"][0]
    return RunningServer(
        config=config, host=host, port=port, shutdown=shutdown, done=done, bound=bound, dsn=dsn
    )


async def in_thread(function: Callable[[], _T]) -> _T:
    return await trio.to_thread.run_sync(function)


def send(server: RunningServer, *messages: bytes, to: str = ALICE) -> list[Any]:
    """Each message's outcome: {} when accepted, else the refusal smtplib raised."""
    out: list[Any] = []
    with smtplib.SMTP("127.0.0.1", server.port_of("smtp"), timeout=10) as client:
        for data in messages:
            try:
                out.append(client.sendmail("s@example.org", [to], data))
            except smtplib.SMTPRecipientsRefused as exc:
                out.append(exc.recipients[to])
                client.rset()
    return out


def login(server: RunningServer, context: ssl.SSLContext, user: str = ALICE) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", server.port_of("imap"), timeout=10)
    client.starttls(context)
    typ, _ = client.login(user, "secret")
    assert typ == "OK"
    return client


def quota_of(client: imaplib.IMAP4) -> list[Any]:
    typ, data = client.getquotaroot("INBOX")
    assert typ == "OK", data
    return data


async def test_getquotaroot_getquota_and_overquota(
    tmp_path: pathlib.Path,
    nursery: trio.Nursery,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
    dsn: str | None,
) -> None:
    server = await start(tmp_path, nursery, tls_files, LIMIT, dsn)
    assert await in_thread(lambda: send(server, message("one"), message("two"))) == [{}, {}]

    def imap() -> None:
        client = login(server, client_tls)
        caps = client.capabilities
        assert "QUOTA" in caps
        assert "QUOTA=RES-STORAGE" in caps
        # Two 1000-octet messages, plus the Return-Path and Received fields we add.
        roots, quotas = quota_of(client)
        assert roots == [b'"INBOX" ""']
        used = int(quotas[0].split()[2])
        assert quotas == [f'"" (STORAGE {used} 4)'.encode()]
        assert used in (2, 3)
        typ, data = client.getquota('""')
        assert (typ, data) == ("OK", [f'"" (STORAGE {used} 4)'.encode()])
        typ, data = client.getquota('"other"')
        assert typ == "NO"
        assert data[0].startswith(b"[NONEXISTENT]"), data
        typ, data = client.setquota('""', "(STORAGE 100000)")
        assert typ == "NO"
        assert data[0].startswith(b"[NOPERM]")
        # 4 KiB holds 2 messages and a bit: a third (1000 octets) fits, a 2 KiB one not.
        typ, data = client.append("INBOX", "", None, message("big", 2048))
        assert typ == "NO"
        assert data[0].startswith(b"[OVERQUOTA]"), data
        typ, data = client.append("Sent", "", None, message("three"))
        assert typ == "OK", data
        # COPY of all three would go over; MOVE changes nothing and is allowed.
        client.select("INBOX")
        typ, data = client.copy("1:*", "Archive")
        assert typ == "NO"
        assert data[0].startswith(b"[OVERQUOTA]"), data
        typ, data = client.uid("MOVE", "1", "Archive")
        assert typ == "OK", data
        client.logout()

    await in_thread(imap)
    # The mailbox is now at 3 messages of about 1.1 KiB: over 4096? Not yet: one more.
    outcomes = await in_thread(lambda: send(server, message("four"), message("five")))
    assert outcomes[0] == {}
    assert outcomes[1][0] == 552
    assert outcomes[1][1].startswith(b"5.2.2 <alice@example.test>: mailbox is full")
    # Bob has no mail: unaffected.
    assert await in_thread(lambda: send(server, message("to bob"), to=BOB)) == [{}]

    def expunge() -> None:
        client = login(server, client_tls)
        _roots, before = quota_of(client)
        client.select("INBOX")
        client.store("1:*", "+FLAGS", "\\Deleted")
        client.expunge()
        _roots, after = quota_of(client)
        assert int(after[0].split()[2]) < int(before[0].split()[2])
        client.logout()

    await in_thread(expunge)
    # Room again: the next message is accepted at RCPT.
    assert await in_thread(lambda: send(server, message("six"))) == [{}]
    await server.stop()


async def test_a_users_own_limit(
    tmp_path: pathlib.Path,
    nursery: trio.Nursery,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
    dsn: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="sansmail.notify")
    server = await start(tmp_path, nursery, tls_files, "1G", dsn)

    def reloads() -> int:
        return sum(
            r.getMessage() == "users reloaded (changed on a node)"
            for r in caplog.records
            if r.name == "sansmail.notify"
        )

    async def set_quota(octets: int | None) -> None:
        """`user quota`: in force when it returns on Maildir (the generations counter);
        on PostgreSQL once the server heard the NOTIFY and re-read the users."""
        before = reloads()
        await in_thread(lambda: users.set_quota(parse_address(ALICE).key, octets))
        if server.dsn is not None:
            await logged(caplog, "sansmail.notify", lambda _lines: reloads() > before)

    with user_store(server) as users:

        def storage() -> list[Any]:
            client = login(server, client_tls)
            roots, quotas = quota_of(client)
            client.logout()
            return [*roots, *quotas]

        assert await in_thread(storage) == [b'"INBOX" ""', b'"" (STORAGE 0 1048576)']
        await set_quota(2048)
        assert await in_thread(storage) == [b'"INBOX" ""', b'"" (STORAGE 0 2)']
        # A user with no limit of their own ("none"): no quota root at all.
        await set_quota(0)
        assert await in_thread(storage) == [b'"INBOX"', None]
        many = [message(str(n)) for n in range(4)]
        assert await in_thread(lambda: send(server, *many)) == [{}] * 4
        # Back to 2 KiB: 4 KiB stored is over it, and SMTP says so at RCPT.
        await set_quota(2048)
        [refused] = await in_thread(lambda: send(server, message("late")))
        assert refused[0] == 552
        # The configured limit again: room.
        await set_quota(None)
        assert await in_thread(lambda: send(server, message("later"))) == [{}]
    await server.stop()


@pytest.mark.parametrize("storage", [0])
async def test_no_limit_no_quota_root(
    tmp_path: pathlib.Path,
    nursery: trio.Nursery,
    tls_files: tuple[pathlib.Path, pathlib.Path],
    client_tls: ssl.SSLContext,
    storage: int,
    dsn: str | None,
) -> None:
    server = await start(tmp_path, nursery, tls_files, storage, dsn)
    assert await in_thread(lambda: send(server, message("one"))) == [{}]

    def imap() -> None:
        client = login(server, client_tls)
        assert "QUOTA" in client.capabilities
        assert quota_of(client) == [[b'"INBOX"'], [None]]
        typ, _ = client.getquota('""')
        assert typ == "NO"
        client.logout()

    await in_thread(imap)
    # Nobody reads usage: no quota file is kept.
    assert server.backend != "maildir" or not (server.maildir(ALICE) / "maildirsize").exists()
    await server.stop()
