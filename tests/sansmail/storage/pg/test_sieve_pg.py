"""PgSieveStore beyond what test_sieve_store.py and test_sieve_duplicates.py run on both
backends: one active script whatever the writers do, the notice, the duplicates sweep,
two nodes racing the quota, and the database away."""

from __future__ import annotations

import threading

import pytest

from sansmail.mail.address import MailboxId
from sansmail.storage.pg import Database, DatabaseError
from sansmail.storage.pg._sieve import SWEEP_ROWS, PgSieveStore, sieve_key
from sansmail.storage.sieve import (
    ActiveScriptError,
    SieveQuota,
    SieveQuotaError,
    SieveStoreUnavailableError,
)

ALICE = MailboxId(domain="example.org", local="alice")
SCRIPT = b"keep;\r\n"
T0 = 1_800_000_000.0
DAY = 86400
AWAY = "host=127.0.0.1 port=1 dbname=nothing connect_timeout=2"


def test_each_change_notifies_the_mailbox(pg_db: Database) -> None:
    assert sieve_key(ALICE) == "sieve:alice@example.org"
    listen = pg_db.connect(autocommit=True)
    try:
        listen.execute("LISTEN sansmail")
        store = PgSieveStore(pg_db)
        store.put(ALICE, "a", SCRIPT)
        store.activate(ALICE, "a")
        store.rename(ALICE, "a", "b")
        heard: list[str] = []
        while len(heard) < 3:
            heard += [n.payload for n in listen.notifies(timeout=5, stop_after=1)]
    finally:
        listen.close()
    assert heard == ["sieve:alice@example.org"] * 3


def test_a_refused_change_changes_nothing(pg_db: Database) -> None:
    store = PgSieveStore(pg_db)
    store.put(ALICE, "a", SCRIPT)
    store.activate(ALICE, "a")
    with pytest.raises(ActiveScriptError):
        store.delete(ALICE, "a")  # the row deleted, then the transaction rolled back
    assert store.list(ALICE) == [("a", True)]


def test_the_database_allows_one_active_script(pg_db: Database) -> None:
    store = PgSieveStore(pg_db)
    store.put(ALICE, "a", SCRIPT)
    store.put(ALICE, "b", SCRIPT)
    store.activate(ALICE, "a")
    with pytest.raises(DatabaseError, match="unique"), pg_db.transaction() as cur:
        cur.execute("UPDATE sieve_scripts SET active = true WHERE name = 'b'")
    store.activate(ALICE, "b")
    assert store.list(ALICE) == [("a", False), ("b", True)]


def test_two_nodes_racing_the_quota(pg_db: Database, pg_dsn: str) -> None:
    # Each put checks and writes under the mailbox's advisory lock, whichever node.
    other = Database(pg_dsn)
    nodes = [PgSieveStore(db, quota=SieveQuota(max_scripts=1)) for db in (pg_db, other)]
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def racer(number: int) -> None:
        barrier.wait()
        try:
            nodes[number % 2].put(ALICE, f"s{number}", SCRIPT)
        except SieveQuotaError as exc:
            outcomes.append(exc.kind)
        else:
            outcomes.append("stored")

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(6)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        other.close()
    assert sorted(outcomes) == ["maxscripts"] * 5 + ["stored"]
    assert len(nodes[0].list(ALICE)) == 1


def test_expired_duplicates_are_swept_a_bounded_number_at_a_time(pg_db: Database) -> None:
    store = PgSieveStore(pg_db)
    bob = MailboxId(domain="example.org", local="bob")
    with pg_db.transaction() as cur:
        cur.executemany(
            "INSERT INTO sieve_duplicates (mailbox, key, expires) VALUES (%s, %s, %s)",
            [("bob@example.org", f"old{n}", T0) for n in range(SWEEP_ROWS + 10)],
        )
    with store.duplicates(ALICE) as dups:
        dups.record("new", DAY, now=T0 + 1)  # bob's expired rows go too, up to the bound
    with pg_db.transaction() as cur:
        cur.execute("SELECT count(*) FROM sieve_duplicates")
        assert cur.fetchone() == (11,)
    with store.duplicates(bob) as dups:
        assert not dups.seen("old1", now=T0 + 1)
        dups.record("again", DAY, now=T0 + 1)
    with pg_db.transaction() as cur:
        cur.execute("SELECT mailbox, key FROM sieve_duplicates ORDER BY key")
        assert cur.fetchall() == [("bob@example.org", "again"), ("alice@example.org", "new")]


def test_the_database_away() -> None:
    store = PgSieveStore(Database(AWAY))
    for call in (
        lambda: store.list(ALICE),
        lambda: store.get(ALICE, "a"),
        lambda: store.active(ALICE),
        lambda: store.put(ALICE, "a", SCRIPT),
        lambda: store.activate(ALICE, None),
        lambda: store.have_space(ALICE, "a", 1),
        lambda: store.duplicates(ALICE).seen("k", now=T0),
        lambda: store.duplicates(ALICE).record("k", 1, now=T0),
    ):
        with pytest.raises(SieveStoreUnavailableError, match="connect"):
            call()
    # Mail goes to delivery, which reports the failure where it matters.
    assert store.has_active(ALICE)
