"""`PgMailStore`: local delivery into PostgreSQL rows, the `MailStore` of several nodes.

Theory of operation
-------------------
The same interface as `MaildirStore` (`sansmail.storage.maildir._base`), so the SMTP
intake, the queue runner and the Sieve LDA write through it unchanged; the tables are
`_schema_mail`'s and the row steps `_mailrows`'.

Content. A `Delivery` buffers what arrives (`write`, no I/O) and `flush` moves it to a
`tempfile.SpooledTemporaryFile` (memory up to `SPOOL_MEMORY`, then an unlinked file), so
a large message is not held twice in memory while it arrives; it goes to the database
whole, at commit. It is stored in canonical wire form: the trace prefix, then the
content with every line end a CRLF (`to_crlf`: what the Maildir store's readers send for
a file stored with LF), so that POP3's LIST, IMAP's RFC822.SIZE and the quota count the
same octets as for a Maildir (its ``,W=``). `Delivery.size` counts as the Maildir store
does (LF line ends, no prefix), so the intake's size limits are the same on both.

Once per message. The content is one ``mail_contents`` row keyed by its SHA-256
(`_mailrows.store_content`), however many mailboxes get it; each mailbox gets a
``mail_messages`` row pointing at it under the next UID of its folder.

Commit: one transaction per batch (`commit_many`), so that messages that end at about
the same time share one WAL flush, PostgreSQL's own group commit standing in for the
Maildir store's shared directory fsync. Each delivery of a batch runs inside a savepoint:
one that fails (a folder name the database refuses, a constraint) is rolled back alone
and reported as its own `BackendUnavailableError`, the others commit. A lost connection
or a failed COMMIT fails the whole batch: nothing of it is visible (no row, no UID
used), and every session answers 451. The names returned (``<uidvalidity>.<uid>`` per
mailbox, the message's IMAP identity) exist only once COMMIT returned, so no 250 is
given before the transaction is durable (``synchronous_commit`` as the server has it).

Round trips per message, however many recipients: the content row, then one statement
(`_DELIVER`; in a batch, after every content row, so that the folder locks are held as
briefly as can be) that locks the target folders in ascending id (the lock order every writer
keeps: content, folders, usage), takes a UID and a mod-sequence in each, inserts the
message rows, adds to each mailbox's usage and sends ``NOTIFY mail:<folder id>`` for
IMAP IDLE on every node. Folder ids are remembered per process; a folder deleted since
(its id is gone) is looked up or made again, once. A folder is made on first use:
INBOX, or the ``folder=`` of `begin` (quarantined mail into Junk), with its special use
and a subscription, as the Maildir store and Dovecot's LDA make it.

Quota: ``mail_usage`` is kept by every writer in the transaction that changes it, so it
is never stale; `full` is one read of it (the SMTP intake asks at RCPT), `storage` the
same read for the Sieve LDA.

Errors: `DatabaseError` (psycopg's, through `Database.transaction`) leaves as
`BackendUnavailableError`, an OSError, which every caller already answers as a failing
disk: 451 4.3.0, a deferral in the queue. Blocking (libpq): worker threads only.
"""

from __future__ import annotations

import contextlib
import datetime
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Final

import psycopg

from sansmail.mail.address import MailboxId
from sansmail.storage.maildir._base import BackendUnavailableError, Delivery, MailStore
from sansmail.storage.maildir._imapaccount import DEFAULT_SPECIAL_USE
from sansmail.storage.maildir._imapbase import InvalidFolderNameError
from sansmail.storage.maildir._imapmaildir import to_crlf
from sansmail.storage.maildir._imapnames import INBOX, normalize
from sansmail.storage.maildir._mailbox import MaildropSource
from sansmail.storage.pg import _mailrows
from sansmail.storage.pg._db import Cursor, Database, DatabaseError, first_line
from sansmail.storage.pg._maildrop import PgMaildrop, PgMaildrops
from sansmail.storage.pg._spool import Spool

__all__ = ["SPOOL_MEMORY", "PgMailStore"]

#: Octets a delivery keeps in memory before `flush` spills them to a temporary file.
SPOOL_MEMORY: Final = 4 * 1024 * 1024
#: Remembered folder ids per process (a dict; past this it starts again).
_FOLDER_CACHE: Final = 4096

