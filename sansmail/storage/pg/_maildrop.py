"""`PgMaildrops` and `PgMaildrop`: a user's INBOX rows as a POP3 maildrop, for sessions on
any node (the `Pop3Maildrop` protocol of `sansmail.storage.maildir._mailbox`).

Theory of operation
-------------------
Exclusive use (RFC 1939 §4). Opening takes a session-level advisory lock,
``pg_try_advisory_lock`` on a 64-bit key made from the mailbox's name, on a connection
the maildrop keeps until `close`. The lock lives in the database, so a second POP3
session of the user is refused with [IN-USE] whichever node it reached; and it lives as
long as that connection: a node that dies, or a connection the database drops, lets go
of it without a stale lock to clean. Every read and the QUIT commit run on that same
connection, so the commit is made while the lock is provably held (a dropped connection
takes the commit with it, and the client hears -ERR). `close` unlocks before the
connection goes back to the pool; if that fails the connection is closed instead, which
unlocks too. (A pooler in transaction mode, such as PgBouncer's ``pool_mode =
transaction``, would hand the lock's connection to others: POP3 needs session pooling or
a direct connection.)

Snapshot. The INBOX's rows in UID order, read once at open: UIDs grow with arrival, so
the order is arrival order, as the Maildir maildrop's. Each message's size is its row's
(the stored octets, CRLF line ends: what RETR sends). Mail that arrives during the
session waits for the next one.

UIDL (RFC 1939 §7): ``%08X%08X`` of UID and UIDVALIDITY, the form of Dovecot's default
``pop3_uidl_format = %08Xu%08Xv``: stable across sessions and nodes, and kept by an
import from a Maildir that keeps UIDs and UIDVALIDITY. A `MessageInfo`'s ``base`` is the
same string (what the log names), ``folder`` "INBOX", ``name`` the decimal UID.

Reading: the content row, whole, converted chunk by chunk as a file would be
(`MessageReader.of_content`); a row expunged meanwhile by IMAP is `MessageGoneError`.
A client downloading its maildrop asks RETR 1, RETR 2, ... and the session reads ahead
(`Pop3Session`'s "Reading ahead"), so a read also fetches the messages that follow it in
the snapshot, up to `PREFETCH_OCTETS` and `PREFETCH_COUNT`, in the same query
(``uid = ANY(...)``), kept for the reads that ask for them next: one round trip per few
dozen small messages instead of one each (py-spy of a 4000-message download: 74% of the
session's time was the per-message read, two thirds of it BEGIN and COMMIT). Reads run
outside any transaction (the connection is in autocommit while the maildrop holds it,
and back in transaction mode when it returns to the pool); the QUIT commit is one.

QUIT (RFC 1939 §6), one transaction committed before the +OK: the messages RETR sent get
\\Seen under one new mod-sequence (so IMAP clients on every node see them read: the
folder is notified), then the marked ones are expunged with `_mailrows.remove_messages`
(tombstones, usage, contents nobody else holds, NOTIFY). A message already expunged by
another client counts as gone, as with a Maildir.

Errors: any database failure is `BackendUnavailableError` (an OSError), which the POP3
session answers with -ERR [SYS/TEMP]. Blocking (libpq): worker threads, one at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Iterator
from typing import Final

import psycopg

from sansmail.mail.address import MailboxId
from sansmail.storage.maildir._base import BackendUnavailableError
from sansmail.storage.maildir._mailbox import (
    Expunged,
    MaildropInUseError,
    MaildropSource,
    MessageGoneError,
    MessageInfo,
    MessageReader,
    Pop3Maildrop,
)
from sansmail.storage.pg import _mailrows
from sansmail.storage.pg._db import Connection, Cursor, Database, first_line

__all__ = [
    "PREFETCH_COUNT",
    "PREFETCH_OCTETS",
    "PgMaildrop",
    "PgMaildrops",
    "lock_key",
    "unique_id",
]

_SEEN: Final = "\\Seen"
#: What one read fetches of the messages after the one asked for (see "Reading").
PREFETCH_OCTETS: Final = 256 * 1024
PREFETCH_COUNT: Final = 64
# \Seen for the messages RETR sent that lack it, under one new mod-sequence taken only
# when one does (the folder row locked before the message rows, as every writer does);
# flags kept sorted by code point, as the IMAP store writes them.
_MARK_SEEN: Final = """
WITH todo AS (
    SELECT uid FROM mail_messages
    WHERE folder_id = %(folder)s AND uid = ANY(%(uids)s) AND NOT %(seen)s = ANY(flags)
), f AS (
    UPDATE mail_folders SET highestmodseq = highestmodseq + 1
    WHERE id = %(folder)s AND EXISTS (SELECT 1 FROM todo) RETURNING highestmodseq
)
UPDATE mail_messages AS m
SET flags = ARRAY(SELECT x FROM unnest(array_append(m.flags, %(seen)s)) AS x
                  ORDER BY x COLLATE "C"),
    modseq = f.highestmodseq
