"""PgMailStore on a real PostgreSQL: content once per message, group commit with a
failure kept to its own delivery, nothing visible after an abort or a failed commit,
UIDs from concurrent deliveries, folders made once, and a lost connection answered as a
temporary failure. (What every store does is in tests/sansmail/storage/test_store.py,
on both backends.)"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest

from sansmail.mail.address import MailboxId
from sansmail.storage.maildir import BackendUnavailableError
from sansmail.storage.pg import Database
from sansmail.storage.pg._delivery import PgMailStore
from sansmail.storage.pg._mailrows import CHANNEL

ALICE = MailboxId(domain="example.test", local="alice")
BOB = MailboxId(domain="example.test", local="bob")
PREFIX = b"Return-Path: <s@example.net>\r\n"


def deliver(store: PgMailStore, boxes: list[MailboxId], content: bytes) -> list[str]:
    delivery = store.begin(boxes, prefix=PREFIX)
    delivery.write(content)
    return delivery.commit()


def query(db: Database, sql: str, params: Sequence[object] | None = None) -> list[tuple[Any, ...]]:
    with db.transaction() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def counts(db: Database) -> tuple[Any, ...]:
    (row,) = query(
        db,
        "SELECT (SELECT count(*) FROM mail_contents), (SELECT count(*) FROM mail_messages),"
        " (SELECT coalesce(sum(uidnext), 0) FROM mail_folders),"
        " (SELECT coalesce(sum(octets), 0) FROM mail_usage)",
    )
    return row


def refuse_content(db: Database, marker: bytes) -> None:
    """Make the database refuse any message whose content holds `marker` (a trigger),
    as a constraint or a full disk would refuse it."""
    with db.transaction() as cur:
        cur.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " IF position(%s::bytea IN NEW.content) > 0 THEN"
            " RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$".replace(
                "%s", "'\\x" + marker.hex() + "'"
            )
        )
        cur.execute(
            "CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON mail_contents"
            " FOR EACH ROW EXECUTE FUNCTION refuse()"
        )


def terminate_others(db: Database) -> int:
    """Kill every other connection to the test's database, as a failover would, and
    return once they are gone: with a timeout, pg_terminate_backend waits for the
    backend's exit, after which its locks are released (without, a test that looked
    for a released lock at once could still find it held on a loaded machine)."""
    with db.connect(autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid, 30000) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


def test_one_content_row_for_fifty_recipients(pg_db: Database) -> None:
    store = PgMailStore(pg_db, hostname="mx.example.test")
    boxes = [MailboxId(domain="example.test", local=f"user{n}") for n in range(50)]
    names = deliver(store, boxes, b"Subject: to all\r\n\r\nhello\r\n")
    assert len(set(names)) == 50
    assert all(name.endswith(".1") for name in names)  # UID 1 in each new INBOX
    size = len(PREFIX) + len(b"Subject: to all\r\n\r\nhello\r\n")
    assert query(pg_db, "SELECT count(*), min(size) FROM mail_contents") == [(1, size)]
    assert query(pg_db, "SELECT count(DISTINCT folder_id), count(*) FROM mail_messages") == [
        (50, 50)
    ]
    assert query(pg_db, "SELECT count(*), min(octets), max(messages) FROM mail_usage") == [
        (50, size, 1)
    ]


def test_commit_many_keeps_a_failure_to_its_own_delivery(pg_db: Database) -> None:
    store = PgMailStore(pg_db, hostname="mx.example.test")
    deliver(store, [ALICE, BOB], b"warm up\r\n")
    before = counts(pg_db)
    refuse_content(pg_db, b"POISON")
    deliveries = []
    for text in (b"first\r\n", b"POISON\r\n", b"third\r\n"):
        delivery = store.begin([ALICE, BOB], prefix=b"")
        delivery.write(text)
        deliveries.append(delivery)
    first, failed, third = store.commit_many(deliveries)
    assert isinstance(failed, BackendUnavailableError)
    assert isinstance(failed, OSError)  # what every caller answers with 451
    assert "refused by the test" in str(failed)
    assert isinstance(first, list)
    assert isinstance(third, list)
    assert [name.split(".")[1] for name in first] == ["2", "2"]
    # The failed delivery took no UID: the third follows the first directly.
    assert [name.split(".")[1] for name in third] == ["3", "3"]
    poisoned = "SELECT count(*) FROM mail_contents WHERE position('POISON'::bytea IN content) > 0"
    assert query(pg_db, poisoned) == [(0,)]
    after = counts(pg_db)
    assert after[1] == before[1] + 4  # two messages, in two mailboxes each
    deliveries[1].abort()


def test_nothing_is_left_after_an_abort(pg_db: Database) -> None:
    store = PgMailStore(pg_db, hostname="mx.example.test")
    deliver(store, [ALICE], b"warm up\r\n")
    before = counts(pg_db)
    delivery = store.begin([ALICE, BOB], prefix=PREFIX)
    delivery.write(b"x" * 10_000)
    delivery.flush()
    delivery.write(b"more\r\n")
    delivery.abort()
    assert counts(pg_db) == before
    assert deliver(store, [ALICE], b"next\r\n")[0].endswith(".2")


def test_a_failed_commit_leaves_nothing_and_uses_no_uid(pg_db: Database) -> None:
    store = PgMailStore(pg_db, hostname="mx.example.test")
    deliver(store, [ALICE], b"warm up\r\n")
    before = counts(pg_db)
    (uidvalidity,) = query(pg_db, "SELECT last_value FROM mail_uidvalidity")
    refuse_content(pg_db, b"POISON")
    delivery = store.begin([ALICE, BOB], prefix=PREFIX)
    delivery.write(b"POISON\r\n")
    with pytest.raises(BackendUnavailableError, match="refused by the test"):
        delivery.commit()
    delivery.abort()
    assert counts(pg_db) == before  # BOB's INBOX was not made either
    # A folder that exists draws no UIDVALIDITY from the sequence.
    deliver(store, [ALICE], b"next\r\n")
    assert query(pg_db, "SELECT last_value FROM mail_uidvalidity") == [uidvalidity]
    assert query(pg_db, "SELECT uid FROM mail_messages ORDER BY uid") == [(1,), (2,)]


def test_concurrent_deliveries_get_distinct_increasing_uids(pg_db: Database) -> None:
    # Two nodes, each with several worker threads.
    nodes = [PgMailStore(Database(pg_db.dsn), hostname=f"node{n}") for n in range(2)]
    got: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        mine = got.setdefault(t, [])
        try:
            for i in range(12):
                boxes = [ALICE, BOB] if i % 2 else [BOB, ALICE]  # both lock orders asked
                names = deliver(nodes[t % 2], boxes, f"{t} {i}\r\n".encode())
                mine.append(int(names[boxes.index(ALICE)].split(".")[1]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for node in nodes:
        node.db.close()
    assert errors == []
    uids = [uid for mine in got.values() for uid in mine]
    assert sorted(uids) == list(range(1, 73))
    for mine in got.values():
        assert mine == sorted(mine)  # each thread's own deliveries in order
    for box in ("alice@example.test", "bob@example.test"):
        assert query(
            pg_db,
            "SELECT count(*), max(m.uid), max(f.uidnext) FROM mail_messages m"
            " JOIN mail_folders f ON f.id = m.folder_id WHERE f.mailbox = %s",
            (box,),
        ) == [(72, 72, 73)]


def test_folder_made_once_with_special_use_and_subscription(pg_db: Database) -> None:
    store = PgMailStore(pg_db, hostname="mx.example.test")
    for _ in range(3):
        delivery = store.begin([ALICE], prefix=b"", folder="Junk")
        delivery.write(b"spam\r\n")
        delivery.commit()
    assert query(pg_db, "SELECT name, special_use FROM mail_folders ORDER BY name") == [
        ("Junk", "\\Junk")
    ]
    assert query(pg_db, "SELECT mailbox, name FROM mail_subscriptions") == [
        ("alice@example.test", "Junk")
    ]


def test_a_folder_deleted_under_the_store_is_made_again(pg_db: Database) -> None:
    store = PgMailStore(pg_db, hostname="mx.example.test")
    deliver(store, [ALICE, BOB], b"one\r\n")
    query(pg_db, "DELETE FROM mail_folders WHERE mailbox = 'alice@example.test' RETURNING id")
    names = deliver(store, [ALICE, BOB], b"two\r\n")
    assert names[0].endswith(".1")  # a new INBOX, a new UIDVALIDITY
    assert names[1].endswith(".2")
    assert names[0].split(".")[0] != names[1].split(".")[0]


def test_every_node_hears_of_a_delivery(pg_db: Database) -> None:
    store = PgMailStore(pg_db, hostname="mx.example.test")
    deliver(store, [ALICE], b"first\r\n")  # the folder exists
    ((folder_id,),) = query(pg_db, "SELECT id FROM mail_folders")
    with pg_db.connect(autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        deliver(store, [ALICE], b"second\r\n")
        heard = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
    assert heard == [f"mail:{folder_id}"]


def test_a_lost_connection_is_a_temporary_failure(pg_db: Database) -> None:
    store = PgMailStore(pg_db, hostname="mx.example.test", quota=lambda mailbox: 10)
    deliver(store, [ALICE], b"warm up\r\n")  # an idle connection in the pool
    before = counts(pg_db)
    assert terminate_others(pg_db) >= 1
    delivery = store.begin([ALICE], prefix=PREFIX)
    delivery.write(b"lost\r\n")
    with pytest.raises(OSError, match="database") as caught:
        delivery.commit()
    assert isinstance(caught.value, BackendUnavailableError)
    delivery.abort()
    assert counts(pg_db) == before
    # The broken connection was dropped: the next delivery opens another.
    assert deliver(store, [ALICE], b"again\r\n")[0].endswith(".2")
    assert store.full(ALICE)  # over its 10 octets
    terminate_others(pg_db)
    assert not store.full(ALICE)  # unknown: accepted at RCPT; the delivery will say
    assert store.storage(ALICE) is not None  # a new connection, left idle in the pool
    terminate_others(pg_db)
    with pytest.raises(BackendUnavailableError):
        store.storage(ALICE)


def test_an_unreachable_database_is_a_temporary_failure() -> None:
    db = Database("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")
    store = PgMailStore(db, hostname="mx.example.test", quota=lambda mailbox: 1000)
    delivery = store.begin([ALICE], prefix=b"")
    delivery.write(b"x\r\n")
    (result,) = store.commit_many([delivery])
    assert isinstance(result, BackendUnavailableError)
    delivery.abort()
    assert not store.full(ALICE)
    with pytest.raises(OSError):
        store.folder_exists(ALICE, "Junk")


def test_a_psycopg_error_never_leaves_the_store(pg_db: Database) -> None:
    # Every failure is the OSError callers know; psycopg's own classes stay inside.
    store = PgMailStore(pg_db, hostname="mx.example.test")
    refuse_content(pg_db, b"POISON")
    delivery = store.begin([ALICE], prefix=b"")
    delivery.write(b"POISON\r\n")
    with pytest.raises(OSError) as caught:
        delivery.commit()
    assert not isinstance(caught.value, psycopg.Error)
