"""The greylist's SQLite store: shared by processes, kept across restarts, swept."""

from __future__ import annotations

import multiprocessing
import os
import pathlib
import sqlite3
import stat
from collections.abc import Callable
from typing import Any

import pytest

from sansmail.mail.greylist import (
    DELAY,
    MAX_AGE,
    RETRY_WINDOW,
    Action,
    GreylistSettings,
    Triplet,
)
from sansmail.storage.greylist import FILE_NAME, GreylistStoreError, SqliteGreylistStore
from sansmail.storage.pg import Database
from sansmail.storage.pg._greylist import PgGreylistStore

S = GreylistSettings()
T0 = 1_800_000_000.0
KEY = Triplet("192.0.2.0/24", "alice@example.org", "bob@example.net")


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "data" / FILE_NAME


Store = SqliteGreylistStore | PgGreylistStore
Make = Callable[..., Store]


@pytest.fixture(params=["maildir", "postgresql"])
def make(request: pytest.FixtureRequest, path: pathlib.Path) -> Make:
    """Makes a store of the backend under test, all on the same records: the tests that
    do not look at the SQLite file run against both."""
    if request.param == "maildir":
        return lambda **options: SqliteGreylistStore(path, **options)
    db: Database = request.getfixturevalue("pg_db")

    def table_store(**options: Any) -> Store:
        return PgGreylistStore(db, **options)

    return table_store


def test_first_greylisted_then_passed_then_remembered(make: Make) -> None:
    clock = Clock()
    store = make(clock=clock)
    assert store.consult(KEY, S).action is Action.GREYLIST
    clock.now += 10
    early = store.consult(KEY, S)
    assert (early.action, early.reason, early.wait) == (Action.GREYLIST, "early-retry", DELAY - 10)
    clock.now = T0 + DELAY
    passed = store.consult(KEY, S)
    assert (passed.action, passed.delayed) == (Action.PASS, DELAY)
    clock.now += 20 * 86400
    later = store.consult(KEY, S)
    assert (later.action, later.delayed) == (Action.PASS, None)
    store.close()


def test_state_survives_reopening(make: Make) -> None:
    clock = Clock()
    first = make(clock=clock)
    first.consult(KEY, S)
    first.close()
    clock.now += DELAY
    second = make(clock=clock)
    assert second.consult(KEY, S).action is Action.PASS
    assert second.counts() == (1, 1)  # the triplet, and one pass for its client network
    second.close()


def test_file_is_private_and_in_wal_mode(path: pathlib.Path) -> None:
    store = SqliteGreylistStore(path, clock=Clock())
    store.consult(KEY, S)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


def test_two_connections_see_each_other(make: Make) -> None:
    clock = Clock()
    one = make(clock=clock)
    two = make(clock=clock)
    assert one.consult(KEY, S).action is Action.GREYLIST
    clock.now += DELAY
    assert two.consult(KEY, S).action is Action.PASS
    # The first store's idle connection reads what the second wrote.
    assert one.consult(KEY, S).delayed is None
    one.close()
    two.close()


def _consult_many(
    path: str, worker: int, count: int, now: float, out: multiprocessing.Queue
) -> None:
    store = SqliteGreylistStore(path, clock=lambda: now)
    actions = []
    for n in range(count):
        # Every process consults the shared triplet and some of its own.
        key = KEY if n % 2 == 0 else Triplet(f"198.51.{worker}.0/24", f"s{n}@x.example", "r@y")
        actions.append(store.consult(key, S).action.value)
    store.close()
    out.put((worker, actions))


