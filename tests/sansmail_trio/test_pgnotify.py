"""The PostgreSQL listener (`_pgnotify`): notifications sent by other connections wake
the subscriptions to their keys and have the stores of another node re-read, and a lost
connection is made again and wakes everyone. Real PostgreSQL, real Trio; every wait is
for an event, with `fail_after` only as a guard against hanging."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
from argon2 import PasswordHasher
from psycopg.conninfo import make_conninfo

from sansmail.mail.address import Address
from sansmail.storage.pg import Database, DatabaseUnavailableError
from sansmail.storage.pg._aliases import PgAliasSource
from sansmail.storage.pg._listen import NotificationConnection
from sansmail.storage.pg._mailrows import notify
from sansmail.storage.pg._users import PgUserStore
from sansmail.storage.users import UserError
from sansmail_trio import _pgnotify
from sansmail_trio._imap_server import _subscribe
from sansmail_trio._notify import key_watcher
from sansmail_trio._pgnotify import Listener, run_listener

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
ALICE = Address(local_part="alice", domain="example.test")
KEY = "alice@example.test"
GUARD = 30  # seconds: only a bound on a hang, never what is asserted


def send(db: Database, *payloads: str) -> None:
    """What another node's writer does: NOTIFY inside its transaction."""
    with db.transaction() as cur:
        for payload in payloads:
            notify(cur, payload)


class Reloads:
    """The keys `run_listener` reports re-read, as a channel to wait on."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[str](100)

    def __call__(self, key: str) -> None:
        self.send.send_nowait(key)

    async def next(self) -> str:
        with trio.fail_after(GUARD):
            return await self.receive.receive()


@pytest.fixture
async def listening(pg_db: Database) -> AsyncIterator[Listener]:
    async with trio.open_nursery() as nursery:
        pg_listener = await nursery.start(run_listener, pg_db)
        yield pg_listener
        nursery.cancel_scope.cancel()


def test_the_connection_hands_over_payloads(pg_db: Database) -> None:
    with NotificationConnection(pg_db) as connection:
        assert connection.wait(0) == []
        send(pg_db, "mail:1", "users")
        got: list[str] = []
        while len(got) < 2:
            got += connection.wait(GUARD)
        assert got == ["mail:1", "users"]


async def test_a_notify_wakes_the_subscribers_of_its_key(
    pg_db: Database, listening: Listener
) -> None:
    assert key_watcher() is listening
    with listening.subscribe(["mail:7"]) as seven, listening.subscribe(["mail:8"]) as eight:
        await trio.to_thread.run_sync(send, pg_db, "mail:8", "users")
        with trio.fail_after(GUARD):
            await eight.wait()
        # The first payload of the transaction was mail:8's: by the time eight woke,
        # nothing was told to seven.
        assert not seven._event.is_set()
        await trio.to_thread.run_sync(send, pg_db, "mail:7")
        with trio.fail_after(GUARD):
            await seven.wait()
    assert listening._subscribers == {}


async def test_idlers_on_one_folder_share_a_turn(listening: Listener) -> None:
    with listening.subscribe(["mail:1"]) as one, listening.subscribe(["mail:1"]) as two:
        assert one.turn is two.turn
    assert listening._turns == {}


async def test_a_lost_connection_is_made_again_and_wakes_everyone(
    pg_db: Database, listening: Listener
) -> None:
    assert listening.connections == 1
    old_pid = listening.backend_pid
    assert old_pid is not None
    with listening.subscribe(["mail:1"]) as subscription:
        await trio.to_thread.run_sync(_terminate, pg_db, old_pid)
        with trio.fail_after(GUARD):
            await subscription.wait()  # no notification: the reconnection woke it
        assert listening.connections == 2
        assert listening.backend_pid not in (None, old_pid)
        # And it hears again on the new connection.
        await trio.to_thread.run_sync(send, pg_db, "mail:1")
        with trio.fail_after(GUARD):
            await subscription.wait()


def _terminate(db: Database, pid: int) -> None:
    with db.transaction() as cur:
        cur.execute("SELECT pg_terminate_backend(%s, 30000)", (pid,))
        row = cur.fetchone()
        assert row == (True,)


async def test_a_change_on_node_a_is_in_force_on_node_b(pg_db: Database, pg_dsn: str) -> None:
    # Two nodes: each its own Database (connections) and user store, one database.
    db_b = Database(pg_dsn)
    node_a = PgUserStore(pg_db, hasher=FAST)
    node_b = PgUserStore(db_b, hasher=FAST)
    reloads = Reloads()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: run_listener(
                    db_b, reload={"users": node_b}, reloaded=reloads, task_status=task_status
                )
            )
            # The first connection counts as "everything changed": one re-read.
            assert await reloads.next() == "users"
            assert node_b.get(KEY) is None
            await trio.to_thread.run_sync(node_a.add, ALICE, "old")
            assert await reloads.next() == "users"
            user = node_b.get(KEY)
            assert user is not None
            assert KEY in node_b
            await trio.to_thread.run_sync(node_a.set_password, KEY, "new")
            assert await reloads.next() == "users"
            assert node_b.get(KEY) != user
            assert await trio.to_thread.run_sync(node_b.verify_password, KEY, "new")
            assert not await trio.to_thread.run_sync(node_b.verify_password, KEY, "old")
            await trio.to_thread.run_sync(node_a.delete, KEY)
            assert await reloads.next() == "users"
            assert KEY not in node_b
            nursery.cancel_scope.cancel()
    finally:
        db_b.close()


async def test_the_listener_starts_while_the_database_is_away() -> None:
    down = Database("host=127.0.0.1 port=1 dbname=nothing connect_timeout=2")
    async with trio.open_nursery() as nursery:
        pg_listener = await nursery.start(Listener(down, retry=0.01).run)
        assert pg_listener.connections == 0
        assert pg_listener.backend_pid is None
        nursery.cancel_scope.cancel()


class _Session:
    """What IMAP IDLE reads of a session to choose what to wait on."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.watch_paths: tuple[str, ...] = ()
        self.mailbox = self
        self.watch_keys = keys


