"""PgGreylistStore beyond what test_greylist_store.py runs on both backends: the
database's clock, nodes racing on one triplet, the database away."""

from __future__ import annotations

import threading

import pytest

from sansmail.mail.greylist import Action, GreylistSettings, Triplet
from sansmail.storage.greylist import GreylistStoreError
from sansmail.storage.pg import Database
from sansmail.storage.pg._greylist import PgGreylistStore

S = GreylistSettings()
T0 = 1_800_000_000.0
KEY = Triplet("192.0.2.0/24", "alice@example.org", "bob@example.net")


def test_the_database_clock_by_default(pg_db: Database) -> None:
    store = PgGreylistStore(pg_db)
    first = store.consult(KEY, S)
    assert (first.action, first.reason) == (Action.GREYLIST, "new")
    again = store.consult(KEY, S)
    assert (again.action, again.reason) == (Action.GREYLIST, "early-retry")
    with pg_db.transaction() as cur:
        cur.execute("SELECT abs(first - extract(epoch FROM now())) < 3600 FROM greylist_triplets")
        assert cur.fetchone() == (True,)
    assert store.expire() == 0


def test_nodes_racing_on_one_triplet_are_ordered(pg_db: Database, pg_dsn: str) -> None:
    # Eight consults of a new triplet at once, through two nodes: one finds nothing
    # ("new"), every other one finds its record ("early-retry"); none is lost.
    other = Database(pg_dsn)
    nodes = [PgGreylistStore(db, clock=lambda: T0) for db in (pg_db, other)]
    barrier = threading.Barrier(8)
    reasons: list[str] = []

    def racer(number: int) -> None:
        barrier.wait()
        reasons.append(nodes[number % 2].consult(KEY, S).reason)

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        other.close()
    assert sorted(reasons) == ["early-retry"] * 7 + ["new"]
    assert nodes[0].counts() == (1, 0)


def test_the_database_away_is_a_store_error() -> None:
    store = PgGreylistStore(Database("host=127.0.0.1 port=1 dbname=nothing connect_timeout=2"))
    with pytest.raises(GreylistStoreError, match="connect"):
        store.consult(KEY, S)
    with pytest.raises(GreylistStoreError, match="connect"):
        store.counts()
    with pytest.raises(GreylistStoreError, match="connect"):
        store.expire()
    store.close()