def _run_processes(
    path: pathlib.Path, workers: int, count: int, now: float
) -> dict[int, list[str]]:
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    procs = [
        context.Process(target=_consult_many, args=(os.fspath(path), w, count, now, out))
        for w in range(workers)
    ]
    for proc in procs:
        proc.start()
    results = dict(out.get(timeout=60) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    return results


def test_processes_share_one_greylist(path: pathlib.Path) -> None:
    # Four processes at once, each with its own connections: no consult fails on a
    # locked database, and every write lands.
    first = _run_processes(path, workers=4, count=40, now=T0)
    assert all(set(actions) == {"greylist"} for actions in first.values())
    store = SqliteGreylistStore(path, clock=Clock(T0))
    assert store.counts() == (1 + 4 * 20, 0)
    # After the delay, what any process wrote lets every process's retry through.
    second = _run_processes(path, workers=4, count=40, now=T0 + DELAY)
    assert all(set(actions) == {"pass"} for actions in second.values())
    store.close()


def test_store_made_before_a_fork_opens_its_own_connections(path: pathlib.Path) -> None:
    clock = Clock()
    store = SqliteGreylistStore(path, clock=clock)
    store.consult(KEY, S)  # the parent now holds an idle connection
    inherited = list(store._idle)
    assert inherited
    context = multiprocessing.get_context("fork")
    out = context.Queue()

    def child() -> None:
        clock.now = T0 + DELAY  # the child's copy of the clock
        action = store.consult(KEY, S).action.value
        out.put((action, any(conn in inherited for conn in store._idle)))
        store.close()

    proc = context.Process(target=child)
    proc.start()
    assert out.get(timeout=60) == ("pass", False)
    proc.join(timeout=60)
    assert proc.exitcode == 0
    # The parent's connection still works, and sees what the child wrote.
    clock.now = T0 + DELAY + 1
    assert store.consult(KEY, S).delayed is None
    store.close()


def test_expired_rows_are_swept_a_bounded_number_at_a_time(make: Make) -> None:
    clock = Clock()
    store = make(clock=clock, sweep_every=1, sweep_rows=3)
    for n in range(10):
        store.consult(Triplet("192.0.2.0/24", f"s{n}@example.org", "r@example.net"), S)
    assert store.counts() == (10, 0)
    # Ten greylisted triplets expire at the end of the retry window.
    clock.now = T0 + RETRY_WINDOW + 1
    store.consult(KEY, S)  # one consult: 3 of them go, and KEY comes
    assert store.counts() == (8, 0)
    store.consult(KEY, S)
    assert store.counts() == (5, 0)
    assert store.expire() == 4
    assert store.counts() == (1, 0)
    store.close()


def test_remembered_rows_expire_after_max_age(make: Make) -> None:
    clock = Clock()
    store = make(clock=clock)
    store.consult(KEY, S)
    clock.now += DELAY
    store.consult(KEY, S)
    clock.now += MAX_AGE
    assert store.expire() == 0
    clock.now += 1
    assert store.expire() == 2  # the triplet and the client network's count
    assert store.counts() == (0, 0)
    store.close()


def test_a_locked_database_is_an_error_after_the_busy_timeout(path: pathlib.Path) -> None:
    store = SqliteGreylistStore(path, clock=Clock(), busy_timeout=0.05)
    store.consult(KEY, S)
    with sqlite3.connect(path, isolation_level=None) as other:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(GreylistStoreError, match="locked"):
            store.consult(KEY, S)
        other.execute("ROLLBACK")
    assert store.consult(KEY, S).action is Action.GREYLIST
    store.close()


def test_unwritable_place_is_an_error_and_a_damaged_file_is_repaired(
    tmp_path: pathlib.Path,
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(GreylistStoreError):
        SqliteGreylistStore(blocker / FILE_NAME, clock=Clock()).consult(KEY, S)
    damaged = tmp_path / FILE_NAME
    damaged.write_bytes(b"this is not a database" * 100)
    # Set aside and started afresh (tests/sansmail/storage/test_repair_stores.py).
    assert SqliteGreylistStore(damaged, clock=Clock()).consult(KEY, S).action is Action.GREYLIST


def test_newer_schema_is_refused(path: pathlib.Path) -> None:
    path.parent.mkdir()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(GreylistStoreError, match="newer"):
        SqliteGreylistStore(path, clock=Clock()).consult(KEY, S)
