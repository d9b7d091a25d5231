"""The greylist's shared state: what `sansmail.mail.greylist` decides on, kept in one
SQLite database that every server process uses and that survives restarts. Blocking.

Theory of operation
-------------------
`GreylistStore` is what the SMTP check needs: `consult(triplet, settings)` reads the
triplet's record and its client network's auto-whitelist record, asks
`sansmail.mail.greylist.decide`, and writes back what the decision changed, as one step
that no other process can interleave with. `SqliteGreylistStore` is the one back end; a
PostgreSQL one can provide the same method (``SELECT ... FOR UPDATE`` in a transaction,
the server's clock).

The database, ``<data_dir>/greylist.sqlite`` (mode 0600: it holds addresses), has two
tables, ``triplets`` (client network, sender, recipient -> first, last, expires) and
``clients`` (client network -> count, last, expires), each with an index on
``expires``. Every server process (``sansmail-trio serve`` forks `processes` of them)
opens it:

* WAL mode, so readers never wait for the writer, and each `consult` is one
  ``BEGIN IMMEDIATE`` transaction: the write lock is taken before the read, so two
  processes consulting one triplet at once are ordered (the second sees the first's
  record) and neither can fail half-way through with SQLITE_BUSY, which a deferred
  transaction that upgrades its lock can. A process that finds the lock taken waits
  for it up to `busy_timeout` seconds (SQLite's busy handler), then gives up with an
  error.
* ``synchronous=NORMAL``: a commit reaches the WAL but is fsync'd only at checkpoints,
  so a power failure may forget the last moments' records. That only greylists those
  senders once more; an fsync per RCPT would cost far more.
* The time is read (`clock`) inside the transaction, so the process that takes the lock
  later also decides later.
* Expiry. Records are useless past their ``expires`` (the decision ignores them
  there), so deleting them is housekeeping: every `sweep_every`-th consult of a process
  also deletes up to `sweep_rows` expired rows of each table, in the same transaction,
  through the ``expires`` index. The work per call is bounded, and it keeps up: a
  consult adds at most two rows, and a sweep may take `sweep_rows` per table.

Connections. A consult runs in whatever worker thread the adapter picks, so the store
keeps a small pool of idle connections (made with ``check_same_thread=False``): a
consult takes one out of the list, or opens one, and puts it back after. Taking and
returning are single list operations, atomic under the GIL, so no lock is needed and a
connection belongs to whoever took it out. Connections are opened on first use, so a
store made before a fork is safe; one that a child finds from its parent's process is
left alone (SQLite forbids using a connection across fork) and a new one is opened.

Failures. Anything SQLite or the file system raises comes out of `consult` as
`GreylistStoreError`; the check then lets the mail through and logs it (as postgrey
fails open when it is down). A damaged file (SQLite says corrupt, or not a database) is
repaired on the spot: under an ``flock`` of ``greylist.sqlite.lock`` (so two processes
do not both repair), and unless a fresh connection finds it sound (another process
repaired it first), it is renamed ``greylist.sqlite.corrupt`` for a post-mortem, its
``-wal`` and ``-shm`` removed, a warning logged on ``sansmail.repair``, and the consult
tried once more on a new, empty database. Nothing but time is lost: greylisting starts
again from nothing, so known senders are delayed once more.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pathlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Final, Protocol

from sansmail.mail.greylist import (
    ClientRecord,
    Decision,
    GreylistSettings,
    Triplet,
    TripletRecord,
    decide,
)

__all__ = [
    "FILE_NAME",
    "GreylistStore",
    "GreylistStoreError",
    "SqliteGreylistStore",
]

#: The database's name in data_dir.
FILE_NAME: Final = "greylist.sqlite"
SCHEMA_VERSION: Final = 1
_IDLE_MAX: Final = 4
# What SQLite says of a file that is not a sound database (see "Failures" above).
_DAMAGED: Final = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})
_log = logging.getLogger("sansmail.repair")
# Connections a forked child found in its parent's pool (see _fork_check).
_INHERITED: Final[list[sqlite3.Connection]] = []
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS triplets (
    client TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    first REAL NOT NULL,
    last REAL NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (client, sender, recipient)
);
CREATE INDEX IF NOT EXISTS triplets_expires ON triplets (expires);
CREATE TABLE IF NOT EXISTS clients (
    client TEXT PRIMARY KEY NOT NULL,
    count INTEGER NOT NULL,
    last REAL NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS clients_expires ON clients (expires);
"""


