"""Changes to the users and aliases that a node may not have heard of yet.

Theory of operation
-------------------
A write to the users or the aliases sends a ``NOTIFY`` at its commit, and each node's
listener then re-reads the store in a worker thread (`PgUserStore`, `PgAliasSource`).
That takes milliseconds, and a RCPT or a login arriving meanwhile would be answered from
the read before: ``user add`` and, at once, mail for the new user refused with 550. On
one machine the generations counter closes that gap (`sansmail.storage.generations`);
across machines this does the same with a row per store in ``account_changes``:

- A **writer** bumps its store's serial (`announce`) in the transaction of its change,
  beside the ``NOTIFY``. The row lock serialises the writers of one store, which are
  administrative commands, never mail.
- A **read** of a store takes the serial first, in the transaction that reads the rows;
  under read committed every later statement sees at least the commits the serial
  counted, so the rows are at least as new as the serial they are tagged with.
- A **lookup made in a worker thread** (a RCPT on this backend, `catch_up`; a password
  check, `PgUserStore.verify_password`) first reads the serials, one statement in one
  round trip, and re-reads a store whose serial is not the one its read was tagged with. A change
  committed before the lookup began is therefore in force for it, on every node, even
  before the notice arrives; the notice still makes the re-read happen off the path of
  the next lookups.

The serial is a change notice only: compared for equality, so a database restored from
a backup (serials going back) is re-read too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from sansmail.storage.pg._db import Cursor, Database, DatabaseError, reading
from sansmail.storage.pg._mailrows import notify

__all__ = ["Follower", "announce", "catch_up", "read_serial"]


class Follower(Protocol):
    """A store whose read is tagged with its serial."""

    def catch_up(self, serial: int) -> bool: ...


def announce(cur: Cursor, what: str) -> None:
    """Count a change to store `what` (``users``, ``aliases``) and tell every node, when
    the transaction commits."""
    cur.execute(
        "INSERT INTO account_changes (what, serial) VALUES (%s, 1)"
        " ON CONFLICT (what) DO UPDATE SET serial = account_changes.serial + 1",
        (what,),
    )
    notify(cur, what)


def read_serial(cur: Cursor, what: str) -> int:
    """Store `what`'s serial (0: never changed)."""
    cur.execute("SELECT serial FROM account_changes WHERE what = %s", (what,))
    row = cur.fetchone()
    return int(row[0]) if row else 0


def catch_up(db: Database, followers: Mapping[str, Follower]) -> None:
    """Blocking: re-read each of `followers` (by store name) whose serial moved since its
    last read. A database that cannot be asked leaves them as they are: the lookup is
    answered from what was read, as it would be without this, and the node's listener
    reports the database's state."""
    try:
        # One statement in autocommit: one round trip, where a transaction takes three
        # (BEGIN, it, COMMIT), for a query every RCPT makes on this backend.
        with reading(db) as cur:
            cur.execute("SELECT what, serial FROM account_changes")
            serials = {str(what): int(serial) for what, serial in cur.fetchall()}
    except DatabaseError:
        return
    for what, follower in followers.items():
        follower.catch_up(serials.get(what, 0))
