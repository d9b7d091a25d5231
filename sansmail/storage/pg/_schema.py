"""The schema and its versions: ``sansmail-trio storage migrate``.

The database says which schema it holds in ``sansmail_schema`` (one row: the version).
`migrate` brings it to `SCHEMA_VERSION` one step at a time, each step in its own
transaction, under an advisory lock so that two nodes started together do not both
migrate; `require_current` is what a server checks at start (an older schema: run
``storage migrate``; a newer one: this node is older than the database, refused).

Version 1 is the tables of each part, kept beside the code that uses them: the
mailboxes (`_schema_mail`), the queue (`_schema_queue`) and the users, aliases, Sieve
scripts and greylist (`_schema_accounts`). A later version appends a step here; a step
is never edited once released.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import psycopg

from sansmail.storage.pg._db import Database, DatabaseError, DatabaseUnavailableError
from sansmail.storage.pg._schema_accounts import ACCOUNT_TABLES
from sansmail.storage.pg._schema_mail import MAIL_TABLES
from sansmail.storage.pg._schema_queue import QUEUE_TABLES

__all__ = ["SCHEMA_VERSION", "STEPS", "SchemaError", "migrate", "require_current", "schema_version"]

#: One statement list per version, version i+1 at index i.
STEPS: Final[tuple[Sequence[str], ...]] = ((*MAIL_TABLES, *QUEUE_TABLES, *ACCOUNT_TABLES),)
SCHEMA_VERSION: Final = len(STEPS)

# Any constant: it names the lock `migrate` holds, in pg_locks, for the database.
_MIGRATE_LOCK: Final = 0x5A6E5D11


class SchemaError(DatabaseError):
    """The database's schema is not the one this version of sansmail uses."""


def schema_version(db: Database) -> int:
    """Blocking: the version the database holds; 0 for a database never migrated."""
    with db.transaction() as cur:
        cur.execute("SELECT to_regclass('sansmail_schema') IS NOT NULL")
        row = cur.fetchone()
        if not row or not row[0]:
            return 0
        cur.execute("SELECT version FROM sansmail_schema")
        row = cur.fetchone()
        return int(row[0]) if row else 0


def require_current(db: Database) -> None:
    """Blocking: `SchemaError` unless the database holds `SCHEMA_VERSION`, with the
    words an administrator needs."""
    found = schema_version(db)
    if found < SCHEMA_VERSION:
        raise SchemaError(
            f"the database holds schema version {found}, this sansmail needs {SCHEMA_VERSION}:"
            " run `sansmail-trio storage migrate`"
        )
    if found > SCHEMA_VERSION:
        raise SchemaError(
            f"the database holds schema version {found}, newer than this sansmail knows"
            f" ({SCHEMA_VERSION}): upgrade this node"
        )


def migrate(db: Database) -> tuple[int, int]:
    """Blocking: bring the schema to `SCHEMA_VERSION`; returns (version before, after).
    Idempotent, and safe to run from several nodes at once."""
    with db.connection() as conn:
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS sansmail_schema (version integer NOT NULL)"
                )
                row = conn.execute("SELECT version FROM sansmail_schema").fetchone()
                before = int(row[0]) if row else 0
                if before > SCHEMA_VERSION:
                    raise SchemaError(
                        f"the database holds schema version {before}, newer than this"
                        f" sansmail knows ({SCHEMA_VERSION})"
                    )
                if row is None:
                    conn.execute("INSERT INTO sansmail_schema (version) VALUES (0)")
                # All steps in the one transaction that holds the lock: PostgreSQL's
                # DDL is transactional, so a failed step leaves the version before.
                for version in range(before + 1, SCHEMA_VERSION + 1):
                    for statement in STEPS[version - 1]:
                        conn.execute(statement)
                    conn.execute("UPDATE sansmail_schema SET version = %s", (version,))
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailableError(f"database: {exc}") from exc
        except psycopg.Error as exc:
            raise DatabaseError(f"migrating the schema failed: {exc}") from exc
    return before, SCHEMA_VERSION
