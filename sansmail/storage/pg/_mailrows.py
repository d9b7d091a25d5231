"""The steps every writer of a mailbox shares: SMTP delivery, the queue runner's local
delivery, IMAP APPEND/COPY/EXPUNGE and POP3's DELE (tables in `_schema_mail`).

Each takes the cursor of a transaction the caller holds, so that a message, its UID, its
mod-sequence, the quota usage and the word to other nodes are one commit. Row locks are
taken in one order everywhere (content, then folder rows by ascending id, then the usage
row), so two writers of the same mailboxes wait for each other rather than deadlock.

Other nodes hear of a change by ``NOTIFY`` on `CHANNEL`, sent by PostgreSQL only when the
transaction commits (``pg_notify`` is transactional), with the payload
``mail:<folder id>`` (`folder_key`).
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Collection, Iterable
from typing import Final, NamedTuple

import psycopg
import psycopg.errors

from sansmail.mail.address import MailboxId
from sansmail.storage.pg._db import Cursor

__all__ = [
    "CHANNEL",
    "INBOX",
    "Added",
    "add_message",
    "collect_contents",
    "count_usage",
    "find_folder",
    "folder_key",
    "lock_folders",
    "mailbox_key",
    "make_folder",
    "notify",
    "remove_messages",
    "store_content",
]

#: The one channel every node LISTENs on; payloads say what changed.
CHANNEL: Final = "sansmail"
#: How INBOX is spelt in ``mail_folders.name`` (IMAP matches it without regard to case).
INBOX: Final = "INBOX"
#: The advisory locks of `collect_contents`: the two-key form, a key space apart from
#: the one-key locks (POP3's maildrops, the greylist, sieve, migrations), this class
#: first ("MC"), then the bucket.
_CONTENT_LOCKS: Final = 0x4D43
_CONTENT_BUCKETS: Final = 32


class Added(NamedTuple):
    uidvalidity: int
    uid: int
    modseq: int


def mailbox_key(mailbox: MailboxId) -> str:
    """The ``mailbox`` column's value for `mailbox`: "local@domain"."""
    return f"{mailbox.local}@{mailbox.domain}"


def folder_key(folder_id: int) -> str:
    """The notification payload (and IDLE watch key) of a folder."""
    return f"mail:{folder_id}"


def notify(cur: Cursor, payload: str) -> None:
    """Tell every node of `payload` when the transaction commits (PostgreSQL drops a
    repeat of the same payload within one transaction)."""
    cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))


def find_folder(cur: Cursor, mailbox: str, name: str) -> int | None:
    """The id of folder `name` ("INBOX" in any case, or "a/b") of `mailbox`, or None."""
    cur.execute(
        "SELECT id FROM mail_folders WHERE mailbox = %s AND name = %s",
        (mailbox, _canonical(name)),
    )
    row = cur.fetchone()
    return int(row[0]) if row else None


def make_folder(cur: Cursor, mailbox: str, name: str, *, special_use: str | None = None) -> int:
    """The id of folder `name` of `mailbox`, made if missing (a concurrent maker wins
    harmlessly: both get the same row)."""
    name = _canonical(name)
    cur.execute(
        "INSERT INTO mail_folders (mailbox, name, special_use) VALUES (%s, %s, %s)"
        " ON CONFLICT (mailbox, name) DO NOTHING RETURNING id",
        (mailbox, name, special_use),
    )
    row = cur.fetchone()
    if row:
        return int(row[0])
    found = find_folder(cur, mailbox, name)
    if found is None:  # pragma: no cover - deleted between the two statements
        raise psycopg.errors.SerializationFailure(f"folder {name!r} vanished while made")
    return found


def store_content(cur: Cursor, content: bytes) -> bytes:
    """Keep `content` (CRLF form) once; returns its digest, the ``mail_contents`` key.

    The no-op update on a conflict is deliberate: it locks the existing row until this
    transaction ends, so `collect_contents` in another transaction cannot delete it
    between this statement and the message row that will point at it."""
    digest = hashlib.sha256(content).digest()
    cur.execute(
        "INSERT INTO mail_contents (digest, size, content) VALUES (%s, %s, %s)"
        " ON CONFLICT (digest) DO UPDATE SET size = EXCLUDED.size",
        (digest, len(content), content),
    )
    return digest


def add_message(
    cur: Cursor,
    folder_id: int,
    mailbox: str,
    digest: bytes,
    size: int,
    *,
    flags: Collection[str] = (),
    internaldate: datetime.datetime,
) -> Added:
    """Put the content `digest` (of `size` octets) in folder `folder_id` of `mailbox`
    under the next UID, count it in the mailbox's usage, and notify.
    `internaldate` must be timezone-aware; its offset is kept for FETCH."""
    offset = internaldate.utcoffset()
    if offset is None:
        raise ValueError("internaldate must be timezone-aware")
    cur.execute(
        "UPDATE mail_folders SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1"
        " WHERE id = %s RETURNING uidvalidity, uidnext - 1, highestmodseq",
        (folder_id,),
    )
    row = cur.fetchone()
    if row is None:
        raise LookupError(f"folder {folder_id} does not exist")
    added = Added(int(row[0]), int(row[1]), int(row[2]))
    cur.execute(
        "INSERT INTO mail_messages"
        " (folder_id, uid, digest, size, internaldate, zone, flags, modseq)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (
            folder_id,
            added.uid,
            digest,
            size,
            internaldate,
            int(offset.total_seconds()) // 60,
            sorted(flags),
            added.modseq,
        ),
    )
    _count(cur, mailbox, size, 1)
    notify(cur, folder_key(folder_id))
    return added


