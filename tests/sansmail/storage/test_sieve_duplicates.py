"""The per-user duplicates database: expiry, persistence, purging, and a damaged file
set aside."""

from __future__ import annotations

import logging
import os
import pathlib
import sqlite3
import stat

import pytest

from sansmail.mail.address import MailboxId
from sansmail.storage.pg import Database
from sansmail.storage.pg._sieve import PgSieveStore
from sansmail.storage.sieve import DUPLICATES_NAME, SieveScripts, SieveStore, SieveStoreError

ALICE = MailboxId(domain="example.org", local="alice")
T0 = 1_800_000_000.0
DAY = 86400


@pytest.fixture
def store(tmp_path: pathlib.Path) -> SieveStore:
    return SieveStore(tmp_path)


@pytest.fixture(params=["maildir", "postgresql"])
def scripts(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> SieveScripts:
    """A store of either backend, for the tests that do not look at the file."""
    if request.param == "maildir":
        return SieveStore(tmp_path)
    db: Database = request.getfixturevalue("pg_db")
    return PgSieveStore(db)


def db_path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "sieve" / "example.org" / "alice" / DUPLICATES_NAME


def test_seen_until_it_expires(scripts: SieveScripts) -> None:
    store = scripts
    with store.duplicates(ALICE) as dups:
        assert not dups.seen("vacation:bob@example.net", now=T0)
        dups.record("vacation:bob@example.net", 7 * DAY, now=T0)
        assert dups.seen("vacation:bob@example.net", now=T0)
        assert dups.seen("vacation:bob@example.net", now=T0 + 7 * DAY - 1)
        assert not dups.seen("vacation:bob@example.net", now=T0 + 7 * DAY)
        assert not dups.seen("vacation:carol@example.net", now=T0)


def test_record_again_moves_the_expiry(scripts: SieveScripts) -> None:
    store = scripts
    with store.duplicates(ALICE) as dups:
        dups.record("k", DAY, now=T0)
        dups.record("k", DAY, now=T0 + DAY // 2)
        assert dups.seen("k", now=T0 + DAY)


def test_kept_across_opens_and_per_user(scripts: SieveScripts, tmp_path: pathlib.Path) -> None:
    store = scripts
    with store.duplicates(ALICE) as dups:
        dups.record("k", DAY, now=T0)
    with store.duplicates(ALICE) as dups:
        assert dups.seen("k", now=T0 + 1)
    with store.duplicates(MailboxId(domain="example.org", local="bob")) as dups:
        assert not dups.seen("k", now=T0 + 1)
    if isinstance(store, SieveStore):
        assert stat.S_IMODE(db_path(tmp_path).stat().st_mode) == 0o600


def test_expired_rows_are_purged(store: SieveStore, tmp_path: pathlib.Path) -> None:
    with store.duplicates(ALICE) as dups:
        for n in range(100):
            dups.record(f"old{n}", DAY, now=T0)
        dups.record("new", DAY, now=T0 + 2 * DAY)
    with sqlite3.connect(db_path(tmp_path)) as conn:
        keys = [row[0] for row in conn.execute("SELECT key FROM duplicates")]
    assert keys == ["new"]


def test_synchronous_full(store: SieveStore) -> None:
    dups = store.duplicates(ALICE)
    try:
        assert dups._conn is not None
        assert dups._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        dups.close()


@pytest.mark.parametrize("damage", ["garbage", "pages"])
def test_a_damaged_database_is_set_aside_and_started_afresh(
    store: SieveStore, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    with store.duplicates(ALICE) as dups:
        for n in range(2000):
            dups.record(f"vacation:sender{n}@example.net:{'x' * 40}", DAY, now=T0)
    path = db_path(tmp_path)
    with open(path, "r+b") as f:
        if damage == "garbage":
            f.write(b"not a database at all" * 10)
        else:
            f.seek(4096)
            f.write(b"\xa5" * 16384)
    with (
        caplog.at_level(logging.WARNING, logger="sansmail.repair"),
        store.duplicates(ALICE) as dups,
    ):
        assert not dups.seen("vacation:sender1999@example.net:" + "x" * 40, now=T0)
        dups.record("k", DAY, now=T0)
        assert dups.seen("k", now=T0)
    (line,) = [r for r in caplog.records if r.name == "sansmail.repair"]
    assert line.levelno == logging.WARNING
    assert f"duplicates database {path} was damaged" in line.message
    assert os.path.exists(str(path) + ".corrupt")


def test_an_unwritable_database_is_a_store_error(store: SieveStore, tmp_path: pathlib.Path) -> None:
    store.duplicates(ALICE).close()
    path = db_path(tmp_path)
    path.unlink()
    path.mkdir()  # neither a database nor repairable
    with pytest.raises(SieveStoreError):
        store.duplicates(ALICE)


def test_a_database_another_process_repaired_is_kept(
    store: SieveStore, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The damage one delivery saw was set aside by another before this one took the
    # lock: the fresh database (with what the other recorded since) stays.
    dups = store.duplicates(ALICE)
    dups.record("k", DAY, now=T0)
    with caplog.at_level(logging.WARNING, logger="sansmail.repair"):
        dups._set_aside(sqlite3.DatabaseError("database disk image is malformed"))
    dups.close()
    assert not os.path.exists(str(db_path(tmp_path)) + ".corrupt")
    assert not [r for r in caplog.records if r.name == "sansmail.repair"]
    with store.duplicates(ALICE) as again:
        assert again.seen("k", now=T0)