async def test_idle_on_keys_subscribes_on_the_listener(
    pg_db: Database, listening: Listener
) -> None:
    session = _Session(("mail:5",))
    with _subscribe(session) as changes:  # type: ignore[arg-type]
        assert changes.available
        assert listening._subscribers.keys() == {"mail:5"}
        await trio.to_thread.run_sync(send, pg_db, "mail:5")
        with trio.fail_after(GUARD):
            await changes.wait()
    assert listening._subscribers == {}


async def test_idle_on_keys_without_a_listener_polls() -> None:
    with _subscribe(_Session(("mail:5",))) as changes:  # type: ignore[arg-type]
        assert not changes.available


def test_the_listening_connection_asks_for_keepalives(pg_db: Database, pg_dsn: str) -> None:
    # A peer gone silent (no FIN, no RST) must end the connection, or the node would
    # take it for a quiet one and hear nothing more.
    with NotificationConnection(pg_db) as connection:
        assert connection.settings["keepalives_idle"] == "30"
        assert connection.settings["tcp_user_timeout"] == "60000"
    # What the DSN says is kept.
    with NotificationConnection(Database(make_conninfo(pg_dsn, keepalives_idle=5))) as connection:
        assert connection.settings["keepalives_idle"] == "5"
        assert connection.settings["keepalives_count"] == "3"


async def test_while_it_cannot_listen_the_stores_re_read_on_a_clock() -> None:
    # The listener away (here: for good) hears nothing the other nodes change, so the
    # stores must not trust their snapshot for ever: their handlers keep being called.
    down = Database("host=127.0.0.1 port=1 dbname=nothing connect_timeout=2")
    calls = Reloads()
    pg_listener = Listener(down, retry=0.001, resync=0.001)
    pg_listener.on("users", calls)
    async with trio.open_nursery() as nursery:
        await nursery.start(pg_listener.run)
        for _ in range(3):
            assert await calls.next() == "users"
        nursery.cancel_scope.cancel()