def remove_messages(cur: Cursor, folder_id: int, mailbox: str, uids: Iterable[int]) -> list[int]:
    """Expunge `uids` from folder `folder_id` of `mailbox`: rows gone, tombstones under
    one new mod-sequence, usage lowered, contents nobody else holds dropped, and a
    notification. Returns the UIDs that were there, ascending."""
    wanted = sorted(set(uids))
    if not wanted:
        return []
    # The folder row first (the lock order: a STORE holds it while it updates rows).
    lock_folders(cur, [folder_id])
    cur.execute(
        "DELETE FROM mail_messages WHERE folder_id = %s AND uid IN (SELECT unnest(%s::bigint[]))"
        " RETURNING uid, digest, size",
        (folder_id, wanted),
    )
    gone = cur.fetchall()
    if not gone:
        return []
    cur.execute(
        "UPDATE mail_folders SET highestmodseq = highestmodseq + 1 WHERE id = %s"
        " RETURNING highestmodseq",
        (folder_id,),
    )
    row = cur.fetchone()
    assert row is not None  # the folder's messages were just deleted under its lock
    modseq = int(row[0])
    removed = sorted(int(uid) for uid, _digest, _size in gone)
    cur.execute(
        "INSERT INTO mail_expunged (folder_id, uid, modseq)"
        " SELECT %s, u, %s FROM unnest(%s::bigint[]) AS u"
        " ON CONFLICT (folder_id, uid) DO UPDATE SET modseq = EXCLUDED.modseq",
        (folder_id, modseq, removed),
    )
    _count(cur, mailbox, -sum(int(size) for _uid, _digest, size in gone), -len(gone))
    collect_contents(cur, {bytes(digest) for _uid, digest, _size in gone})
    notify(cur, folder_key(folder_id))
    return removed


def lock_folders(
    cur: Cursor, folder_ids: Iterable[int]
) -> dict[int, tuple[int, int, int, list[str]]]:
    """Lock the folder rows `folder_ids` in ascending id order (the one order every
    writer takes them in); id -> (uidvalidity, uidnext, highestmodseq, keywords) of
    those that exist."""
    cur.execute(
        "SELECT id, uidvalidity, uidnext, highestmodseq, keywords FROM mail_folders"
        " WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
        (sorted(set(folder_ids)),),
    )
    return {
        int(fid): (int(validity), int(uidnext), int(modseq), list(keywords))
        for fid, validity, uidnext, modseq, keywords in cur.fetchall()
    }


def count_usage(cur: Cursor, mailbox: str, octets: int, messages: int) -> None:
    """Add `octets` and `messages` (negative: taken away) to `mailbox`'s usage."""
    _count(cur, mailbox, octets, messages)


def collect_contents(cur: Cursor, digests: Collection[bytes]) -> None:
    """Drop those of `digests` no message points at any more.

    Best effort, inside a savepoint: a content another transaction holds (its
    `store_content` lock) is skipped, and one that a message committed meanwhile still
    points at makes the foreign key refuse the delete, which is rolled back to the
    savepoint; either way it stays, and costs only space until a later collection.

    Two transactions removing the last two holders of a content (two mailboxes' copies
    of one delivery) would each see the other's message, not yet committed, and keep
    it for good. So a collector first takes transaction-level advisory locks on the
    contents' buckets (`_CONTENT_BUCKETS` of them, sorted: collectors never wait in a
    cycle), waiting for the other's commit; its statement then sees that message gone.
    Buckets, not one lock per content: an expunge of 100,000 messages would overflow
    the server's lock table. Call it last in the transaction: it waits only for other
    collectors, which wait for nothing after it."""
    if not digests:
        return
    buckets = sorted({digest[0] % _CONTENT_BUCKETS for digest in digests})
    cur.execute(
        "SELECT count(pg_advisory_xact_lock(%s, k.b)) FROM"
        " (SELECT b FROM unnest(%s::integer[]) AS u(b) ORDER BY b OFFSET 0) AS k",
        (_CONTENT_LOCKS, buckets),
    )
    try:
        with cur.connection.transaction():
            cur.execute(
                "DELETE FROM mail_contents WHERE digest IN ("
                " SELECT c.digest FROM mail_contents c WHERE c.digest = ANY(%s)"
                " AND NOT EXISTS (SELECT 1 FROM mail_messages m WHERE m.digest = c.digest)"
                " FOR UPDATE SKIP LOCKED)",
                (list(digests),),
            )
    except psycopg.errors.ForeignKeyViolation:
        pass


def _count(cur: Cursor, mailbox: str, octets: int, messages: int) -> None:
    cur.execute(
        "INSERT INTO mail_usage (mailbox, octets, messages) VALUES (%s, %s, %s)"
        " ON CONFLICT (mailbox) DO UPDATE SET octets = mail_usage.octets + EXCLUDED.octets,"
        " messages = mail_usage.messages + EXCLUDED.messages",
        (mailbox, octets, messages),
    )


def _canonical(name: str) -> str:
    return INBOX if name.upper() == INBOX else name
