"""PgUserStore beyond what test_users.py runs on both backends: snapshots and their
staleness, two nodes, the database down, the shared SCRAM secret, fields kept."""

from __future__ import annotations

import threading

import pytest
from argon2 import PasswordHasher
from psycopg.types.json import Jsonb

from sansmail.mail.address import Address
from sansmail.storage.pg import Database
from sansmail.storage.pg._changes import catch_up, read_serial
from sansmail.storage.pg._users import PgUserStore
from sansmail.storage.users import UserError, UsersUnavailableError

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
ALICE = Address(local_part="Alice", domain="Example.TEST")
KEY = "alice@example.test"


def make(db: Database, **options: bool) -> PgUserStore:
    return PgUserStore(db, hasher=FAST, **options)


def test_lookups_answer_from_the_snapshot_until_changed(pg_db: Database) -> None:
    node_a, node_b = make(pg_db), make(pg_db)
    assert node_b.list() == []  # read at first use
    node_a.add(ALICE, "pw")
    # No notification heard yet: node B answers from what it read.
    assert node_b.get(KEY) is None
    assert not node_b.reload_if_changed()
    node_b.changed()
    assert node_b.stale
    assert node_b.reload_if_changed()
    assert not node_b.stale
    assert KEY in node_b
    assert not node_b.reload_if_changed()


def test_verify_password_reads_a_stale_snapshot_first(pg_db: Database) -> None:
    node_a, node_b = make(pg_db), make(pg_db)
    node_a.add(ALICE, "old")
    assert node_b.verify_password(KEY, "old")
    node_a.set_password(KEY, "new")
    node_b.changed()
    # In a worker thread already: no wait for the listener's reload.
    assert node_b.verify_password(KEY, "new")
    assert not node_b.verify_password(KEY, "old")
    assert node_b.reload_if_changed()  # the re-read is reported once


def test_verify_password_catches_up_before_any_notice(pg_db: Database) -> None:
    # The notice of a change reaches a node after the commit: a login arriving before it
    # still sees the change, through the serial (storage/pg/_changes.py).
    node_a, node_b = make(pg_db), make(pg_db)
    assert not node_b.verify_password(KEY, "pw")
    node_a.add(ALICE, "pw")
    assert not node_b.stale  # nothing heard
    assert node_b.verify_password(KEY, "pw")
    node_a.set_password(KEY, "new")
    assert not node_b.verify_password(KEY, "pw")
    node_a.delete(KEY)
    assert not node_b.verify_password(KEY, "new")
    assert KEY not in node_b


def test_catch_up_re_reads_only_when_the_serial_moved(pg_db: Database) -> None:
    node_a, node_b = make(pg_db), make(pg_db)
    assert node_b.list() == []
    catch_up(pg_db, {"users": node_b})
    assert node_b.get(KEY) is None
    node_a.add(ALICE, "pw")
    with pg_db.transaction() as cur:
        serial = read_serial(cur, "users")
    assert node_b.catch_up(serial) is True
    assert KEY in node_b
    assert node_b.catch_up(serial) is False
    # Written by hand, not through a store: no serial, no catching up (the listener's
    # notice, or the admin's reload, is what re-reads it).
    with pg_db.transaction() as cur:
        cur.execute("DELETE FROM users")
    catch_up(pg_db, {"users": node_b})
    assert KEY in node_b


def test_catch_up_with_the_database_away_keeps_the_users(pg_db: Database) -> None:
    node = make(pg_db)
    make(pg_db).add(ALICE, "pw")
    assert KEY in node
    down = Database("host=127.0.0.1 port=1 dbname=nothing connect_timeout=2")
    catch_up(down, {"users": node})  # no exception: the lookup goes on
    assert KEY in node


def test_a_write_notifies_users(pg_db: Database) -> None:
    listen = pg_db.connect(autocommit=True)
    try:
        listen.execute("LISTEN sansmail")
        make(pg_db).add(ALICE, "pw")
        payloads = [n.payload for n in listen.notifies(timeout=5, stop_after=1)]
    finally:
        listen.close()
    assert payloads == ["users"]


def test_unknown_fields_survive_a_rewrite(pg_db: Database) -> None:
    users = make(pg_db)
    users.add(ALICE, "pw", quota=10)
    with pg_db.transaction() as cur:
        cur.execute(
            "UPDATE users SET record = record || %s WHERE key = %s",
            (Jsonb({"later": {"x": 1}}), KEY),
        )
    users.set_password(KEY, "new")
    users.set_quota(KEY, None)
    with pg_db.transaction() as cur:
        cur.execute("SELECT record FROM users WHERE key = %s", (KEY,))
        row = cur.fetchone()
    assert row is not None
    assert row[0]["later"] == {"x": 1}
    assert "quota" not in row[0]
    assert users.verify_password(KEY, "new")