class _FailingOnce:
    """A store whose first re-read fails (the database briefly away)."""

    stale = False

    def __init__(self) -> None:
        self.reads = 0

    def changed(self) -> None:
        pass

    def reload_if_changed(self) -> bool:
        self.reads += 1
        if self.reads == 1:
            raise UserError("database: the server closed the connection")
        return True


async def test_a_failed_re_read_is_tried_again_without_a_notification(pg_db: Database) -> None:
    # The listener stays connected, so no reconnection calls the store again: before,
    # it stayed on its stale snapshot until the next change of the users.
    store = _FailingOnce()
    reloads = Reloads()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_listener(
                pg_db,
                reload={"users": store},
                reloaded=reloads,
                resync=0.001,
                task_status=task_status,
            )
        )
        assert await reloads.next() == "users"
        assert store.reads == 2
        nursery.cancel_scope.cancel()


class _DyingConnection:
    """A listening connection the server ends at once, each time."""

    made = 0

    def __init__(self, _db: Database) -> None:
        type(self).made += 1
        self.backend_pid = 1

    def wait(self, _timeout: float) -> list[str]:
        raise DatabaseUnavailableError("lost the listening connection: terminated")

    def close(self) -> None:
        pass


async def test_a_connection_lost_at_once_is_made_again_after_a_pause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before, reconnecting after each loss never slept: a loop of connections as fast
    # as the server ends them (and of the stores' re-reads). The pauses are counted,
    # not timed: each is the listener's trio.sleep(retry).
    real_sleep = trio.sleep
    pauses: list[float] = []

    async def pause(seconds: float) -> None:
        pauses.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(_pgnotify, "NotificationConnection", _DyingConnection)
    monkeypatch.setattr(trio, "sleep", pause)
    _DyingConnection.made = 0
    pg_listener = Listener(Database("host=127.0.0.1 port=1"), retry=5.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(pg_listener.run)
        while _DyingConnection.made < 4:
            await real_sleep(0)
        nursery.cancel_scope.cancel()
    assert len(pauses) >= 3
    assert set(pauses) == {5.0}


class _QuietlyFailingOnce(_FailingOnce):
    """A store whose first re-read fails without raising, as `PgAliasSource`'s does:
    it keeps its table, says why in its problems, and stays stale."""

    def reload_if_changed(self) -> bool:
        self.reads += 1
        self.stale = self.reads == 1
        return not self.stale


async def test_a_re_read_failed_without_raising_is_tried_again(pg_db: Database) -> None:
    store = _QuietlyFailingOnce()
    reloads = Reloads()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_listener(
                pg_db,
                reload={"aliases": store},
                reloaded=reloads,
                resync=0.001,
                task_status=task_status,
            )
        )
        # The failed one is reported too (serve logs the aliases' problems then).
        assert await reloads.next() == "aliases"
        assert await reloads.next() == "aliases"
        assert store.reads == 2
        assert not store.stale
        nursery.cancel_scope.cancel()


def test_the_aliases_say_they_are_stale_until_a_re_read_succeeds(pg_db: Database) -> None:
    aliases = PgAliasSource(pg_db)
    assert not aliases.stale
    aliases.changed()
    assert aliases.stale
    with pg_db.transaction() as cur:  # the next read fails
        cur.execute("ALTER TABLE aliases_files RENAME TO aliases_away")
    assert not aliases.reload_if_changed()
    assert aliases.stale
    with pg_db.transaction() as cur:
        cur.execute("ALTER TABLE aliases_away RENAME TO aliases_files")
    assert aliases.reload_if_changed()
    assert not aliases.stale
