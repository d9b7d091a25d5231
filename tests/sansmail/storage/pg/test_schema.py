"""The schema's versions: `migrate` from nothing, again (a no-op), from two nodes at
once, and what a node says of a database at another version."""

from __future__ import annotations

import threading

import psycopg
import pytest
from pgcluster import Cluster

from sansmail.storage.pg import (
    SCHEMA_VERSION,
    Database,
    DatabaseError,
    DatabaseUnavailableError,
    SchemaError,
    migrate,
    require_current,
    schema_version,
)
from sansmail.storage.pg._listen import NotificationConnection


def test_migrate_from_nothing_then_again(pg_cluster: Cluster) -> None:
    with pg_cluster.database() as dsn:
        db = Database(dsn)
        try:
            assert schema_version(db) == 0
            with pytest.raises(SchemaError, match="storage migrate"):
                require_current(db)
            assert migrate(db) == (0, SCHEMA_VERSION)
            assert migrate(db) == (SCHEMA_VERSION, SCHEMA_VERSION)
            require_current(db)
            with db.transaction() as cur:
                cur.execute("SELECT count(*) FROM sansmail_schema")
                assert cur.fetchone() == (1,)
        finally:
            db.close()


def test_two_nodes_migrating_at_once_both_succeed(pg_cluster: Cluster) -> None:
    with pg_cluster.database() as dsn:
        results: list[tuple[int, int]] = []
        errors: list[BaseException] = []

        def run() -> None:
            db = Database(dsn)
            try:
                results.append(migrate(db))
            except BaseException as exc:
                errors.append(exc)
            finally:
                db.close()

        threads = [threading.Thread(target=run) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert sorted(results) == [(0, SCHEMA_VERSION), (SCHEMA_VERSION, SCHEMA_VERSION)]


def test_a_newer_schema_is_refused(pg_db: Database) -> None:
    with pg_db.transaction() as cur:
        cur.execute("UPDATE sansmail_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaError, match="upgrade this node"):
        require_current(pg_db)
    with pytest.raises(SchemaError, match="newer"):
        migrate(pg_db)


def test_no_server_is_a_clear_error(pg_cluster: Cluster) -> None:
    db = Database(f"postgresql://sansmail@127.0.0.1:{pg_cluster.port}/no_such_database")
    with pytest.raises(DatabaseUnavailableError, match="cannot connect"):
        schema_version(db)


def test_a_failed_transaction_is_rolled_back_and_the_connection_reused(pg_db: Database) -> None:
    def fail() -> None:
        with pg_db.transaction() as cur:
            cur.execute("INSERT INTO mail_usage (mailbox, octets) VALUES ('a@b', 1)")
            cur.execute("SELECT no_such_column FROM mail_usage")

    with pytest.raises(DatabaseError, match="no_such_column"):
        fail()
    with pg_db.transaction() as cur:
        cur.execute("SELECT count(*) FROM mail_usage")
        assert cur.fetchone() == (0,)


@pytest.mark.parametrize(
    ("dsn", "secret"),
    [
        # libpq's parse errors quote the piece they stop at: here pieces of the password.
        ("postgresql://sansmail:s3cr%zzet@127.0.0.1:1/db", "s3cr%zzet"),
        ("host=127.0.0.1 port=1 password=sec ret-part dbname=db", "ret-part"),
    ],
)
def test_a_dsn_libpq_cannot_parse_is_named_never_quoted(dsn: str, secret: str) -> None:
    db = Database(dsn)
    with pytest.raises(DatabaseUnavailableError) as caught:
        schema_version(db)
    assert "dsn is not a valid" in str(caught.value)
    assert secret not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
    with pytest.raises(DatabaseUnavailableError) as caught:
        migrate(db)
    assert secret not in str(caught.value)
    with pytest.raises(DatabaseUnavailableError) as caught:
        NotificationConnection(db)
    assert secret not in str(caught.value)


def test_a_connection_failure_never_quotes_the_password() -> None:
    # A password libpq's message happens to hold (here the host's address itself).
    db = Database("postgresql://sansmail:127.0.0.1@127.0.0.1:1/db")
    with pytest.raises(DatabaseUnavailableError, match="cannot connect") as caught:
        schema_version(db)
    assert "127.0.0.1" not in str(caught.value)
    assert "***" in str(caught.value)


def test_a_connection_goes_back_idle_and_out_of_autocommit(pg_db: Database) -> None:
    # A user left it in autocommit with a transaction begun by hand (the way a reader
    # switching autocommit back fails): the next user gets neither.
    with pg_db.connection() as conn:
        conn.autocommit = True
        conn.execute("BEGIN")
        conn.execute("CREATE TABLE half_done (n int)")
    with pg_db.connection() as again:
        assert again is conn
        assert not again.autocommit
        assert again.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with pg_db.transaction() as cur:
        cur.execute("SELECT to_regclass('half_done') IS NULL")
        assert cur.fetchone() == (True,)


def test_every_connection_asks_for_keepalives_unless_the_dsn_says(pg_dsn: str) -> None:
    # A primary that vanished must end a waiting call in about a minute, not hang.
    for dsn, idle in [(pg_dsn, "30"), (pg_dsn + "?keepalives_idle=5", "5")]:
        db = Database(dsn)
        try:
            with db.connection() as conn:
                given = conn.info.get_parameters()
                assert given["keepalives_idle"] == idle
                assert given["tcp_user_timeout"] == "60000"
        finally:
            db.close()