class GreylistStoreError(Exception):
    """The store could not answer (the database is locked too long, damaged, or its
    directory cannot be written); str() says why, for the log."""


class GreylistStore(Protocol):
    """Where greylisting keeps its records, shared by every server process."""

    def consult(self, triplet: Triplet, settings: GreylistSettings) -> Decision:
        """Blocking: decide on `triplet` now (`sansmail.mail.greylist.decide`) and record
        what the decision changed, atomically with respect to every other consult.
        Raises `GreylistStoreError` when it cannot."""
        ...

    def close(self) -> None:
        """Blocking: close what is open (the store may still be used after)."""
        ...


class SqliteGreylistStore(GreylistStore):
    """The greylist in one SQLite file; see the module docstring.

    `clock` gives seconds since the epoch; `busy_timeout` (seconds) is how long a consult
    waits for another process's transaction; every `sweep_every`-th consult deletes up to
    `sweep_rows` expired rows per table."""

    def __init__(
        self,
        path: pathlib.Path | str,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 5.0,
        sweep_every: int = 16,
        sweep_rows: int = 64,
    ) -> None:
        if sweep_every < 1 or sweep_rows < 1:
            raise ValueError("sweep_every and sweep_rows must be at least 1")
        self.path = os.fspath(path)
        self._clock = clock
        self._busy_timeout = busy_timeout
        self._sweep_every = sweep_every
        self._sweep_rows = sweep_rows
        self._calls = 0
        self._idle: list[sqlite3.Connection] = []
        self._pid = os.getpid()

    def consult(self, triplet: Triplet, settings: GreylistSettings) -> Decision:
        for attempt in range(2):
            try:
                conn = self._take()
                try:
                    decision = self._consult(conn, triplet, settings)
                except BaseException:
                    conn.close()
                    raise
                self._give(conn)
            except (sqlite3.Error, OSError) as exc:
                if attempt or not _damaged(exc) or not self._repair(exc):
                    raise GreylistStoreError(f"{self.path}: {exc}") from exc
                continue
            return decision
        raise AssertionError("unreachable")

    def _repair(self, exc: BaseException) -> bool:
        """Set a damaged database aside (see "Failures" in the module docstring);
        whether to try again."""
        self.close()
        try:
            with self._repair_lock():
                try:
                    conn = self._open()
                    try:
                        sound = conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
                    finally:
                        conn.close()
                except sqlite3.DatabaseError as again:
                    if not _damaged(again):
                        return False
                    sound = False
                if sound:
                    return True  # repaired by another process meanwhile
                os.replace(self.path, self.path + ".corrupt")
                for suffix in ("-wal", "-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.path + suffix)
        except OSError:
            return False
        _log.warning(
            "greylist database %s was damaged (%s): set aside as %s.corrupt and started"
            " afresh (known senders are greylisted once more)",
            self.path,
            exc,
            self.path,
        )
        return True

    @contextlib.contextmanager
    def _repair_lock(self) -> Iterator[None]:
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _consult(
        self, conn: sqlite3.Connection, triplet: Triplet, settings: GreylistSettings
    ) -> Decision:
        key = (triplet.client, triplet.sender, triplet.recipient)
        conn.execute("BEGIN IMMEDIATE")
        try:
            now = self._clock()
            row = conn.execute(
                "SELECT first, last, expires FROM triplets"
                " WHERE client = ? AND sender = ? AND recipient = ?",
                key,
            ).fetchone()
            client_row = conn.execute(
                "SELECT count, last, expires FROM clients WHERE client = ?", (triplet.client,)
            ).fetchone()
            decision = decide(
                settings,
                TripletRecord(*row) if row is not None else None,
                ClientRecord(*client_row) if client_row is not None else None,
                now,
            )
            if decision.triplet is not None:
                record = decision.triplet
                conn.execute(
                    "INSERT OR REPLACE INTO triplets VALUES (?, ?, ?, ?, ?, ?)",
                    (*key, record.first, record.last, record.expires),
                )
            if decision.client is not None:
                counted = decision.client
                conn.execute(
                    "INSERT OR REPLACE INTO clients VALUES (?, ?, ?, ?)",
                    (triplet.client, counted.count, counted.last, counted.expires),
                )
            self._calls += 1
            if self._calls % self._sweep_every == 0:
                self._sweep(conn, now)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return decision

    def _sweep(self, conn: sqlite3.Connection, now: float) -> None:
        # Oldest expiry first, through the index: bounded work even with a backlog.
        for table in ("triplets", "clients"):
            conn.execute(
                f"DELETE FROM {table} WHERE rowid IN"  # noqa: S608 (a fixed table name)
                f" (SELECT rowid FROM {table} WHERE expires < ? ORDER BY expires LIMIT ?)",
                (now, self._sweep_rows),
            )

    def expire(self, *, rows: int | None = None) -> int:
        """Blocking: delete up to `rows` (None: all) expired records now; how many went.
        For maintenance and tests; consults sweep on their own."""
        try:
            conn = self._take()
            try:
                conn.execute("BEGIN IMMEDIATE")
                now = self._clock()
                limit = -1 if rows is None else rows
                gone = 0
                for table in ("triplets", "clients"):
                    gone += conn.execute(
                        f"DELETE FROM {table} WHERE rowid IN"  # noqa: S608 (a fixed table name)
                        f" (SELECT rowid FROM {table} WHERE expires < ?"
                        " ORDER BY expires LIMIT ?)",
                        (now, limit),
                    ).rowcount
                conn.execute("COMMIT")
            except BaseException:
                conn.close()
                raise
            self._give(conn)
        except (sqlite3.Error, OSError) as exc:
            raise GreylistStoreError(f"{self.path}: {exc}") from exc
        return gone

    def counts(self) -> tuple[int, int]:
        """Blocking: the rows in (triplets, clients), expired ones included."""
        try:
            conn = self._take()
            try:
                triplets = conn.execute("SELECT count(*) FROM triplets").fetchone()[0]
                clients = conn.execute("SELECT count(*) FROM clients").fetchone()[0]
            except BaseException:
                conn.close()
                raise
            self._give(conn)
        except (sqlite3.Error, OSError) as exc:
            raise GreylistStoreError(f"{self.path}: {exc}") from exc
        return triplets, clients

    def close(self) -> None:
        self._fork_check()
        while self._idle:
            try:
                conn = self._idle.pop()
            except IndexError:
                break
            conn.close()

    # -- connections ------------------------------------------------------------------

    def _fork_check(self) -> None:
        if self._pid != os.getpid():
            # The parent's connections: never used here, nor closed (closing may
            # checkpoint the parent's WAL), only kept from the garbage collector.
            _INHERITED.extend(self._idle)
            self._idle = []
            self._calls = 0
            self._pid = os.getpid()

    def _take(self) -> sqlite3.Connection:
        self._fork_check()
        try:
            return self._idle.pop()
        except IndexError:
            return self._open()

    def _give(self, conn: sqlite3.Connection) -> None:
        if len(self._idle) < _IDLE_MAX and self._pid == os.getpid():
            self._idle.append(conn)
        else:
            conn.close()

    def _open(self) -> sqlite3.Connection:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, 0o700, exist_ok=True)
        # Made by us first, so that SQLite (and its -wal and -shm files, which take the
        # database's mode) never makes it world-readable.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                self._create(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _create(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Looked at again under the write lock: another process may have just made it.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"schema version {version} is newer than this sansmail's {SCHEMA_VERSION}"
                )
            if version < SCHEMA_VERSION:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def _damaged(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.DatabaseError) and (
        getattr(exc, "sqlite_errorname", "") in _DAMAGED
    )
