"""One node's ear on the database: a connection that ``LISTEN``s on `_mailrows.CHANNEL`
and hands over the payloads other nodes (and this one) sent with ``pg_notify``.

Blocking, for a worker thread: `wait(timeout)` returns the payloads that arrived within
`timeout` seconds (an empty list when none did), so the caller, which may have to stop,
never waits long in a call it cannot interrupt. The connection is the caller's alone
(autocommit, never in the pool: a pooled connection would hand its LISTEN, and the
notifications queued on it, to whoever took it next).

A lost connection (the server restarted, failed over, or terminated the backend) raises
`DatabaseUnavailableError` from `wait`; notifications sent meanwhile are lost, since
PostgreSQL keeps them only for connections listening when they commit. The caller makes
a new `NotificationConnection` and treats everything as changed.

A connection that dies without a word (a primary powered off, a network cut: no FIN,
no RST) would otherwise look like a quiet one for as long as the kernel keeps it, and
this node would hear nothing. So the listening connection asks for TCP keepalives and a
user timeout (`KEEPALIVE`, unless the DSN sets them): a peer gone silent is found within
about a minute, and `wait` raises as for any lost connection.
"""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict

from sansmail.storage.pg._db import Connection, Database, DatabaseUnavailableError, first_line
from sansmail.storage.pg._mailrows import CHANNEL

__all__ = ["NotificationConnection"]


class NotificationConnection:
    """A connection listening on `CHANNEL` (see the module docstring). Blocking;
    `DatabaseUnavailableError` when it cannot be made."""

    def __init__(self, db: Database) -> None:
        # Every connection asks for TCP keepalives (`_db.KEEPALIVE`): without them a
        # silent network would leave this one waiting for notifications forever.
        own = Database(db.dsn, idle=0, application_name="sansmail listen")
        self._conn: Connection = own.connect(autocommit=True)
        try:
            # CHANNEL is a constant identifier, not input: it cannot be a parameter.
            self._conn.execute(f"LISTEN {CHANNEL}")
        except psycopg.Error as exc:
            self._conn.close()
            raise DatabaseUnavailableError(f"cannot listen: {first_line(exc)}") from exc

    @property
    def settings(self) -> dict[str, str]:
        """The connection's libpq parameters (what it was made with)."""
        return {name: str(value) for name, value in conninfo_to_dict(self._conn.info.dsn).items()}

    @property
    def backend_pid(self) -> int:
        """The server process serving this connection (``pg_stat_activity.pid``)."""
        return int(self._conn.info.backend_pid)

    def wait(self, timeout: float) -> list[str]:
        """Blocking: the payloads that arrived, waiting up to `timeout` seconds for the
        first; [] when none came. `DatabaseUnavailableError` when the connection is lost
        (it is closed then)."""
        try:
            # stop_after=1 returns as soon as one packet arrived, with every
            # notification it carried; what came after is in the next call's backlog.
            return [n.payload for n in self._conn.notifies(timeout=timeout, stop_after=1)]
        except psycopg.Error as exc:
            self.close()
            raise DatabaseUnavailableError(
                f"lost the listening connection: {first_line(exc)}"
            ) from exc

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> NotificationConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
