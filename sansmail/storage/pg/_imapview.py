"""`PgFolderView`: one session's view of one folder, over the ``mail_*`` rows.

Theory of operation
-------------------
The view holds the message list as last reported to the client (UIDs ascending, so
``messages[i]`` is sequence number i+1), the folder's HIGHESTMODSEQ it reflects, and the
UIDs it claimed as \\Recent. Every change of a folder (a message added, flags stored,
an expunge) takes the folder row's lock and a new mod-sequence from it, in the
transaction that makes the change, so:

- a `sync` that finds nothing changed is one query by primary key (the folder row,
  joined to the rows changed since the view's mod-sequence, of which there are none);
- what changed is the rows whose mod-sequence is above the view's, and the tombstones
  (``mail_expunged``) likewise. The folder row and the changed rows are read in one
  statement, so they are one snapshot; the tombstones are read up to that snapshot's
  HIGHESTMODSEQ, all of whose changes had committed when it was read.

\\Recent: the folder's ``recent_uid`` is the first UID no session has claimed; a
read-write view that sees UIDs at or above it moves it to UIDNEXT (under the row lock,
so two sessions never both claim a message) and reports those it listed as recent.

A view of a folder that was deleted, renamed or made anew (another id or UIDVALIDITY)
is gone (`FolderGoneError`, or a sync saying `uidvalidity_changed`).

Operations never edit the list behind the client's back (RFC 9051 §7.5.1): EXPUNGE and
MOVE change the rows, and the next `sync` reports the result. STORE's new flags are
taken as reported (the session sends them in its FETCH replies), so the view puts them
in its list at once, and a sync reports a row only if it differs from that.
"""

from __future__ import annotations

import bisect
import datetime
import io
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO, Final, Protocol

from sansmail.storage.maildir._imapbase import (
    AppendResult,
    CopyResult,
    ExpungeIssuedError,
    FlagMode,
    FolderGoneError,
    FolderView,
    ImapMessage,
    NoSuchFolderError,
    ReadOnlyError,
    SearchData,
    StoreResult,
    Structures,
    SyncChanges,
)
from sansmail.storage.maildir._imapnames import normalize
from sansmail.storage.maildir._imapsearch import TEXT_SEPARATOR
from sansmail.storage.pg import _mailrows
from sansmail.storage.pg._db import Cursor, Database, DatabaseError, reading
from sansmail.storage.pg._imapsql import (
    KEYWORDS_MAX,
    allocate_keywords,
    canonical_keywords,
    flag_set,
    guarded,
    make_message,
    split_flags,
)

__all__ = ["Account", "PgFolderView"]


class Account(Protocol):
    """What a view needs of the account that opened it (`PgMailAccount`)."""

    db: Database
    mailbox: str

    def folder_id(self, cur: Cursor, name: str) -> int: ...

    def append(
        self,
        name: str,
        content: bytes,
        flags: Collection[str] = (),
        internaldate: datetime.datetime | None = None,
    ) -> AppendResult: ...


#: Messages read per query by `contents` (a FETCH of many bodies).
CONTENTS_BATCH: Final = 64
# The folder row and the rows changed since a mod-sequence, in one statement (one
# snapshot); one row with NULL message columns when none changed.
_CHANGED: Final = (
    "SELECT f.name, f.uidvalidity, f.uidnext, f.highestmodseq, f.recent_uid, f.keywords,"
    " m.uid, m.flags, m.internaldate, m.zone, m.size, m.modseq"
    " FROM mail_folders f LEFT JOIN mail_messages m"
    " ON m.folder_id = f.id AND m.modseq > %s WHERE f.id = %s ORDER BY m.uid"
)
# The test that this view's folder is still the one it opened, prefixed to reads: no
# row when it is not.
_CHECK: Final = (
    "SELECT q.* FROM mail_folders viewed LEFT JOIN LATERAL ({}) q ON true"
    " WHERE viewed.id = %(folder)s AND viewed.uidvalidity = %(view_validity)s"
    " AND viewed.name = %(view_name)s"
)


