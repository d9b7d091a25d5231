"""Connections to the database, kept open between uses.

Why not psycopg_pool: its pool keeps its bookkeeping in threads of its own, and this
package starts none (the layering rule of `sansmail/`). What a mail server needs of a
pool is small: reuse an idle connection, drop one that broke (a primary that failed
over), open a new one when none is idle. A `collections.deque` does that without a lock
(its ``append`` and ``pop`` are atomic), and the caller bounds how many are in use at
once: the Trio adapter runs every storage call in its worker threads, whose number is
capped (`trio.to_thread` with a `CapacityLimiter`), so the connections are too.

Every connection runs in psycopg's non-autocommit mode; `Database.transaction` is the
way in for writes: it commits when the block ends and rolls back when it raises, so a
``250`` given after it returned is backed by a committed transaction. `reading` is the
other: each statement its own transaction, in one round trip instead of three (BEGIN,
the statement, COMMIT), for reads and for changes that are one statement.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator
from typing import Any, Final

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = [
    "DSN_INVALID",
    "Database",
    "DatabaseError",
    "DatabaseUnavailableError",
    "first_line",
    "reading",
]

#: Idle connections kept per process beyond what is in use.
DEFAULT_IDLE: Final = 8
#: Seconds to wait for the server when connecting.
CONNECT_TIMEOUT: Final = 10
#: libpq parameters of every connection unless the DSN sets them: probes after 30 s of
#: silence, every 10 s, 3 unanswered ones end it; 60 s for unacknowledged data. A
#: primary that vanished (power lost, a network split) is then noticed in about a
#: minute, and the call waiting on it fails (a temporary failure, and the listener
#: reconnects) instead of hanging until the kernel gives up, a quarter of an hour.
KEEPALIVE: Final = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "tcp_user_timeout": "60000",
}
#: What a DSN libpq cannot parse is called (its text is never quoted: the password).
DSN_INVALID: Final = (
    "cannot connect to the database: [storage] dsn is not a valid PostgreSQL connection"
    " URI (not quoted here: it may hold a password)"
)


class DatabaseError(Exception):
    """The database refused or failed an operation (the store's callers answer with a
    temporary failure: 451 / NO [UNAVAILABLE] / -ERR [SYS/TEMP])."""


class DatabaseUnavailableError(DatabaseError):
    """No connection to the database could be made."""


Connection = psycopg.Connection[Any]
Cursor = psycopg.Cursor[Any]


class Database:
    """A connection source for one database (see the module docstring).

    `dsn` is a libpq connection string or ``postgresql://`` URI. Safe to share between
    threads: each call takes a connection of its own.
    """

    def __init__(
        self, dsn: str, *, idle: int = DEFAULT_IDLE, application_name: str = "sansmail"
    ) -> None:
        self.dsn = dsn
        self._idle_max = idle
        self._idle: collections.deque[Connection] = collections.deque()
        self._application_name = application_name
        self._closed = False

    def connect(self, *, autocommit: bool = False) -> Connection:
        """Blocking: a new connection of the caller's own (LISTEN, long reads); the
        caller closes it."""
        try:
            given = conninfo_to_dict(self.dsn)
            settings = {key: value for key, value in KEEPALIVE.items() if key not in given}
            return psycopg.connect(
                make_conninfo(self.dsn, **settings),
                autocommit=autocommit,
                connect_timeout=CONNECT_TIMEOUT,
                application_name=self._application_name,
            )
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailableError(
                f"cannot connect to the database: {self.scrub(first_line(exc))}"
            ) from None
        except psycopg.ProgrammingError:
            # libpq's parse errors quote the piece they choke on, which may be the
            # password: say which setting is wrong, never what it holds. (`from None`: a
            # traceback would print the psycopg error's text all the same.)
            raise DatabaseUnavailableError(DSN_INVALID) from None

    def scrub(self, text: str) -> str:
        """`text` with the DSN's password, if any, masked: for messages that quote what
        libpq or the server said about a connection."""
        try:
            password = conninfo_to_dict(self.dsn).get("password")
        except psycopg.Error:
            return text
        if not password:
            return text
        return text.replace(str(password), "***")

    @contextlib.contextmanager
    def connection(self) -> Iterator[Connection]:
        """Blocking: an idle connection (or a new one) for the block's length, given back
        after unless it broke."""
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self.connect()
        try:
            yield conn
        finally:
            self._give_back(conn)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Cursor]:
        """Blocking: one transaction on one connection, committed when the block ends
        normally (and durable when this returns: ``synchronous_commit`` is the server's,
        ``on`` unless its administrator said otherwise), rolled back when it raises.
        A psycopg error leaves as `DatabaseError` (`DatabaseUnavailableError` for a lost
        connection), so callers need not know psycopg."""
        with self.connection() as conn:
            try:
                with conn.transaction(), conn.cursor() as cur:
                    yield cur
            except psycopg.OperationalError as exc:
                raise DatabaseUnavailableError(f"database: {first_line(exc)}") from exc
            except psycopg.Error as exc:
                raise DatabaseError(f"database: {first_line(exc)}") from exc

    def close(self) -> None:
        """Close the idle connections (those in use close when given back)."""
        self._closed = True
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                return
            conn.close()

    def _give_back(self, conn: Connection) -> None:
        if conn.closed or conn.broken or self._closed:
            conn.close()
            return
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            # A block left inside a transaction (a bare `connection()` user that did
            # not finish): never hand that state to the next caller.
            try:
                conn.rollback()
            except psycopg.Error:
                conn.close()
                return
        if conn.autocommit:
            # A user that switched it on for reads (`_imapsql.reading`, the maildrop,
            # the queue) and could not switch it back: the module's promise is
            # non-autocommit connections, which a bare `connection()` user relies on.
            try:
                conn.autocommit = False
            except psycopg.Error:
                conn.close()
                return
        if len(self._idle) >= self._idle_max:
            conn.close()
        else:
            self._idle.append(conn)


@contextlib.contextmanager
def reading(db: Database) -> Iterator[Cursor]:
    """Blocking: a cursor whose every statement is its own transaction (autocommit),
    committed when it returns; a psycopg error leaves as `DatabaseError`."""
    try:
        with db.connection() as conn:
            conn.autocommit = True
            try:
                with conn.cursor() as cur:
                    yield cur
            finally:
                # A connection that broke meanwhile cannot be switched back; `_give_back`
                # drops it, and the error that broke it is the one to report.
                with contextlib.suppress(psycopg.Error):
                    conn.autocommit = False  # as the pool hands it out
    except psycopg.Error as exc:
        raise DatabaseError(f"database: {first_line(exc)}") from exc


def first_line(exc: BaseException) -> str:
    """The first line of `exc`'s text (psycopg's errors add detail lines), or its
    type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
