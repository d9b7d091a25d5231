"""`PgGreylistStore`: the greylist's records in the ``greylist_triplets`` and
``greylist_clients`` tables (`_schema_accounts`), shared by every node, so that a
sender's retry passes whichever node's MX it reaches.

Theory of operation
-------------------
The same decision as the SQLite store (`sansmail.mail.greylist.decide`), the same
columns. A consult is one transaction: it takes an advisory lock on the client network
(``pg_advisory_xact_lock`` of a hash of it), reads the triplet's record and the
network's in one query, decides, and writes back what the decision changed
(``INSERT ... ON CONFLICT DO UPDATE``). Every record a consult touches belongs to that
network, so two nodes consulting for it are ordered (the second sees the first's
record) and consults for other networks never wait for each other. A missing row cannot
be locked with ``FOR UPDATE``; the advisory lock covers rows not yet written.

The time. With no `clock`, it is the database server's (``clock_timestamp()``, read
after the lock): one clock for every node, so a retry is measured the same whichever
node took the first attempt, even if the nodes' clocks drift. Tests give a `clock`.

Expiry as in the SQLite store: every `sweep_every`-th consult of a store deletes up to
`sweep_rows` expired rows of each table, oldest first through the ``expires`` indexes,
skipping rows another transaction holds. Failures raise `GreylistStoreError`, and the
check lets the mail through (fail open, as postgrey does when it is down).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from sansmail.mail.greylist import (
    ClientRecord,
    Decision,
    GreylistSettings,
    Triplet,
    TripletRecord,
    decide,
)
from sansmail.storage.greylist import GreylistStore, GreylistStoreError
from sansmail.storage.pg._db import Cursor, Database, DatabaseError

__all__ = ["PgGreylistStore"]

_TABLES: Final = ("greylist_triplets", "greylist_clients")


class PgGreylistStore(GreylistStore):
    """The greylist in the database `db` (see the module docstring).

    `clock` gives seconds since the epoch (None: the database's clock); every
    `sweep_every`-th consult deletes up to `sweep_rows` expired rows per table."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], float] | None = None,
        sweep_every: int = 16,
        sweep_rows: int = 64,
    ) -> None:
        if sweep_every < 1 or sweep_rows < 1:
            raise ValueError("sweep_every and sweep_rows must be at least 1")
        self._db = db
        self._clock = clock
        self._sweep_every = sweep_every
        self._sweep_rows = sweep_rows
        self._calls = 0

    def consult(self, triplet: Triplet, settings: GreylistSettings) -> Decision:
        try:
            with self._db.transaction() as cur:
                return self._consult(cur, triplet, settings)
        except DatabaseError as exc:
            raise GreylistStoreError(str(exc)) from exc

    def _consult(self, cur: Cursor, triplet: Triplet, settings: GreylistSettings) -> Decision:
        cur.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (f"greylist:{triplet.client}",),
        )
        cur.execute(
            "SELECT extract(epoch FROM clock_timestamp())::float8,"
            " t.first, t.last, t.expires, c.count, c.last, c.expires"
            " FROM (SELECT 1) AS one"
            " LEFT JOIN greylist_triplets t"
            "  ON t.client = %s AND t.sender = %s AND t.recipient = %s"
            " LEFT JOIN greylist_clients c ON c.client = %s",
            (triplet.client, triplet.sender, triplet.recipient, triplet.client),
        )
        row = cur.fetchone()
        assert row is not None  # one row, whatever is joined
        now = self._clock() if self._clock is not None else float(row[0])
        record = TripletRecord(*row[1:4]) if row[1] is not None else None
        client = ClientRecord(int(row[4]), *row[5:7]) if row[4] is not None else None
        decision = decide(settings, record, client, now)
        if decision.triplet is not None:
            written = decision.triplet
            cur.execute(
                "INSERT INTO greylist_triplets"
                " (client, sender, recipient, first, last, expires)"
                " VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (client, sender, recipient) DO UPDATE SET first = EXCLUDED.first,"
                " last = EXCLUDED.last, expires = EXCLUDED.expires",
                (
                    triplet.client,
                    triplet.sender,
                    triplet.recipient,
                    written.first,
                    written.last,
                    written.expires,
                ),
            )
        if decision.client is not None:
            counted = decision.client
            cur.execute(
                "INSERT INTO greylist_clients (client, count, last, expires)"
                " VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (client) DO UPDATE SET count = EXCLUDED.count,"
                " last = EXCLUDED.last, expires = EXCLUDED.expires",
                (triplet.client, counted.count, counted.last, counted.expires),
            )
        self._calls += 1
        if self._calls % self._sweep_every == 0:
            self._sweep(cur, now, self._sweep_rows)
        return decision

    def _sweep(self, cur: Cursor, now: float, rows: int | None) -> int:
        gone = 0
        for table in _TABLES:
            cur.execute(
                f"DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table}"  # noqa: S608 (fixed names)
                " WHERE expires < %s ORDER BY expires LIMIT %s FOR UPDATE SKIP LOCKED)",
                (now, rows),
            )
            gone += cur.rowcount
        return gone

    def expire(self, *, rows: int | None = None) -> int:
        """Blocking: delete up to `rows` (None: all) expired records per table now; how
        many went. For maintenance and tests; consults sweep on their own."""
        try:
            with self._db.transaction() as cur:
                if self._clock is not None:
                    now = self._clock()
                else:
                    cur.execute("SELECT extract(epoch FROM clock_timestamp())::float8")
                    found = cur.fetchone()
                    assert found is not None
                    now = float(found[0])
                return self._sweep(cur, now, rows)
        except DatabaseError as exc:
            raise GreylistStoreError(str(exc)) from exc

    def counts(self) -> tuple[int, int]:
        """Blocking: the rows in (triplets, clients), expired ones included."""
        try:
            with self._db.transaction() as cur:
                cur.execute(
                    "SELECT (SELECT count(*) FROM greylist_triplets),"
                    " (SELECT count(*) FROM greylist_clients)"
                )
                row = cur.fetchone()
        except DatabaseError as exc:
            raise GreylistStoreError(str(exc)) from exc
        assert row is not None
        return int(row[0]), int(row[1])

    def close(self) -> None:
        """Nothing of its own to close: the connections are the `Database`'s."""
