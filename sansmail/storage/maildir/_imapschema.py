"""The tables of a folder's index (`FolderIndex`) and their versions.

Schema versions. ``PRAGMA user_version`` says which schema a file has; an older one is
migrated in place, in one write transaction, keeping every UID and the UIDVALIDITY
(version 1 kept the cache blob in ``messages``: version 2 moves it to ``structures``;
version 3 adds the search tables of `_imapsearch`, empty).
A file of a newer version than this code knows is refused, not rebuilt: rebuilding
would give every message a new UID under a new UIDVALIDITY for nothing.

The tables: ``folder`` (one row: UIDVALIDITY, UIDNEXT, the highest modseq, the \\Recent
mark, the tombstones' floor and what the last listing saw), ``messages`` (one row per
message: UID, base and current name, flags, keywords, INTERNALDATE and its zone, size,
modseq), ``expunged`` (tombstones), ``structures`` (what FETCH derived), the search
tables of `_imapsearch`, and ``adopted`` (Dovecot's UIDs, for the first sync only).
"""

from __future__ import annotations

import sqlite3
from typing import Final

from sansmail.storage.maildir._imapsearch import SEARCH_TABLES, create_texts
from sansmail.storage.maildir._uidlist import Uidlist

__all__ = [
    "INSERT_MESSAGE",
    "SCHEMA",
    "SCHEMA_VERSION",
    "UPSERT_STRUCTURES",
    "create",
    "migrate",
]

SCHEMA_VERSION: Final = 3

_STRUCTURES: Final = """CREATE TABLE IF NOT EXISTS structures (
        uid INTEGER PRIMARY KEY,
        cache BLOB,
        envelope BLOB,
        bodystructure BLOB,
        body BLOB)"""

# Dovecot's UIDs for the first sync of a folder it served (`_uidlist`); empty after it.
_ADOPTED: Final = """CREATE TABLE IF NOT EXISTS adopted (
        base TEXT PRIMARY KEY,
        uid INTEGER NOT NULL,
        size INTEGER)"""

SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS folder (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        uidvalidity INTEGER NOT NULL,
        uidnext INTEGER NOT NULL,
        highestmodseq INTEGER NOT NULL,
        recent_uid INTEGER NOT NULL,
        expunge_floor INTEGER NOT NULL,
        new_mtime INTEGER NOT NULL,
        cur_mtime INTEGER NOT NULL,
        synced INTEGER NOT NULL,
        new_count INTEGER NOT NULL)""",
    # flags: system flag bits (_imapmaildir); keywords: space-separated, sorted.
    """CREATE TABLE IF NOT EXISTS messages (
        uid INTEGER PRIMARY KEY,
        base TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        flags INTEGER NOT NULL,
        keywords TEXT NOT NULL,
        internaldate INTEGER NOT NULL,
        tz INTEGER NOT NULL,
        size INTEGER NOT NULL,
        modseq INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS messages_modseq ON messages (modseq)",
    "CREATE TABLE IF NOT EXISTS expunged (uid INTEGER PRIMARY KEY, modseq INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS expunged_modseq ON expunged (modseq)",
    _STRUCTURES,
    *SEARCH_TABLES,
    _ADOPTED,
)

# Version 1 kept the cache blob in a column of messages: it moves to structures (the
# column goes where SQLite can drop one, 3.35 and later, and is emptied elsewhere).
_MIGRATE_FROM_1: Final = (
    _STRUCTURES,
    "INSERT OR IGNORE INTO structures (uid, cache)"
    " SELECT uid, cache FROM messages WHERE cache IS NOT NULL",
)

INSERT_MESSAGE: Final = (
    "INSERT INTO messages (uid, base, name, flags, keywords, internaldate, tz, size, modseq)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Keeps what is already there where the new value is None (`Structures` members), and
# writes nothing for a message that is gone.
UPSERT_STRUCTURES: Final = (
    "INSERT INTO structures (uid, cache, envelope, bodystructure, body)"
    " SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM messages WHERE uid = ?1)"
    " ON CONFLICT (uid) DO UPDATE SET cache = coalesce(excluded.cache, cache),"
    " envelope = coalesce(excluded.envelope, envelope),"
    " bodystructure = coalesce(excluded.bodystructure, bodystructure),"
    " body = coalesce(excluded.body, body)"
)


def create(
    conn: sqlite3.Connection,
    path: str,
    uidvalidity: int,
    dovecot: Uidlist | None = None,
    *,
    modseq: int = 1,
) -> bool:
    """Make the tables of an empty index (`path`, for messages): a new folder, or one
    Dovecot served (its UIDs go into ``adopted`` for the first sync). `modseq` above 1
    starts HIGHESTMODSEQ and the tombstones' floor there (a resync's rebuild, past the
    old index's: every view then compares its whole UID list). False when another
    process made them first."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise RuntimeError(f"{path}: unknown index version {version}")
        if version == 0:
            for statement in SCHEMA:
                conn.execute(statement)
            create_texts(conn)
            # Header mtimes of -1 never match a directory: the first sync lists. What
            # Dovecot listed is not \Recent: recent_uid starts at its next UID.
            uidnext = dovecot.next_uid if dovecot is not None else 1
            conn.execute(
                "INSERT INTO folder VALUES (0, ?, ?, ?, ?, ?, -1, -1, 0, 0)",
                (uidvalidity, uidnext, modseq, uidnext, modseq if modseq > 1 else 0),
            )
            if dovecot is not None:
                conn.executemany(
                    "INSERT INTO adopted VALUES (?, ?, ?)",
                    [(b, r.uid, r.vsize) for b, r in dovecot.records.items()],
                )
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return version == 0


def migrate(conn: sqlite3.Connection, path: str) -> None:
    """Bring an index of an older version to this one, in place (see the module docstring)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have migrated it while we waited for the lock.
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (1, 2, SCHEMA_VERSION):
            raise RuntimeError(f"{path}: unknown index version {version}")
        if version == 1:
            for statement in _MIGRATE_FROM_1:
                conn.execute(statement)
            try:
                conn.execute("ALTER TABLE messages DROP COLUMN cache")
            except sqlite3.OperationalError:
                conn.execute("UPDATE messages SET cache = NULL")
        if version in (1, 2):
            # Version 3 adds the search tables, empty: SEARCH fills them.
            for statement in (*SEARCH_TABLES, _ADOPTED):
                conn.execute(statement)
            create_texts(conn)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
