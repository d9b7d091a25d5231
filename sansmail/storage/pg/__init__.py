"""Mail and state in PostgreSQL, for several sansmail nodes sharing one database:
blocking SQL over psycopg for worker threads; it starts no thread and opens no socket of
its own (libpq's connections aside).

The second storage backend (``[storage] backend = "postgresql"``): the same interfaces as
the Maildir store (`sansmail.storage.maildir`: `MailStore`, `ImapStore`, the POP3
maildrop; the queue, the users, the aliases), kept in tables that every node reads and
writes. PostgreSQL's commit is the durability point that fsync is for Maildir: nothing
is acknowledged before its transaction has committed.

Blocking calls (psycopg 3 over libpq), like the Maildir store's file I/O: call them from
worker threads. This package opens connections and runs SQL; it starts no thread and
never waits on an event loop. `Database` is the connection source, `migrate` creates and
upgrades the schema (``sansmail-trio storage migrate``).
"""

from sansmail.storage.pg._db import Database, DatabaseError, DatabaseUnavailableError
from sansmail.storage.pg._schema import (
    SCHEMA_VERSION,
    SchemaError,
    migrate,
    require_current,
    schema_version,
)

__all__ = [
    "SCHEMA_VERSION",
    "Database",
    "DatabaseError",
    "DatabaseUnavailableError",
    "SchemaError",
    "migrate",
    "require_current",
    "schema_version",
]