# One statement for every mailbox of a message: the folders locked in ascending id,
# a UID and a mod-sequence each, the message rows, the usage, and the notification.
# Rows of folders that no longer exist are simply missing from the answer.
_DELIVER: Final = """
WITH locked AS (
    SELECT id FROM mail_folders WHERE id = ANY(%(ids)s) ORDER BY id FOR UPDATE
), bumped AS (
    UPDATE mail_folders AS f
    SET uidnext = f.uidnext + 1, highestmodseq = f.highestmodseq + 1
    FROM locked WHERE f.id = locked.id
    RETURNING f.id, f.mailbox, f.uidvalidity, f.uidnext - 1 AS uid, f.highestmodseq AS modseq
), added AS (
    INSERT INTO mail_messages (folder_id, uid, digest, size, internaldate, zone, modseq)
    SELECT id, uid, %(digest)s, %(size)s, %(date)s, %(zone)s, modseq FROM bumped
), used AS (
    INSERT INTO mail_usage AS u (mailbox, octets, messages)
    SELECT mailbox, %(size)s, 1 FROM bumped ORDER BY mailbox
    ON CONFLICT (mailbox) DO UPDATE
    SET octets = u.octets + EXCLUDED.octets, messages = u.messages + 1
)
SELECT id, uidvalidity, uid, pg_notify(%(channel)s, 'mail:' || id) FROM bumped
"""