def test_quota(pg_db: Database) -> None:
    users = make(pg_db)
    users.add(ALICE, "pw")
    assert users.own_quota(KEY) is None
    users.set_quota(KEY, 1000)
    assert users.own_quota(KEY) == 1000
    with pytest.raises(UserError, match="octets"):
        users.set_quota(KEY, -1)
    with pytest.raises(UserError, match="no such user"):
        users.set_quota("nobody@example.test", 5)
    assert users.own_quota("nobody@example.test") is None


def test_concurrent_writers_of_one_user_lose_nothing(pg_db: Database) -> None:
    make(pg_db).add(ALICE, "pw")
    errors: list[BaseException] = []

    def quota() -> None:
        try:
            for octets in range(10):
                make(pg_db).set_quota(KEY, octets + 1)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=quota)
    thread.start()
    for _ in range(3):
        make(pg_db).set_password(KEY, "other")
    thread.join()
    assert errors == []
    users = make(pg_db)
    assert users.own_quota(KEY) == 10
    assert users.verify_password(KEY, "other")


def test_the_scram_secret_is_one_for_every_node(pg_db: Database) -> None:
    first = make(pg_db).scram_secret()
    assert len(first) == 32
    assert make(pg_db).scram_secret() == first


def test_a_database_down_from_the_start_makes_the_users_unavailable(pg_dsn: str) -> None:
    down = Database("host=127.0.0.1 port=1 dbname=nothing connect_timeout=2")
    users = make(down)
    with pytest.raises(UserError, match="connect"):
        users.reload_if_changed()
    assert users.unavailable is not None
    with pytest.raises(UsersUnavailableError):
        _ = KEY in users
    assert not users.verify_password(KEY, "pw")
    assert users.get(KEY) is None
    with pytest.raises(UserError, match="connect"):
        users.add(ALICE, "pw")


def test_a_failed_reload_keeps_the_users(pg_db: Database, pg_dsn: str) -> None:
    users = make(pg_db)
    users.add(ALICE, "pw")
    assert users.list()[0].key == KEY
    # The same store with its database gone: what it read stays in force.
    users._db = Database("host=127.0.0.1 port=1 dbname=nothing connect_timeout=2")
    users.changed()
    with pytest.raises(UserError, match="connect"):
        users.reload_if_changed()
    assert KEY in users
    assert users.unavailable is None
    assert users.stale  # tried again at the next call


def test_a_re_read_decodes_only_the_rows_that_changed(pg_db: Database) -> None:
    writer, node = make(pg_db), make(pg_db)
    writer.add(ALICE, "pw")
    writer.add(Address(local_part="bob", domain="example.test"), "pw")
    alice, bob = node.get(KEY), node.get("bob@example.test")
    # An UPDATE by hand, not through a store: its row's version changes all the same.
    with pg_db.transaction() as cur:
        cur.execute(
            "UPDATE users SET record = record || %s WHERE key = %s", (Jsonb({"quota": 7}), KEY)
        )
    writer.delete("bob@example.test")
    writer.add(Address(local_part="carol", domain="example.test"), "pw")
    node.changed()
    assert node.reload_if_changed()
    assert node.own_quota(KEY) == 7
    assert node.get(KEY) is not alice
    assert bob is not None
    assert node.get("bob@example.test") is None
    assert [user.key for user in node.list()] == [KEY, "carol@example.test"]
    carol = node.get("carol@example.test")
    node.changed()
    assert node.reload_if_changed()
    assert node.get("carol@example.test") is carol  # unchanged: the same object


def test_a_slow_re_read_never_replaces_a_newer_one(
    pg_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two worker threads re-read at once (the listener's reload and a login's): the one
    # whose query ran before a deletion must not land after the one that saw it, or the
    # deleted user's SCRAM keys answer logins again until the next notification.
    from sansmail.storage.pg import _users  # noqa: PLC0415

    node_a, node_b = make(pg_db), make(pg_db)
    node_a.add(ALICE, "pw")
    assert KEY in node_b
    real = _users._read_changed
    overtaken: list[bool] = []

    def slow(cur: object, previous: object) -> object:
        result = real(cur, previous)  # type: ignore[arg-type]
        if not overtaken:
            overtaken.append(True)
            node_a.delete(KEY)
            node_b.changed()
            node_b.reload_if_changed()  # the other thread's re-read, done first
            assert KEY not in node_b
        return result

    monkeypatch.setattr(_users, "_read_changed", slow)
    node_b.changed()
    node_b.reload_if_changed()
    assert KEY not in node_b
    assert node_b.get_scram(KEY, "sha256") is None
