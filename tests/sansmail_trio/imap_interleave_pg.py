"""The interleaving harness (imap_interleave.py) on the PostgreSQL backend: `PgWorld`
learns from the database what `World` learns from the Maildir INBOX's index and files,
so that test_imap_interleaved*.py make the same assertions on both backends.

- `stored`: UID -> flags of the INBOX's rows, after checking that the mailbox's usage
  counters (what the quota reads) agree with its rows, as `World.stored` checks that
  the index's rows and the folder's files agree.
- `uidls` (for `pop3_delete`): the UIDL of a UID is the server's ``%08X%08X`` of UID
  and UIDVALIDITY (the Maildir's is the file's base, read from the index).
- ``outside_flag``/``outside_unlink`` rename or remove a Maildir file behind the
  server's back; no other tool writes a PostgreSQL mailbox, so there is none here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from imap_interleave import ALICE, Session, World

from sansmail.mail.address import parse_address

if TYPE_CHECKING:
    from sansmail.storage.pg import Database

_MAILBOX = parse_address(ALICE).key


@contextlib.contextmanager
def database(dsn: str | None) -> Iterator[Database | None]:
    """A `Database` on `dsn` for the model's looks at the store (None: a Maildir
    server), closed at the end. The model looks at every check; a connection of its own
    each time (`trio_helpers.pg_query`) costs 2.5 ms, one from the pool 0.15 ms."""
    if dsn is None:
        yield None
        return
    # Imported here: psycopg is there only with the postgresql extra.
    from sansmail.storage.pg import Database  # noqa: PLC0415

    db = Database(dsn)
    try:
        yield db
    finally:
        db.close()


class PgWorld(World):
    """`World` over an INBOX in the database `db` (see the module docstring)."""

    def __init__(
        self,
        sessions: Sequence[Session],
        *,
        db: Database,
        smtp_port: int,
        pop3_port: int | None = None,
        archive_watcher: Session | None = None,
    ) -> None:
        self.db = db
        # `inbox` names the Maildir folder, which only the overridden methods read.
        super().__init__(
            sessions,
            inbox="",
            smtp_port=smtp_port,
            pop3_port=pop3_port,
            archive_watcher=archive_watcher,
        )

    def stored(self) -> dict[int, frozenset[str]]:
        rows = self._query(
            "SELECT m.uid, m.flags, (SELECT count(*) FROM mail_messages a"
            "  JOIN mail_folders af ON af.id = a.folder_id WHERE af.mailbox = f.mailbox),"
            " (SELECT coalesce(sum(a.size), 0) FROM mail_messages a"
            "  JOIN mail_folders af ON af.id = a.folder_id WHERE af.mailbox = f.mailbox),"
            " u.messages, u.octets"
            " FROM mail_folders f LEFT JOIN mail_messages m ON m.folder_id = f.id"
            " LEFT JOIN mail_usage u ON u.mailbox = f.mailbox"
            " WHERE f.mailbox = %s AND f.name = 'INBOX'",
            (_MAILBOX,),
        )
        if not rows:
            return {}  # no INBOX yet: nothing was ever delivered or appended
        _uid, _flags, count, octets, usage_count, usage_octets = rows[0]
        # One statement, so one snapshot: the counters and the rows are compared as of
        # the same moment.
        assert (usage_count or 0, usage_octets or 0) == (count, octets), rows[0]
        # (\\Recent is no stored flag here, unlike a Maildir file's place in new/.)
        return {int(uid): frozenset(flags) for uid, flags, *_totals in rows if uid is not None}

    def uidls(self, uids: Sequence[int]) -> dict[str, int]:
        """UIDL -> UID of the messages of `uids`: the server's form of UID and the
        INBOX's UIDVALIDITY."""
        # Imported here: psycopg is there only with the postgresql extra.
        from sansmail.storage.pg._maildrop import unique_id  # noqa: PLC0415

        ((validity,),) = self._query(
            "SELECT uidvalidity FROM mail_folders WHERE mailbox = %s AND name = 'INBOX'",
            (_MAILBOX,),
        )
        return {unique_id(int(validity), uid): uid for uid in uids}

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self.db.transaction() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())

    def outside_flag(self, uid: int) -> None:
        raise AssertionError("another tool renames Maildir files: there are none here")

    def outside_unlink(self, uid: int) -> None:
        raise AssertionError("another tool removes Maildir files: there are none here")


def make_world(
    sessions: Sequence[Session],
    *,
    inbox: str,
    db: Database | None,
    smtp_port: int,
    pop3_port: int | None = None,
    archive_watcher: Session | None = None,
) -> World:
    """The `World` of a server on Maildir files (`inbox`: ALICE's INBOX folder) or, with
    `db` (see `database`), on PostgreSQL."""
    if db is None:
        return World(
            sessions,
            inbox=inbox,
            smtp_port=smtp_port,
            pop3_port=pop3_port,
            archive_watcher=archive_watcher,
        )
    return PgWorld(
        sessions,
        db=db,
        smtp_port=smtp_port,
        pop3_port=pop3_port,
        archive_watcher=archive_watcher,
    )
