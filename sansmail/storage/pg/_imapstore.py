"""`PgImapStore` and `PgMailAccount`: a user's IMAP folders in PostgreSQL rows.

Theory of operation
-------------------
The tables are `_schema_mail`'s; the steps every mailbox writer shares (a message and its
UID, expunge, usage, NOTIFY) are `_mailrows`'. Everything a session knows comes from the
rows, so any number of nodes serve the same account: a folder is a ``mail_folders`` row
(INBOX included, made at the first open), a message a ``mail_messages`` row pointing at
its content, stored once however many folders hold it.

The folder rules are the Maildir store's (`sansmail.storage.maildir._imapaccount`), so
that a client sees no difference:

- names are normalised as there (`_imapnames.normalize`), INBOX in any case is INBOX;
- CREATE makes no parents: ``a/b`` alone shows ``a`` as a \\Noselect parent;
- DELETE INBOX is refused; DELETE of a folder removes it and its messages, its children
  stay; DELETE of a name that is only a parent is refused with HASCHILDREN;
  subscriptions are kept;
- RENAME moves the folder and its inferiors, and their subscriptions; RENAME INBOX
  moves INBOX's messages into a new folder and leaves INBOX empty;
- the first open of an account makes the special-use folders (RFC 6154) and subscribes
  them with INBOX (``mail_imap_accounts`` remembers that it happened).

Special use follows the name (the ``special_use`` mapping, as Dovecot's configuration
gives it); the ``special_use`` column is kept equal to it for other readers.

Every change notifies ``mail:<folder id>`` (`_mailrows.folder_key`) when it commits, so
that IDLE sessions on every node hear of it. A database failure leaves every method as
`StoreUnavailableError` (NO [UNAVAILABLE]); the session goes on.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Collection, Mapping

import psycopg.errors

from sansmail.mail.address import MailboxId
from sansmail.storage.maildir._imapaccount import DEFAULT_SPECIAL_USE
from sansmail.storage.maildir._imapbase import (
    SEPARATOR,
    STATUS_ITEMS,
    AppendResult,
    FolderExistsError,
    FolderHasChildrenError,
    FolderInfo,
    ImapStore,
    InvalidFolderNameError,
    MailAccount,
    NoSuchFolderError,
    NotAllowedError,
)
from sansmail.storage.maildir._imapmaildir import to_crlf
from sansmail.storage.maildir._imapnames import INBOX, disk_name, normalize, rename_names
from sansmail.storage.maildir._quota import OverQuotaError
from sansmail.storage.pg import _mailrows
from sansmail.storage.pg._db import Cursor, Database, DatabaseError, reading
from sansmail.storage.pg._imapsql import allocate_keywords, guarded, split_flags
from sansmail.storage.pg._imapview import PgFolderView

__all__ = ["PgImapStore", "PgMailAccount"]

_NAME_MAX = 255


class PgImapStore(ImapStore):
    """The `ImapStore` over the tables of `db` (see the module docstring).

    `hostname` names this node (kept for symmetry with the Maildir store, whose file
    names carry it); `clock` gives nanoseconds since the epoch (the INTERNALDATE of an
    APPEND without one); `quota` each mailbox's storage limit in octets (0: none)."""

    def __init__(
        self,
        db: Database,
        *,
        hostname: str,
        quota: Callable[[MailboxId], int] | None = None,
        special_use: Mapping[str, str] = DEFAULT_SPECIAL_USE,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.db = db
        self.hostname = hostname
        self._quota = quota
        self._special_use = dict(special_use)
        self._clock = clock

    @guarded
    def account(self, mailbox: MailboxId) -> PgMailAccount:
        return PgMailAccount(
            self.db,
            _mailrows.mailbox_key(mailbox),
            special_use=self._special_use,
            quota=self._quota(mailbox) if self._quota is not None else 0,
            clock=self._clock,
        )


class PgMailAccount(MailAccount):
    """One user's folders; see the module docstring. INBOX is made when missing, and the
    special-use folders at the account's first opening."""

    def __init__(
        self,
        db: Database,
        mailbox: str,
        *,
        special_use: Mapping[str, str] = DEFAULT_SPECIAL_USE,
        quota: int = 0,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.db = db
        #: The ``mailbox`` column's value: "local@domain".
        self.mailbox = mailbox
        #: The storage limit in octets, 0 for none.
        self.quota_limit = quota
        self._special_use = dict(special_use)
        self._clock = clock
        with db.transaction() as cur:
            cur.execute(
                "INSERT INTO mail_imap_accounts (mailbox) VALUES (%s)"
                " ON CONFLICT DO NOTHING RETURNING mailbox",
                (mailbox,),
            )
            first = cur.fetchone() is not None
            if first or _mailrows.find_folder(cur, mailbox, INBOX) is None:
                _mailrows.make_folder(cur, mailbox, INBOX)
            if first:
                for name, use in self._special_use.items():
                    _mailrows.make_folder(cur, mailbox, normalize(name), special_use=use)
                cur.executemany(
                    "INSERT INTO mail_subscriptions (mailbox, name) VALUES (%s, %s)"
                    " ON CONFLICT DO NOTHING",
                    [(mailbox, normalize(n)) for n in [INBOX, *self._special_use]],
                )

    # -- folders ----------------------------------------------------------------------

    def folder_id(self, cur: Cursor, name: str) -> int:
        """The id of existing folder `name` (`NoSuchFolderError` otherwise)."""
        found = _mailrows.find_folder(cur, self.mailbox, name)
        if found is None:
            raise NoSuchFolderError(f"no folder {name!r}")
        return found

    @guarded
    def list_folders(self) -> list[FolderInfo]:
        with reading(self.db) as cur:
            cur.execute(
                "SELECT name, true FROM mail_folders WHERE mailbox = %s"
                " UNION ALL SELECT name, false FROM mail_subscriptions WHERE mailbox = %s",
                (self.mailbox, self.mailbox),
            )
            rows = cur.fetchall()
        existing = {INBOX} | {name for name, folder in rows if folder}
        subscribed = {name for name, folder in rows if not folder}
        parents: set[str] = set()
        for name in existing:
            levels = name.split(SEPARATOR)
            for depth in range(1, len(levels)):
                parents.add(SEPARATOR.join(levels[:depth]))
        out = [
            FolderInfo(
                name=name,
                exists=name in existing,
                has_children=name in parents,
                subscribed=name in subscribed,
                special_use=self._special_use.get(name) if name in existing else None,
            )
            for name in existing | parents | subscribed
        ]
        out.sort(key=lambda info: (info.name != INBOX, info.name))
        return out

    @guarded
    def create(self, name: str) -> None:
        name = normalize(name, trailing_separator=True)
        if name == INBOX:
            raise FolderExistsError("INBOX always exists")
        with self.db.transaction() as cur:
            cur.execute(
                "INSERT INTO mail_folders (mailbox, name, special_use) VALUES (%s, %s, %s)"
                " ON CONFLICT (mailbox, name) DO NOTHING RETURNING id",
                (self.mailbox, name, self._special_use.get(name)),
            )
            if cur.fetchone() is None:
                raise FolderExistsError(f"{name!r} exists")

    @guarded
    def delete(self, name: str) -> None:
        name = normalize(name)
        if name == INBOX:
            raise NotAllowedError("INBOX cannot be deleted")
        with self.db.transaction() as cur:
            # Looked up and locked in one statement: after waiting for another
            # session's RENAME of the row, PostgreSQL tests the name again, so the folder
            # deleted is the one of that name, never the one it was renamed to.
            cur.execute(
                "SELECT id FROM mail_folders WHERE mailbox = %s AND name = %s FOR UPDATE",
                (self.mailbox, name),
            )
            row = cur.fetchone()
            if row is None:
                cur.execute(
                    "SELECT 1 FROM mail_folders WHERE mailbox = %s AND starts_with(name, %s)"
                    " LIMIT 1",
                    (self.mailbox, name + SEPARATOR),
                )
                if cur.fetchone() is not None:
                    raise FolderHasChildrenError(f"{name!r} has children; delete them first")
                raise NoSuchFolderError(f"no folder {name!r}")
            folder = int(row[0])
            cur.execute(
                "DELETE FROM mail_messages WHERE folder_id = %s RETURNING digest, size",
                (folder,),
            )
            gone = cur.fetchall()
            cur.execute("DELETE FROM mail_folders WHERE id = %s", (folder,))
            if gone:
                _mailrows.count_usage(
                    cur, self.mailbox, -sum(int(size) for _d, size in gone), -len(gone)
                )
                _mailrows.collect_contents(cur, {bytes(digest) for digest, _size in gone})
            # Views of it learn at their next sync that it is gone.
            _mailrows.notify(cur, _mailrows.folder_key(folder))

    @guarded
    def rename(self, old: str, new: str) -> None:
        old, new = rename_names(old, new)
        if old == INBOX:
            self._rename_inbox(new)  # only the messages move (RFC 9051 §6.3.6)
            return
        try:
            self._rename(old, new)
        except DatabaseError as exc:
            # A target another session made after the clash test below (its row not
            # yet committed then) is the same answer as one found by it.
            if isinstance(exc.__cause__, psycopg.errors.UniqueViolation):
                raise FolderExistsError(f"{new!r} or a folder below it exists") from None
            raise

    def _rename(self, old: str, new: str) -> None:
        with self.db.transaction() as cur:
            cur.execute(
                "SELECT id, name FROM mail_folders WHERE mailbox = %s"
                " AND (name = %s OR starts_with(name, %s)) ORDER BY id FOR UPDATE",
                (self.mailbox, old, old + SEPARATOR),
            )
            moving = [(int(fid), str(name)) for fid, name in cur.fetchall()]
            if not moving:
                raise NoSuchFolderError(f"no folder {old!r}")
            moves = [(fid, new + name[len(old) :]) for fid, name in moving]
            for _fid, target in moves:
                if len(disk_name(target).encode()) > _NAME_MAX:
                    raise InvalidFolderNameError("folder name too long")
            cur.execute(
                "SELECT name FROM mail_folders WHERE mailbox = %s AND name = ANY(%s) LIMIT 1",
                (self.mailbox, [target for _fid, target in moves]),
            )
            clash = cur.fetchone()
            if clash is not None:
                raise FolderExistsError(f"{clash[0]!r} exists")
            cur.execute(
                "UPDATE mail_folders AS f SET name = v.name, special_use = v.use"
                " FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS v(id, name, use)"
                " WHERE f.id = v.id",
                (
                    [fid for fid, _t in moves],
                    [target for _fid, target in moves],
                    [self._special_use.get(target) for _fid, target in moves],
                ),
            )
            cur.execute(
                "SELECT name FROM mail_subscriptions WHERE mailbox = %s"
                " AND (name = %s OR starts_with(name, %s))",
                (self.mailbox, old, old + SEPARATOR),
            )
            subscribed = [str(name) for (name,) in cur.fetchall()]
            if subscribed:
                cur.execute(
                    "DELETE FROM mail_subscriptions WHERE mailbox = %s AND name = ANY(%s)",
                    (self.mailbox, subscribed),
                )
                cur.executemany(
                    "INSERT INTO mail_subscriptions (mailbox, name) VALUES (%s, %s)"
                    " ON CONFLICT DO NOTHING",
                    [(self.mailbox, new + name[len(old) :]) for name in subscribed],
                )
            for fid, _target in moves:
                # Its views learn at their next sync that their name is gone.
                _mailrows.notify(cur, _mailrows.folder_key(fid))

    def _rename_inbox(self, new: str) -> None:
        self.create(new)
        view = self.select(INBOX)
        try:
            view.move(list(view.uids), new)
            view.sync()
        finally:
            view.close()

    # -- subscriptions ----------------------------------------------------------------

    @guarded
    def subscribe(self, name: str) -> None:
        with self.db.transaction() as cur:
            cur.execute(
                "INSERT INTO mail_subscriptions (mailbox, name) VALUES (%s, %s)"
                " ON CONFLICT DO NOTHING",
                (self.mailbox, normalize(name)),
            )

    @guarded
    def unsubscribe(self, name: str) -> None:
        with self.db.transaction() as cur:
            cur.execute(
                "DELETE FROM mail_subscriptions WHERE mailbox = %s AND name = %s",
                (self.mailbox, normalize(name)),
            )

    # -- messages ---------------------------------------------------------------------

    @guarded
    def status(self, name: str, items: Collection[str]) -> dict[str, int]:
        unknown = set(items) - STATUS_ITEMS
        if unknown:
            raise ValueError(f"unknown STATUS items {sorted(unknown)}")
        name = normalize(name)
        with reading(self.db) as cur:
            cur.execute(
                "SELECT f.uidnext, f.uidvalidity, f.highestmodseq, count(m.uid),"
                " coalesce(sum(m.size), 0),"
                " count(m.uid) FILTER (WHERE NOT '\\Seen' = ANY(m.flags)),"
                " count(m.uid) FILTER (WHERE '\\Deleted' = ANY(m.flags)),"
                " count(m.uid) FILTER (WHERE m.uid >= f.recent_uid)"
                " FROM mail_folders f LEFT JOIN mail_messages m ON m.folder_id = f.id"
                " WHERE f.mailbox = %s AND f.name = %s GROUP BY f.id",
                (self.mailbox, name),
            )
            row = cur.fetchone()
        if row is None:
            raise NoSuchFolderError(f"no folder {name!r}")
        uidnext, uidvalidity, modseq, count, size, unseen, deleted, recent = (int(v) for v in row)
        values = {
            "MESSAGES": count,
            "UIDNEXT": uidnext,
            "UIDVALIDITY": uidvalidity,
            "UNSEEN": unseen,
            "DELETED": deleted,
            "SIZE": size,
            "RECENT": recent,
            "HIGHESTMODSEQ": modseq,
        }
        return {item: values[item] for item in items}

    @guarded
    def select(self, name: str, *, readonly: bool = False) -> PgFolderView:
        name = normalize(name)
        with reading(self.db) as cur:
            folder = self.folder_id(cur, name)
        return PgFolderView(self, name, folder, readonly=readonly)

    @guarded
    def storage(self) -> tuple[int, int] | None:
        if not self.quota_limit:
            return None
        return self._used(), self.quota_limit

    @guarded
    def check_quota(self, octets: int) -> None:
        if self.quota_limit and self._used() + octets > self.quota_limit:
            raise OverQuotaError("the mailbox would be over its storage quota")

    def _used(self) -> int:
        with reading(self.db) as cur:
            cur.execute("SELECT octets FROM mail_usage WHERE mailbox = %s", (self.mailbox,))
            row = cur.fetchone()
        return int(row[0]) if row else 0

    @guarded
    def append(
        self,
        name: str,
        content: bytes,
        flags: Collection[str] = (),
        internaldate: datetime.datetime | None = None,
    ) -> AppendResult:
        system, keywords = split_flags(flags)
        data = to_crlf(content)
        self.check_quota(len(data))
        if internaldate is None:
            # Whole seconds, as a file's mtime gives the Maildir store.
            internaldate = datetime.datetime.fromtimestamp(self._clock() // 10**9, datetime.UTC)
        elif internaldate.utcoffset() is None:
            internaldate = internaldate.replace(tzinfo=datetime.UTC)
        with self.db.transaction() as cur:
            digest = _mailrows.store_content(cur, data)
            folder = self.folder_id(cur, normalize(name))
            spelled: Collection[str] = ()
            if keywords:
                locked = _mailrows.lock_folders(cur, [folder])
                table = locked[folder][3]
                mapping, updated = allocate_keywords(table, keywords)
                spelled = mapping.values()
                if updated is not None:
                    cur.execute(
                        "UPDATE mail_folders SET keywords = %s WHERE id = %s", (updated, folder)
                    )
            try:
                added = _mailrows.add_message(
                    cur,
                    folder,
                    self.mailbox,
                    digest,
                    len(data),
                    flags=[*system, *spelled],
                    internaldate=internaldate,
                )
            except LookupError:
                # Deleted by another session between the look-up and the UID.
                raise NoSuchFolderError(f"no folder {name!r}") from None
        return AppendResult(added.uidvalidity, added.uid)

    def release(self) -> None:
        # Every operation gives its connection back when it ends: nothing is held.
        pass

    def close(self) -> None:
        pass