class PgFolderView(FolderView):
    """See the module docstring; made by `PgMailAccount.select`."""

    def __init__(self, account: Account, name: str, folder_id: int, *, readonly: bool) -> None:
        self._account = account
        self._db: Database = account.db
        self._name = name
        self._id = folder_id
        self._readonly = readonly
        self._uids: list[int] = []
        self._list: list[ImapMessage] = []
        self._recent: set[int] = set()
        self._dead = False
        # Keywords the folder is known to define, FLAGS not yet told (STORE made them).
        self._defined = 0
        with reading(self._db) as cur:
            cur.execute(
                "SELECT f.uidvalidity, f.uidnext, f.highestmodseq, f.recent_uid, f.keywords,"
                " m.uid, m.flags, m.internaldate, m.zone, m.size, m.modseq"
                " FROM mail_folders f LEFT JOIN mail_messages m ON m.folder_id = f.id"
                " WHERE f.id = %s ORDER BY m.uid",
                (folder_id,),
            )
            rows = cur.fetchall()
            if not rows:
                raise NoSuchFolderError(f"no folder {name!r}")
            validity, uidnext, modseq, recent_uid, keywords = rows[0][:5]
            self._uidvalidity = int(validity)
            self._uidnext = int(uidnext)
            self._modseq = int(modseq)
            self._keywords = tuple(keywords)
            self._list = [make_message(*row[5:10]) for row in rows if row[5] is not None]
            self._uids = [m.uid for m in self._list]
            if not readonly and recent_uid < uidnext:
                claimed = self._claim(cur)
                start = bisect.bisect_left(self._uids, claimed.start)
                self._recent = {uid for uid in self._uids[start:] if uid in claimed}

    # -- properties -------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def readonly(self) -> bool:
        return self._readonly

    @property
    def uidvalidity(self) -> int:
        return self._uidvalidity

    @property
    def uidnext(self) -> int:
        return self._uidnext

    @property
    def messages(self) -> Sequence[ImapMessage]:
        return self._list

    @property
    def uids(self) -> Sequence[int]:
        return self._uids

    @property
    def recent(self) -> frozenset[int]:
        return frozenset(self._recent)

    @property
    def highestmodseq(self) -> int:
        return self._modseq

    @property
    def keywords(self) -> tuple[str, ...]:
        return self._keywords

    @property
    def can_create_keywords(self) -> bool:
        return max(len(self._keywords), self._defined) < KEYWORDS_MAX

    @property
    def index_rebuilt(self) -> bool:
        return False

    @property
    def watch_paths(self) -> tuple[str, ...]:
        return ()

    @property
    def watch_keys(self) -> tuple[str, ...]:
        # Every change a sync can find notifies this key when it commits (`_mailrows`).
        return (_mailrows.folder_key(self._id),)

    @property
    def folder_id(self) -> int:
        return self._id

    # -- sync -------------------------------------------------------------------------

    @guarded
    def sync(self, *, listed_since: int | None = None) -> SyncChanges:
        if self._dead:
            return SyncChanges(exists=len(self._list), uidvalidity_changed=True)
        with reading(self._db) as cur:
            cur.execute(_CHANGED, (self._modseq, self._id))
            rows = cur.fetchall()
            if not rows or rows[0][0] != self._name or rows[0][1] != self._uidvalidity:
                self._dead = True
                return SyncChanges(exists=len(self._list), uidvalidity_changed=True)
            _name, _validity, uidnext, modseq, recent_uid, keywords = rows[0][:6]
            changed = [row[6:] for row in rows if row[6] is not None]
            gone: list[int] = []
            if modseq != self._modseq:
                cur.execute(
                    "SELECT uid FROM mail_expunged WHERE folder_id = %s"
                    " AND modseq > %s AND modseq <= %s",
                    (self._id, self._modseq, modseq),
                )
                gone = [int(uid) for (uid,) in cur.fetchall()]
            self._uidnext = int(uidnext)
            self._modseq = int(modseq)
            claimed = range(0)
            if not self._readonly and recent_uid < uidnext:
                claimed = self._claim(cur)
        return self._apply(changed, gone, claimed, tuple(keywords))

    def _claim(self, cur: Cursor) -> range:
        """Take the \\Recent UIDs below the view's UIDNEXT that no session has yet."""
        cur.execute(
            "UPDATE mail_folders f SET recent_uid = %s"
            " FROM (SELECT id, recent_uid FROM mail_folders WHERE id = %s FOR UPDATE) o"
            " WHERE f.id = o.id AND o.recent_uid < %s RETURNING o.recent_uid",
            (self._uidnext, self._id, self._uidnext),
        )
        row = cur.fetchone()
        return range(int(row[0]), self._uidnext) if row else range(0)

    def _apply(
        self,
        rows: list[Any],
        gone: Iterable[int],
        claimed: range,
        keywords: tuple[str, ...],
    ) -> SyncChanges:
        before_uids = self._uids
        before = self._list
        recent_before = len(self._recent)
        positions = sorted(
            pos for pos in (_position(before_uids, uid) for uid in set(gone)) if pos is not None
        )
        expunged_uids = tuple(before_uids[pos] for pos in positions)
        self._recent.difference_update(expunged_uids)
        gone_at = set(positions)
        last = before_uids[-1] if before_uids else 0
        added: list[ImapMessage] = []
        changed: list[tuple[int, int, frozenset[str]]] = []
        modseqs: dict[int, int] = {}
        reflagged: dict[int, ImapMessage] = {}
        for row in rows:
            info = make_message(*row[:5])
            if info.uid > last:
                added.append(info)
                modseqs[info.uid] = int(row[5])
                continue
            pos = _position(before_uids, info.uid)
            if pos is None or pos in gone_at:
                continue
            if before[pos].flags != info.flags:
                reflagged[pos] = info
                changed.append((pos, info.uid, info.flags))
                modseqs[info.uid] = int(row[5])
        if positions or reflagged or added:
            messages = list(before)
            for pos, info in reflagged.items():
                messages[pos] = info
            for pos in reversed(positions):
                del messages[pos]
            messages.extend(added)
            self._list = messages
            self._uids = [m.uid for m in messages]
        for info in added:
            if info.uid in claimed:
                self._recent.add(info.uid)
        changed.sort()
        new_keywords = None
        if keywords != self._keywords:
            self._keywords = new_keywords = keywords
        return SyncChanges(
            expunged=tuple(pos + 1 for pos in reversed(positions)),
            expunged_uids=expunged_uids,
            added=tuple(added),
            exists=len(self._list),
            recent=len(self._recent) if len(self._recent) != recent_before else None,
            flags=tuple(
                (pos + 1 - bisect.bisect_left(positions, pos), uid, flags)
                for pos, uid, flags in changed
            ),
            modseqs={uid: modseqs[uid] for _pos, uid, _flags in changed},
            keywords=new_keywords,
        )

    # -- reading ----------------------------------------------------------------------

    def _check(self, *, write: bool = False) -> None:
        if write and self._readonly:
            raise ReadOnlyError("the folder is open read-only")
        if self._dead:
            raise FolderGoneError("the folder was deleted, renamed or made anew")

    def _checked(self, cur: Cursor, query: str, params: Mapping[str, Any]) -> list[Any]:
        """The rows of `query` (a SELECT using ``%(folder)s`` and `params`), or
        `FolderGoneError` if this view's folder is not there any more; in one statement.
        A query that finds nothing gives no row."""
        self._check()
        cur.execute(
            _CHECK.format(query),
            {
                **params,
                "folder": self._id,
                "view_validity": self._uidvalidity,
                "view_name": self._name,
            },
            # Binary results: contents and structures come as they are, not as hex text
            # to decode (twice their size on the wire, and a pass over each in Python).
            binary=True,
        )
        rows = cur.fetchall()
        if not rows:
            self._dead = True
            raise FolderGoneError("the folder was deleted, renamed or made anew")
        return [row for row in rows if row[0] is not None]

    def _read_rows(self, query: str, **params: Any) -> list[Any]:
        with reading(self._db) as cur:
            return self._checked(cur, query, params)

    @guarded
    def read(self, uid: int) -> bytes | None:
        rows = self._read_rows(
            "SELECT m.uid, c.content FROM mail_messages m JOIN mail_contents c USING (digest)"
            " WHERE m.folder_id = %(folder)s AND m.uid = %(uid)s",
            uid=uid,
        )
        return rows[0][1] if rows else None  # psycopg gives bytea as bytes

    def open_content(self, uid: int) -> BinaryIO | None:
        data = self.read(uid)
        return None if data is None else io.BytesIO(data)

    def contents(self, uids: Iterable[int]) -> Iterator[tuple[int, bytes | None]]:
        wanted = list(uids)
        for start in range(0, len(wanted), CONTENTS_BATCH):
            batch = wanted[start : start + CONTENTS_BATCH]
            found = self._contents(batch)
            for uid in batch:
                yield uid, found.get(uid)

    @guarded
    def _contents(self, uids: list[int]) -> dict[int, bytes]:
        rows = self._read_rows(
            "SELECT m.uid, c.content FROM mail_messages m JOIN mail_contents c USING (digest)"
            " WHERE m.folder_id = %(folder)s AND m.uid IN (SELECT unnest(%(uids)s::bigint[]))",
            uids=uids,
        )
        return dict(rows)

    @guarded
    def get_cache(self, uid: int) -> bytes | None:
        rows = self._read_rows(
            "SELECT uid, cache FROM mail_messages WHERE folder_id = %(folder)s AND uid = %(uid)s",
            uid=uid,
        )
        return rows[0][1] if rows else None

    def set_cache(self, uid: int, blob: bytes) -> None:
        self.set_structures({uid: Structures(cache=blob)})

    @guarded
    def structures(self, uids: Iterable[int], *, cache: bool = False) -> dict[int, Structures]:
        blob = "cache" if cache else "NULL::bytea"
        rows = self._read_rows(
            f"SELECT uid, envelope, bodystructure, body, {blob} FROM mail_messages"  # noqa: S608
            " WHERE folder_id = %(folder)s AND uid IN (SELECT unnest(%(uids)s::bigint[]))",
            uids=sorted(set(uids)),
        )
        return {
            uid: Structures(envelope, bodystructure, body, blob)
            for uid, envelope, bodystructure, body, blob in rows
        }

    @guarded
    def set_structures(self, values: Mapping[int, Structures]) -> None:
        kept = {uid: s for uid, s in values.items() if s != Structures()}
        if not kept:
            return
        self._check()
        uids = sorted(kept)
        self._cache_write(
            lambda cur: cur.execute(
                "UPDATE mail_messages m SET envelope = coalesce(v.e, m.envelope),"
                " bodystructure = coalesce(v.bs, m.bodystructure),"
                " body = coalesce(v.b, m.body), cache = coalesce(v.c, m.cache)"
                " FROM unnest(%s::bigint[], %s::bytea[], %s::bytea[], %s::bytea[], %s::bytea[])"
                " AS v(uid, e, bs, b, c) WHERE m.folder_id = %s AND m.uid = v.uid",
                (
                    uids,
                    [kept[u].envelope for u in uids],
                    [kept[u].bodystructure for u in uids],
                    [kept[u].body for u in uids],
                    [kept[u].cache for u in uids],
                    self._id,
                ),
            )
        )

    def _cache_write(self, write: Callable[[Cursor], object]) -> None:
        """Run `write` in a transaction, for what is only a cache of the contents
        (structures, search data): one the database refuses (two sessions caching the
        same rows in another order, a deadlock PostgreSQL breaks; a lost connection) is
        given up, and worked out again next time, as the session gives it up on a full
        disk. A lost connection shows at the command's next read.

        The folder row is taken first (shared: cache writes do not wait for each
        other's), as every writer of the messages takes it before their rows: without
        it a cache write and a STORE or EXPUNGE locking the same rows in another order
        made a cycle, which PostgreSQL breaks by failing either, the user's command
        perhaps."""
        try:
            with self._db.transaction() as cur:
                cur.execute("SELECT 1 FROM mail_folders WHERE id = %s FOR SHARE", (self._id,))
                write(cur)
        except DatabaseError:
            return

    # -- search data ------------------------------------------------------------------

    @guarded
    def search_missing(self, uids: Iterable[int], *, texts: bool) -> list[int]:
        condition = "s.uid IS NULL OR s.bodies IS NULL" if texts else "s.uid IS NULL"
        rows = self._read_rows(
            "SELECT m.uid FROM mail_messages m LEFT JOIN mail_search s"  # noqa: S608
            " ON s.folder_id = m.folder_id AND s.uid = m.uid"
            " WHERE m.folder_id = %(folder)s AND m.uid IN (SELECT unnest(%(uids)s::bigint[]))"
            f" AND ({condition})"
            " ORDER BY m.uid",
            uids=sorted(set(uids)),
        )
        return [int(uid) for (uid,) in rows]

    @guarded
    def keep_search_data(self, values: Mapping[int, SearchData]) -> None:
        if not values:
            return
        self._check()
        self._cache_write(
            lambda cur: cur.executemany(
                "INSERT INTO mail_search (folder_id, uid, sent, names, vals, headers, bodies)"
                " SELECT %(folder)s, %(uid)s, %(sent)s, %(names)s, %(vals)s, %(headers)s,"
                " %(bodies)s WHERE EXISTS (SELECT 1 FROM mail_messages"
                "  WHERE folder_id = %(folder)s AND uid = %(uid)s FOR KEY SHARE)"
                " ON CONFLICT (folder_id, uid) DO UPDATE SET sent = EXCLUDED.sent,"
                " names = EXCLUDED.names, vals = EXCLUDED.vals,"
                " headers = coalesce(EXCLUDED.headers, mail_search.headers),"
                " bodies = coalesce(EXCLUDED.bodies, mail_search.bodies)",
                [
                    {
                        "folder": self._id,
                        "uid": uid,
                        "sent": data.sent,
                        "names": [_text(name) for name, _value in data.fields],
                        "vals": [_text(value) for _name, value in data.fields],
                        "headers": None if data.bodies is None else _column(data.headers or ()),
                        "bodies": None if data.bodies is None else _column(data.bodies),
                    }
                    for uid, data in sorted(values.items())
                ],
            )
        )

    @guarded
    def find_in_header(self, name: str, needle: str) -> set[int]:
        rows = self._read_rows(
            "SELECT s.uid FROM mail_search s WHERE s.folder_id = %(folder)s AND EXISTS ("
            " SELECT 1 FROM unnest(s.names, s.vals) AS f(n, v)"
            " WHERE f.n = %(name)s AND strpos(f.v, %(needle)s) > 0)",
            name=_text(name),
            needle=_text(needle),
        )
        return {int(uid) for (uid,) in rows}

    @guarded
    def search_fields(self, names: Iterable[str]) -> dict[int, dict[str, str]]:
        rows = self._read_rows(
            "SELECT s.uid, f.n, f.v FROM mail_search s,"
            " unnest(s.names, s.vals) WITH ORDINALITY AS f(n, v, i)"
            " WHERE s.folder_id = %(folder)s AND f.n = ANY(%(names)s) ORDER BY s.uid, f.i",
            names=sorted({_text(n) for n in names}),
        )
        out: dict[int, dict[str, str]] = {}
        for uid, name, value in rows:
            out.setdefault(int(uid), {}).setdefault(name, value)
        return out

    @guarded
    def find_in_texts(self, needle: str, *, bodies_only: bool) -> set[int] | None:
        if TEXT_SEPARATOR in needle or "\0" in needle or _text(needle) != needle:
            return None
        test = "{} <> ''" if not needle else "strpos({}, %(needle)s) > 0"
        columns = ["s.bodies"] if bodies_only else ["s.headers", "s.bodies"]
        where = " OR ".join(test.format(column) for column in columns)
        rows = self._read_rows(
            "SELECT s.uid FROM mail_search s WHERE s.folder_id = %(folder)s"  # noqa: S608
            f" AND s.bodies IS NOT NULL AND ({where})",
            needle=needle,
        )
        return {int(uid) for (uid,) in rows}

    @guarded
    def sent_days(self) -> dict[int, int]:
        rows = self._read_rows(
            "SELECT uid, sent FROM mail_search WHERE folder_id = %(folder)s AND sent IS NOT NULL"
        )
        return {int(uid): int(sent) for uid, sent in rows}

    # -- mod-sequences (RFC 7162) -----------------------------------------------------

    @guarded
    def flag_states(self, uids: Iterable[int]) -> dict[int, tuple[int, frozenset[str]]]:
        rows = self._read_rows(
            "SELECT uid, modseq, flags FROM mail_messages"
            " WHERE folder_id = %(folder)s AND uid IN (SELECT unnest(%(uids)s::bigint[]))",
            uids=sorted(set(uids)),
        )
        return {int(uid): (int(modseq), flag_set(flags)) for uid, modseq, flags in rows}

    @guarded
    def changed_since(self, modseq: int) -> dict[int, tuple[int, frozenset[str]]]:
        rows = self._read_rows(
            "SELECT uid, modseq, flags FROM mail_messages"
            " WHERE folder_id = %(folder)s AND modseq > %(modseq)s",
            modseq=modseq,
        )
        listed = self._uids
        return {
            int(uid): (int(changed), flag_set(flags))
            for uid, changed, flags in rows
            if _position(listed, int(uid)) is not None
        }

    @guarded
    def vanished_since(self, modseq: int, uids: Sequence[range]) -> list[int]:
        # Tombstones are kept for good, so the answer is always exact: those up to what
        # this view reported (later ones are still in its list and reach the client
        # with its next sync).
        rows = self._read_rows(
            "SELECT uid FROM mail_expunged WHERE folder_id = %(folder)s"
            " AND modseq > %(since)s AND modseq <= %(upto)s ORDER BY uid",
            since=modseq,
            upto=self._modseq,
        )
        return [int(uid) for (uid,) in rows if any(int(uid) in span for span in uids)]

    # -- flags ------------------------------------------------------------------------

    def store_flags(
        self, uids: Iterable[int], flags: Collection[str], mode: FlagMode
    ) -> dict[int, frozenset[str]]:
        return self.store(uids, flags, mode).flags

    @guarded
    def store(
        self,
        uids: Iterable[int],
        flags: Collection[str],
        mode: FlagMode,
        *,
        unchangedsince: int | None = None,
    ) -> StoreResult:
        self._check(write=True)
        system, keywords = split_flags(flags)
        wanted = self._known(uids)
        result: dict[int, frozenset[str]] = {}
        modseqs: dict[int, int] = {}
        modified: list[int] = []
        if not wanted:
            return StoreResult(result, modseqs, modified)
        with self._db.transaction() as cur:
            table = self._lock(cur)[3]
            if keywords and mode is not FlagMode.REMOVE:
                mapping, updated = allocate_keywords(table, keywords)
                spelled = frozenset(mapping.values())
                if updated is not None:
                    cur.execute(
                        "UPDATE mail_folders SET keywords = %s WHERE id = %s", (updated, self._id)
                    )
                    self._defined = len(updated)
            else:
                spelled = canonical_keywords(table, keywords)
            given = system | spelled
            cur.execute(
                "SELECT uid, flags, modseq FROM mail_messages"
                " WHERE folder_id = %s AND uid IN (SELECT unnest(%s::bigint[])) ORDER BY uid",
                (self._id, wanted),
            )
            rows = cur.fetchall()
            changes: list[tuple[int, frozenset[str]]] = []
            for row_uid, old_flags, old_modseq in rows:
                uid = int(row_uid)
                if unchangedsince is not None and old_modseq > unchangedsince:
                    # RFC 7162 §3.1.3: changed since the client looked; decided under
                    # the folder row's lock, so no change can come in between.
                    modified.append(uid)
                    continue
                old = flag_set(old_flags)
                if mode is FlagMode.ADD:
                    new = old | given
                elif mode is FlagMode.REMOVE:
                    new = old - given
                else:
                    new = given
                new = flag_set(sorted(new))
                if new != old:
                    changes.append((uid, new))
                else:
                    modseqs[uid] = int(old_modseq)
                result[uid] = new
            if changes:
                cur.execute(
                    "UPDATE mail_folders SET highestmodseq = highestmodseq + 1 WHERE id = %s"
                    " RETURNING highestmodseq",
                    (self._id,),
                )
                row = cur.fetchone()
                assert row is not None  # locked above
                modseq = int(row[0])
                cur.execute(
                    "UPDATE mail_messages m SET flags = string_to_array(v.f, ' '), modseq = %s"
                    " FROM unnest(%s::bigint[], %s::text[]) AS v(uid, f)"
                    " WHERE m.folder_id = %s AND m.uid = v.uid",
                    (
                        modseq,
                        [uid for uid, _f in changes],
                        [" ".join(sorted(f)) for _uid, f in changes],
                        self._id,
                    ),
                )
                modseqs.update((uid, modseq) for uid, _f in changes)
                _mailrows.notify(cur, _mailrows.folder_key(self._id))
        # Taken as reported: the session sends these flags in its FETCH replies.
        if result:
            messages = list(self._list)
            for uid, new in result.items():
                pos = _position(self._uids, uid)
                if pos is not None and messages[pos].flags != new:
                    old_message = messages[pos]
                    messages[pos] = ImapMessage(
                        uid=uid,
                        flags=new,
                        internaldate=old_message.internaldate,
                        size=old_message.size,
                    )
            self._list = messages
        return StoreResult(result, modseqs, modified)

    def _lock(self, cur: Cursor) -> tuple[int, int, int, list[str]]:
        """Lock this view's folder row; `FolderGoneError` if it is not the one opened."""
        locked = _mailrows.lock_folders(cur, [self._id]).get(self._id)
        if locked is None or locked[0] != self._uidvalidity:
            self._dead = True
            raise FolderGoneError("the folder was deleted or made anew")
        return locked

    def _known(self, uids: Iterable[int]) -> list[int]:
        # Only messages the client has been told about can be acted on: their responses
        # need sequence numbers.
        return sorted(uid for uid in set(uids) if _position(self._uids, uid) is not None)

    # -- expunge ----------------------------------------------------------------------

    @guarded
    def expunge(self, uids: Iterable[int] | None = None) -> list[int]:
        self._check(write=True)
        scope = list(self._uids) if uids is None else self._known(uids)
        if not scope:
            return []
        with self._db.transaction() as cur:
            self._lock(cur)
            cur.execute(
                "SELECT uid FROM mail_messages WHERE folder_id = %s"
                " AND uid IN (SELECT unnest(%s::bigint[])) AND '\\Deleted' = ANY(flags)",
                (self._id, scope),
            )
            deleted = [int(uid) for (uid,) in cur.fetchall()]
            return _mailrows.remove_messages(cur, self._id, self._account.mailbox, deleted)

    # -- append, copy, move -----------------------------------------------------------

    def append(
        self,
        content: bytes,
        flags: Collection[str] = (),
        internaldate: datetime.datetime | None = None,
    ) -> AppendResult:
        self._check(write=True)
        return self._account.append(self._name, content, flags, internaldate)

    @guarded
    def copy(self, uids: Iterable[int], dest: str) -> CopyResult:
        self._check()
        return self._transfer(self._known(uids), dest, move=False)

    @guarded
    def move(self, uids: Iterable[int], dest: str) -> CopyResult:
        self._check(write=True)
        return self._transfer(self._known(uids), dest, move=True)

    def _transfer(self, uids: list[int], dest: str, *, move: bool) -> CopyResult:
        """COPY or MOVE `uids` (ascending) into folder `dest`, in one transaction: all
        or nothing, the destination's UIDs in source order, the content rows shared."""
        mailbox = self._account.mailbox
        with self._db.transaction() as cur:
            target = self._account.folder_id(cur, normalize(dest))
            locked = _mailrows.lock_folders(cur, [self._id, target])
            source_row = locked.get(self._id)
            if source_row is None or source_row[0] != self._uidvalidity:
                self._dead = True
                raise FolderGoneError("the folder was deleted or made anew")
            target_row = locked.get(target)
            if target_row is None:
                raise NoSuchFolderError(f"no folder {dest!r}")
            if not uids:
                return CopyResult(target_row[0], [])
            cur.execute(
                "SELECT uid, flags, size FROM mail_messages"
                " WHERE folder_id = %s AND uid IN (SELECT unnest(%s::bigint[])) ORDER BY uid",
                (self._id, uids),
            )
            rows = cur.fetchall()
            found = {int(uid) for uid, _f, _s in rows}
            gone = [uid for uid in uids if uid not in found]
            if gone:
                raise ExpungeIssuedError("some of the messages were expunged", gone)
            needed = {f for _uid, flags, _s in rows for f in flags if not f.startswith("\\")}
            spelled: dict[str, str] = {}
            if needed:
                spelled, updated = allocate_keywords(target_row[3], needed)
                if updated is not None:
                    cur.execute(
                        "UPDATE mail_folders SET keywords = %s WHERE id = %s", (updated, target)
                    )
            count = len(rows)
            cur.execute(
                "UPDATE mail_folders SET uidnext = uidnext + %s,"
                " highestmodseq = highestmodseq + 1 WHERE id = %s"
                " RETURNING uidvalidity, uidnext - %s, highestmodseq",
                (count, target, count),
            )
            row = cur.fetchone()
            assert row is not None  # locked above
            uidvalidity, first, modseq = (int(v) for v in row)
            sources = [int(uid) for uid, _f, _s in rows]
            targets = list(range(first, first + count))
            cur.execute(
                "INSERT INTO mail_messages (folder_id, uid, digest, size, internaldate, zone,"
                " flags, modseq, envelope, bodystructure, body, cache)"
                " SELECT %s, v.dst, m.digest, m.size, m.internaldate, m.zone,"
                " string_to_array(v.f, ' '), %s, m.envelope, m.bodystructure, m.body, m.cache"
                " FROM unnest(%s::bigint[], %s::bigint[], %s::text[]) AS v(src, dst, f)"
                " JOIN mail_messages m ON m.folder_id = %s AND m.uid = v.src",
                (
                    target,
                    modseq,
                    sources,
                    targets,
                    [
                        " ".join(sorted(spelled.get(f, f) for f in flags))
                        for _uid, flags, _size in rows
                    ],
                    self._id,
                ),
            )
            _mailrows.count_usage(cur, mailbox, sum(int(size) for _u, _f, size in rows), count)
            _mailrows.notify(cur, _mailrows.folder_key(target))
            if move:
                _mailrows.remove_messages(cur, self._id, mailbox, sources)
        return CopyResult(uidvalidity, list(zip(sources, targets, strict=True)))

    def close(self) -> None:
        self._dead = True
        self._list = []
        self._uids = []
        self._recent = set()


def _position(uids: Sequence[int], uid: int) -> int | None:
    pos = bisect.bisect_left(uids, uid)
    return pos if pos < len(uids) and uids[pos] == uid else None


def _text(value: str) -> str:
    # PostgreSQL text holds no NUL, nor a lone surrogate (a header's undecodable
    # octets): the same stand-ins for a value and for a needle keep matching exact
    # for every needle a client can send.
    if "\0" in value:
        value = value.replace("\0", TEXT_SEPARATOR)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def _column(entries: Iterable[str]) -> str:
    # Each entry after a separator no needle answered here holds: a needle is in some
    # entry exactly when it is in the column (as `_imapsearch` keeps them).
    return "".join(TEXT_SEPARATOR + _text(entry) for entry in entries)