class PgMailStore(MailStore, MaildropSource):
    """Delivers into the ``mail_*`` tables of `db`; see the module docstring. Also where
    POP3 sessions open maildrops (`PgMaildrops`).

    `hostname` is this node's name (kept for the log); `quota` gives each mailbox's
    storage limit in octets (0: none; `QuotaLimits`), and may be set after construction
    as on `MaildirStore`. `clock` gives nanoseconds since the epoch: INTERNALDATE.
    """

    def __init__(
        self,
        db: Database,
        *,
        hostname: str,
        quota: Callable[[MailboxId], int] | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.db = db
        self.hostname = hostname
        self.quota = quota
        self._clock = clock
        self._maildrops = PgMaildrops(db)
        # (mailbox key, folder name) -> folder id; single dict operations are atomic
        # under the GIL, so worker threads share it without a lock.
        self._folders: dict[tuple[str, str], int] = {}

    # -- MailStore ------------------------------------------------------------------------

    def begin(
        self, mailboxes: Sequence[MailboxId], *, prefix: bytes, folder: str | None = None
    ) -> Delivery:
        if not mailboxes:
            raise ValueError("a delivery needs at least one mailbox")
        name = INBOX
        if folder is not None:
            try:
                name = normalize(folder)
            except InvalidFolderNameError as exc:
                raise ValueError(str(exc)) from None
        return PgDelivery(self, list(mailboxes), prefix, name)

    def commit_many(self, deliveries: Sequence[Delivery]) -> list[list[str] | OSError]:
        """Blocking: one transaction for all of `deliveries`, each in a savepoint (see
        the module docstring)."""
        mine = [self._own(delivery) for delivery in deliveries]
        results: list[list[str] | OSError | None] = [None] * len(mine)
        contents: dict[int, bytes] = {}
        for index, delivery in enumerate(mine):
            try:
                contents[index] = delivery.content()
            except OSError as exc:
                results[index] = exc
        if not contents:
            return [r if r is not None else OSError("no result") for r in results]
        alone = len(contents) == 1
        try:
            with self.db.transaction() as cur:
                # Every content first, the folder rows after: the folder's row lock,
                # which every node's deliveries into that folder wait for, is then held
                # for the row statements and the COMMIT only, not across the content
                # inserts too (pg_bench.py: two nodes on one INBOX spent most of their
                # time in Lock:transactionid).
                stored: dict[int, tuple[bytes, int]] = {}
                for index, content in contents.items():
                    with _one(results, index, alone=alone), _savepoint(cur, skip=alone):
                        stored[index] = (_mailrows.store_content(cur, content), len(content))
                if len(stored) > 1 and self._deliver_batch(cur, results, mine, stored):
                    stored = {}
                for index, (digest, size) in stored.items():
                    with _one(results, index, alone=alone), _savepoint(cur, skip=alone):
                        results[index] = self._deliver(cur, mine[index], digest, size)
        except DatabaseError as exc:
            failure = BackendUnavailableError(str(exc))
            for index in contents:
                results[index] = failure
        out: list[list[str] | OSError] = []
        for index, delivery in enumerate(mine):
            result = results[index]
            assert result is not None
            if isinstance(result, list):
                delivery.done()
            out.append(result)
        return out

    def full(self, mailbox: MailboxId) -> bool:
        limit = self.quota(mailbox) if self.quota is not None else 0
        if not limit:
            return False
        try:
            octets = self._usage(mailbox)
        except DatabaseError:
            return False  # the delivery that follows will say what is wrong
        return octets >= limit

    def storage(self, mailbox: MailboxId) -> tuple[int, int] | None:
        limit = self.quota(mailbox) if self.quota is not None else 0
        if not limit:
            return None
        try:
            return self._usage(mailbox), limit
        except DatabaseError as exc:
            raise BackendUnavailableError(str(exc)) from None

    def folder_exists(self, mailbox: MailboxId, folder: str) -> bool:
        name = normalize(folder)
        try:
            with self.db.transaction() as cur:
                return _mailrows.find_folder(cur, _mailrows.mailbox_key(mailbox), name) is not None
        except DatabaseError as exc:
            raise BackendUnavailableError(str(exc)) from None

    # -- MaildropSource -------------------------------------------------------------------

    def open_maildrop(self, mailbox: MailboxId) -> PgMaildrop:
        return self._maildrops.open_maildrop(mailbox)

    # -- inside the transaction -----------------------------------------------------------

    def _deliver(self, cur: Cursor, delivery: PgDelivery, digest: bytes, size: int) -> list[str]:
        """The rows of one message whose content is stored (see "Round trips" in the
        module docstring); the name per mailbox given to `begin`, in order."""
        keys = list(dict.fromkeys(_mailrows.mailbox_key(m) for m in delivery.mailboxes))
        folder = delivery.folder
        when = datetime.datetime.fromtimestamp(self._clock() / 1e9).astimezone()
        offset = when.utcoffset()
        assert offset is not None
        params = {
            "digest": digest,
            "size": size,
            "date": when,
            "zone": int(offset.total_seconds()) // 60,
            "channel": _mailrows.CHANNEL,
        }
        names: dict[str, str] = {}
        for attempt in range(2):
            wanted = [key for key in keys if key not in names]
            ids = self._folder_ids(cur, wanted, folder, fresh=attempt > 0)
            by_id = {folder_id: key for key, folder_id in ids.items()}
            cur.execute(_DELIVER, {**params, "ids": sorted(by_id)})
            for folder_id, validity, uid, _notified in cur.fetchall():
                names[by_id[int(folder_id)]] = f"{int(validity)}.{int(uid)}"
            if len(names) == len(keys):
                break
            for key in keys:  # deleted since we looked: look (or make) again, once
                self._folders.pop((key, folder), None)
        else:
            raise psycopg.errors.SerializationFailure(f"folder {folder!r} keeps vanishing")
        return [names[_mailrows.mailbox_key(m)] for m in delivery.mailboxes]

    def _deliver_batch(
        self,
        cur: Cursor,
        results: list[list[str] | OSError | None],
        mine: list[PgDelivery],
        stored: dict[int, tuple[bytes, int]],
    ) -> bool:
        """The rows of every stored delivery of a batch under one savepoint, their
        folders locked first all at once in ascending id; False (and nothing done) when
        the database refused any of it, so that each goes on its own.

        Each `_DELIVER` locks its own folders in that order, but a batch runs them one
        delivery after another, so two batches (of one node or two) with folders in
        common could each hold one the other wants next: a deadlock, which PostgreSQL
        breaks after a second by failing a whole batch (pg_bench.py --mailboxes 2 on one
        node). One savepoint rather than one per delivery: k + 3 round trips while the
        folders are locked instead of 3k."""
        try:
            with cur.connection.transaction():
                ids: set[int] = set()
                for index in stored:
                    delivery = mine[index]
                    keys = list(dict.fromkeys(_mailrows.mailbox_key(m) for m in delivery.mailboxes))
                    ids.update(self._folder_ids(cur, keys, delivery.folder, fresh=False).values())
                cur.execute(
                    "SELECT id FROM mail_folders WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                    (sorted(ids),),
                )
                for index, (digest, size) in stored.items():
                    results[index] = self._deliver(cur, mine[index], digest, size)
        except psycopg.OperationalError:
            raise  # the connection is gone (or a deadlock): the whole batch with it
        except psycopg.Error:
            # A folder id remembered from the rolled-back part is found missing and
            # looked up again by `_deliver`.
            for index in stored:
                results[index] = None
            return False
        return True

    def _folder_ids(
        self, cur: Cursor, keys: list[str], folder: str, *, fresh: bool
    ) -> dict[str, int]:
        """Mailbox key -> id of its folder `folder`, made (and subscribed) if missing."""
        found: dict[str, int] = {}
        if not fresh:
            for key in keys:
                cached = self._folders.get((key, folder))
                if cached is not None:
                    found[key] = cached
        missing = [key for key in keys if key not in found]
        if missing:
            cur.execute(
                "SELECT mailbox, id FROM mail_folders WHERE name = %s AND mailbox = ANY(%s)",
                (folder, missing),
            )
            found.update((str(key), int(folder_id)) for key, folder_id in cur.fetchall())
            for key in missing:
                if key not in found:
                    found[key] = self._make_folder(cur, key, folder)
            if len(self._folders) >= _FOLDER_CACHE:
                self._folders.clear()
            for key in missing:
                self._folders[(key, folder)] = found[key]
        return found

    @staticmethod
    def _make_folder(cur: Cursor, key: str, folder: str) -> int:
        # Only once a lookup found none: an INSERT that conflicts still draws a
        # UIDVALIDITY from the sequence, which must not go by the message.
        folder_id = _mailrows.make_folder(
            cur, key, folder, special_use=DEFAULT_SPECIAL_USE.get(folder)
        )
        if folder != INBOX:
            cur.execute(
                "INSERT INTO mail_subscriptions (mailbox, name) VALUES (%s, %s)"
                " ON CONFLICT DO NOTHING",
                (key, folder),
            )
        return folder_id

    def _usage(self, mailbox: MailboxId) -> int:
        with self.db.transaction() as cur:
            cur.execute(
                "SELECT octets FROM mail_usage WHERE mailbox = %s",
                (_mailrows.mailbox_key(mailbox),),
            )
            row = cur.fetchone()
        return int(row[0]) if row else 0

    def _own(self, delivery: Delivery) -> PgDelivery:
        if not isinstance(delivery, PgDelivery) or delivery.store is not self:
            raise TypeError("a delivery can only be committed by the store that began it")
        return delivery


@contextlib.contextmanager
def _one(results: list[list[str] | OSError | None], index: int, *, alone: bool) -> Iterator[None]:
    """A failed statement of one delivery of a batch fails that delivery alone (its
    savepoint rolled back); a lost connection, or the only delivery, fails the batch."""
    try:
        yield
    except psycopg.OperationalError:
        raise  # the connection is gone: the whole batch with it
    except psycopg.Error as exc:
        if alone:
            raise
        results[index] = BackendUnavailableError(f"database: {first_line(exc)}")


@contextlib.contextmanager
def _savepoint(cur: Cursor, *, skip: bool) -> Iterator[None]:
    if skip:
        yield
        return
    with cur.connection.transaction():
        yield


class PgDelivery:
    """One message on its way into one or more mailboxes' rows (the `Delivery`
    protocol)."""

    def __init__(
        self, store: PgMailStore, mailboxes: list[MailboxId], prefix: bytes, folder: str
    ) -> None:
        self.store = store
        self.mailboxes = mailboxes
        self.folder = folder
        self._prefix = prefix
        self._spool = Spool(SPOOL_MEMORY)
        self._size = 0  # LF form, as the Maildir store counts
        self._last_cr = False  # the last chunk ended with a CR (a CRLF may straddle)
        self._done = False

    @property
    def size(self) -> int:
        return self._size

    @property
    def pending(self) -> int:
        return self._spool.pending

    def write(self, data: bytes) -> None:
        if self._done:
            raise RuntimeError("write after commit or abort")
        if not data:
            return
        crlf = data.count(b"\r\n") + (self._last_cr and data[:1] == b"\n")
        self._last_cr = data[-1:] == b"\r"
        self._size += len(data) - crlf
        self._spool.add(data)

    def flush(self) -> None:
        if self._done:
            raise RuntimeError("flush after commit or abort")
        self._spool.flush()

    def content(self) -> bytes:
        """Blocking: the message as it will be stored (see "Content")."""
        if self._done:
            raise RuntimeError("commit after commit or abort")
        return to_crlf(self._prefix + self._spool.read())

    def commit(self) -> list[str]:
        (result,) = self.store.commit_many([self])
        if isinstance(result, OSError):
            raise result
        return result

    def done(self) -> None:
        """Committed: let go of the buffers."""
        self.abort()

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._spool.close()