FROM f
WHERE m.folder_id = %(folder)s AND m.uid IN (SELECT uid FROM todo)
    AND NOT %(seen)s = ANY(m.flags)
"""
_INBOX: Final = "INBOX"


def lock_key(mailbox: str) -> int:
    """The advisory lock key of `mailbox`'s maildrop (a signed 64-bit integer)."""
    digest = hashlib.sha256(b"sansmail-pop3\0" + mailbox.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def unique_id(uidvalidity: int, uid: int) -> str:
    """A message's UIDL: Dovecot's default ``%08Xu%08Xv``."""
    return f"{uid:08X}{uidvalidity:08X}"


class PgMaildrops(MaildropSource):
    """Opens maildrops in `db` for POP3 sessions (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def open_maildrop(self, mailbox: MailboxId) -> PgMaildrop:
        return PgMaildrop.open(self.db, mailbox)


class PgMaildrop(Pop3Maildrop):
    """One POP3 session's hold on an INBOX in the database; use `PgMaildrop.open`, and
    `close` (or the ``with`` block) to let go of it."""

    def __init__(
        self,
        mailbox: str,
        stack: contextlib.ExitStack,
        conn: Connection,
        folder_id: int | None,
        messages: tuple[MessageInfo, ...],
    ) -> None:
        self.mailbox = mailbox
        self._stack = stack
        self._conn: Connection | None = conn
        self._folder_id = folder_id
        self._messages = messages
        self._position = {m.name: n for n, m in enumerate(messages)}
        #: Contents fetched ahead by name (the UID), for the reads that follow.
        self._ahead: dict[str, bytes] = {}

    @classmethod
    def open(cls, db: Database, mailbox: MailboxId) -> PgMaildrop:
        """Lock `mailbox`'s maildrop and take the snapshot. `MaildropInUseError` when a
        session anywhere holds it; `BackendUnavailableError` when the database fails."""
        key = _mailrows.mailbox_key(mailbox)
        stack = contextlib.ExitStack()
        try:
            conn = stack.enter_context(db.connection())
        except Exception as exc:
            stack.close()
            raise BackendUnavailableError(f"database: {exc}") from exc
        locked = False
        try:
            with _errors(), conn.transaction(), conn.cursor() as cur:
                cur.execute("SELECT pg_try_advisory_lock(%s)", (lock_key(key),))
                row = cur.fetchone()
                locked = bool(row and row[0])
                if not locked:
                    raise MaildropInUseError(f"{key} is in use by another POP3 session")
                folder_id, messages = _snapshot(cur, key)
            with _errors():
                conn.autocommit = True  # reads need no transaction (see "Reading")
        except BaseException:
            if locked:
                conn.close()  # unlocks; never handed on holding the lock
            stack.close()
            raise
        return cls(key, stack, conn, folder_id, messages)

    @property
    def messages(self) -> tuple[MessageInfo, ...]:
        return self._messages

    @property
    def closed(self) -> bool:
        return self._conn is None

    def close(self) -> None:
        """Unlock and give the connection back (closed instead when unlocking fails).
        Idempotent; never raises."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        self._ahead = {}
        try:
            conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key(self.mailbox),))
            conn.autocommit = False  # as the pool hands connections out
        except psycopg.Error:
            conn.close()
        with contextlib.suppress(Exception):
            self._stack.close()

    def __enter__(self) -> PgMaildrop:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def reader(self, message: MessageInfo, *, lines: int | None = None) -> MessageReader:
        content = self._ahead.pop(message.name, None)
        if content is None:
            content = self._fetch(message)
        return MessageReader.of_content(content, lines=lines)

    def _fetch(self, message: MessageInfo) -> bytes:
        """`message`'s content, and those of the messages after it that fit the budget
        into `_ahead` (see "Reading")."""
        wanted = [int(message.name)]
        budget = PREFETCH_OCTETS
        start = self._position.get(message.name, len(self._messages)) + 1
        for following in self._messages[start : start + PREFETCH_COUNT]:
            if following.size > budget:
                break
            wanted.append(int(following.name))
            budget -= following.size
        conn = self._conn
        if conn is None:
            raise BackendUnavailableError("the maildrop is closed")
        with _errors(), conn.cursor() as cur:
            cur.execute(
                "SELECT m.uid, c.content FROM mail_messages m"
                " JOIN mail_contents c ON c.digest = m.digest"
                " WHERE m.folder_id = %s AND m.uid = ANY(%s)",
                (self._folder_id, wanted),
            )
            found = {str(int(uid)): bytes(content) for uid, content in cur.fetchall()}
        content = found.pop(message.name, None)
        self._ahead = found  # replaces what was fetched before: bounded by the budget
        if content is None:
            raise MessageGoneError(f"message {message.base} is no longer in {self.mailbox}")
        return content

    def expunge(
        self, messages: Iterable[MessageInfo], *, seen: Iterable[MessageInfo] = ()
    ) -> Expunged:
        doomed = sorted({int(m.name) for m in messages})
        wanted = sorted({int(m.name) for m in seen} - set(doomed))
        if self._folder_id is None or not (doomed or wanted):
            return Expunged(gone=len(doomed))
        folder_id = self._folder_id
        with self._cursor() as cur:
            marked = 0
            if wanted:
                cur.execute(_MARK_SEEN, {"folder": folder_id, "seen": _SEEN, "uids": wanted})
                marked = cur.rowcount
                if marked:
                    _mailrows.notify(cur, _mailrows.folder_key(folder_id))
            removed = _mailrows.remove_messages(cur, folder_id, self.mailbox, doomed)
        return Expunged(removed=len(removed), gone=len(doomed) - len(removed), seen=marked)

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[Cursor]:
        """A transaction on the maildrop's own connection (the lock's), committed at the
        end of the block (BEGIN and COMMIT explicit: the connection is in autocommit)."""
        conn = self._conn
        if conn is None:
            raise BackendUnavailableError("the maildrop is closed")
        with _errors(), conn.transaction(), conn.cursor() as cur:
            yield cur


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """psycopg's errors as the OSError every POP3 caller answers with -ERR [SYS/TEMP]."""
    try:
        yield
    except psycopg.Error as exc:
        raise BackendUnavailableError(f"database: {first_line(exc)}") from exc


def _snapshot(cur: Cursor, mailbox: str) -> tuple[int | None, tuple[MessageInfo, ...]]:
    cur.execute(
        "SELECT f.id, f.uidvalidity, m.uid, m.size FROM mail_folders f"
        " LEFT JOIN mail_messages m ON m.folder_id = f.id"
        " WHERE f.mailbox = %s AND f.name = %s ORDER BY m.uid",
        (mailbox, _INBOX),
    )
    rows = cur.fetchall()
    if not rows:
        return None, ()  # no INBOX yet: a user who never got mail
    folder_id = int(rows[0][0])
    messages = []
    for _fid, validity, uid, size in rows:
        if uid is None:
            continue  # the LEFT JOIN's row for an empty INBOX
        uidl = unique_id(int(validity), int(uid))
        messages.append(
            MessageInfo(base=uidl, uid=uidl, size=int(size), folder=_INBOX, name=str(int(uid)))
        )
    return folder_id, tuple(messages)
