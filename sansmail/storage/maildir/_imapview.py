"""`MaildirFolderView`: one session's view of one folder, over a `FolderIndex`.

Theory of operation
-------------------
The view holds the message list as last reported to the client (UIDs ascending, so
``messages[i]`` is sequence number i+1), the modseq it reflects, the flags STORE reported
since, and the UIDs it claimed as \\Recent. `sync` refreshes the index from the Maildir
(`FolderIndex.refresh`), then reads only rows and tombstones newer than the view's modseq
and turns them into EXPUNGE sequence numbers (highest first, so each number is valid
when it is sent), new messages (always above every UID the view has: UIDs are assigned
in increasing order under the index's write lock) and flag changes.

The list is a `FolderList`, which every view of the process that reached the same modseq
shares (`_imaplist`): after a sync, a view's list is the index's table at the modseq it
read, so one copy serves them all, and what a session keeps of its own is that modseq,
its \\Recent UIDs and the flags its STOREs reported since its last sync (`_flags`,
folded in at the next one). A SELECT takes the process's list when it is current and
reads the table only when it is not; a sync that finds changes derives the next list
from the changes, or takes the one another session derived.

Operations never edit the list behind the client's back (RFC 9051 §7.5.1: sequence
numbers change only with EXPUNGE responses): EXPUNGE and MOVE change the index, and the
next `sync` reports the result. STORE's new flags are taken as reported, because the
session sends them in its FETCH replies (or was asked not to, with .SILENT).

Changing files, always under the folder's write lock (``BEGIN IMMEDIATE``) so that sessions
and processes take turns:

- STORE renames ``cur/<base>:2,<old>`` to ``cur/<base>:2,<new>`` first, then updates the
  row. A file renamed by another tool meanwhile is found again by its base; one that is
  gone is left out of the result (its EXPUNGE follows at the next sync).
- EXPUNGE unlinks, fsyncs the directory, then deletes the rows: a crash in between leaves
  rows whose files are gone, which the next sync expunges.
- COPY and MOVE: see `_imapcopy`.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime
import functools
import io
import os
import sqlite3
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO, Concatenate, Final, ParamSpec, Protocol, TypeVar, overload

import attrs

from sansmail.storage.durable import fsync_dir, unlink_quietly
from sansmail.storage.maildir import _imapsearch
from sansmail.storage.maildir._imapbase import (
    AppendResult,
    CopyResult,
    FlagMode,
    FolderGoneError,
    FolderView,
    ImapMessage,
    ReadOnlyError,
    SearchData,
    StoreResult,
    Structures,
    SyncChanges,
)
from sansmail.storage.maildir._imapcopy import transfer
from sansmail.storage.maildir._imapindex import FolderIndex, is_corrupt, is_unwritable
from sansmail.storage.maildir._imaplist import (
    INFO_COLUMNS,
    FolderList,
    flag_set,
    make_info,
    share,
    shared,
)
from sansmail.storage.maildir._imapmaildir import (
    DELETED,
    CrlfReader,
    Namer,
    bits_of,
    flags_of,
    info_letters,
    parse_info,
    split_name,
    to_crlf,
)

__all__ = ["Account", "MaildirFolderView"]


class Account(Protocol):
    """What a view needs of the account that opened it (`MaildirAccount`): the other
    folders' indexes for COPY and MOVE, the file namer, and APPEND into its folder."""

    namer: Namer

    def index_for(self, name: str) -> FolderIndex: ...

    def append(
        self,
        name: str,
        content: bytes,
        flags: Collection[str] = (),
        internaldate: datetime.datetime | None = None,
    ) -> AppendResult: ...


_UIDVALIDITY: Final = "SELECT uidvalidity FROM folder"
# What a sync reads of a changed row: an `ImapMessage`'s columns, and its mod-sequence.
_CHANGED_COLUMNS: Final = f"{INFO_COLUMNS}, modseq"
# The folder row always exists, so these give one row even when the message has none.
_CHECKED_NAME: Final = "SELECT uidvalidity, (SELECT name FROM messages WHERE uid = ?) FROM folder"
_CHECKED_CACHE: Final = (
    "SELECT uidvalidity, (SELECT cache FROM structures WHERE uid = ?) FROM folder"
)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _guarded(
    method: Callable[Concatenate[MaildirFolderView, _P], _R],
) -> Callable[Concatenate[MaildirFolderView, _P], _R]:
    """Turn a damaged index met mid-operation into a rebuild and `FolderGoneError`: the
    view's UIDs belong to the old UIDVALIDITY."""

    def guarded(self: MaildirFolderView, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise
            self._lost(exc)
            raise FolderGoneError("the folder's index was damaged and is rebuilt") from exc

    functools.update_wrapper(guarded, method)
    return guarded


class _Relister:
    """Finds files by base name, listing the folder at most once per operation."""

    def __init__(self, index: FolderIndex) -> None:
        self._index = index
        self._listing: dict[str, str] | None = None

    def find(self, base: str) -> str | None:
        if self._listing is None:
            self._listing = self._index.scan()
        return self._listing.get(base)


class MaildirFolderView(FolderView):
    """See the module docstring; made by `MaildirAccount.select`."""

    def __init__(self, account: Account, name: str, index: FolderIndex, *, readonly: bool) -> None:
        self._account = account
        self._name = name
        self._index = index
        self._readonly = readonly
        self._list = FolderList.empty()
        # UID -> the flags a STORE reported since the last sync: the list is shared, and
        # changes only at a sync (see the module docstring).
        self._flags: dict[int, frozenset[str]] = {}
        self._recent: set[int] = set()
        self._modseq = 0
        self._dead = False
        index.refresh(move_new=not readonly)
        self._index_rebuilt = index.rebuilt
        index.rebuilt = False
        header = index.header()
        self._uidvalidity = header.uidvalidity
        self._uidnext = header.uidnext
        self._keywords = self._keyword_names()
        self._catch_up_or_read(first=True)

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
        if self._flags:
            return _Reflagged(self._list, dict(self._flags))
        return self._list

    @property
    def uids(self) -> Sequence[int]:
        return self._list.uids

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
        return None in self._index.keywords()

    @property
    def index_rebuilt(self) -> bool:
        return self._index_rebuilt

    @property
    def watch_paths(self) -> tuple[str, ...]:
        # Every change a sync can find is a file created, renamed or unlinked in new/ or
        # cur/, by sansmail or another tool: deliveries, APPEND, COPY and MOVE, STORE's
        # renames, EXPUNGE, POP3's DELE.
        folder = self._index.folder
        return (os.path.join(folder, "new"), os.path.join(folder, "cur"))

    # -- sync -------------------------------------------------------------------------

    def sync(self, *, listed_since: int | None = None) -> SyncChanges:
        if self._dead:
            return SyncChanges(exists=len(self._list), uidvalidity_changed=True)
        try:
            self._index.refresh(move_new=not self._readonly, listed_since=listed_since)
            return self._catch_up_or_read()
        except FolderGoneError:
            self._dead = True
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise
            self._lost(exc)
        return SyncChanges(exists=len(self._list), uidvalidity_changed=True)

    def _lost(self, exc: sqlite3.DatabaseError) -> None:
        self._dead = True
        self._index.rebuild(exc)

    def _catch_up_or_read(self, *, first: bool = False) -> SyncChanges:
        try:
            return self._catch_up(first=first)
        except sqlite3.OperationalError as exc:
            # A full disk refused the claim of \Recent (nothing was applied): the view
            # reads as a read-only one would, and claims them at a later sync.
            if not is_unwritable(exc):
                raise
            return self._catch_up(first=first, claim=False)

    def _catch_up(self, *, first: bool = False, claim: bool = True) -> SyncChanges:
        """Read what changed since the view's last report (everything, when `first`:
        then no news is made of it, the SELECT being the report)."""
        index = self._index
        header = index.header()
        claim = claim and not self._readonly and header.recent_uid < header.uidnext
        keywords = self._keyword_names()
        if header.uidvalidity == self._uidvalidity and header.highestmodseq == self._modseq:
            if not claim:
                return self._changes(keywords=keywords)
        with index.write() if claim else index.read() as conn:
            header = index.header(conn)
            if header.uidvalidity != self._uidvalidity:
                self._dead = True
                return SyncChanges(exists=len(self._list), uidvalidity_changed=True)
            key = index.db_path
            latest = shared(key, header.uidvalidity, header.highestmodseq)
            rows: list[Any] = []
            gone: list[int] = []
            if first:
                if latest is None:
                    made = FolderList.read(conn, header.uidvalidity, header.highestmodseq)
                    latest = share(key, made)
            elif self._modseq < header.expunge_floor:
                rows = conn.execute(f"SELECT {_CHANGED_COLUMNS} FROM messages").fetchall()  # noqa: S608
                present = {row[0] for row in rows}
                gone = [uid for uid in self._list.uids if uid not in present]
            elif header.highestmodseq != self._modseq:
                rows = conn.execute(
                    f"SELECT {_CHANGED_COLUMNS} FROM messages WHERE modseq > ?",  # noqa: S608
                    (self._modseq,),
                ).fetchall()
                gone = [
                    uid
                    for (uid,) in conn.execute(
                        "SELECT uid FROM expunged WHERE modseq > ?", (self._modseq,)
                    )
                ]
            claimed = range(header.recent_uid, header.uidnext) if claim else range(0)
            if claim:
                conn.execute("UPDATE folder SET recent_uid = ?", (header.uidnext,))
        self._modseq = header.highestmodseq
        self._uidnext = header.uidnext
        if first:
            assert latest is not None
            self._list = latest
            if claimed:
                uids = latest.uids
                self._recent = set(uids[bisect.bisect_left(uids, claimed.start) :])
            return self._changes(keywords=keywords)
        return self._apply(rows, gone, claimed, keywords, latest=latest)

    def _apply(
        self,
        rows: list[Any],
        gone: Iterable[int],
        claimed: range,
        keywords: tuple[str, ...],
        *,
        latest: FolderList | None,
    ) -> SyncChanges:
        """Report what changed between the view's list and the index at `self._modseq`
        (`rows`: the rows changed since the list's modseq, `gone`: the UIDs expunged
        since), and hold the index's list from now on: `latest`, the process's, when it
        agrees, else one derived here (and registered)."""
        before = self._list
        recent_before = len(self._recent)
        # The expunged, as positions in the list before (ascending); EXPUNGE responses go
        # highest first, so that each number is right when it is read.
        positions = sorted(
            pos for pos in (before.position(uid) for uid in set(gone)) if pos is not None
        )
        expunged_uids = tuple(before.uids[pos] for pos in positions)
        self._recent.difference_update(expunged_uids)
        gone_at = set(positions)
        last = before.uids[-1] if before else 0
        added: list[ImapMessage] = []
        # UID -> the index's flags where they differ from the list's (for the next
        # list), and the changes the client was not told of (its view included STORE's
        # reports).
        reflagged: dict[int, frozenset[str]] = {}
        told = dict(self._flags)
        changed: list[tuple[int, int, frozenset[str]]] = []
        modseqs: dict[int, int] = {}
        for row in sorted(rows):
            info = make_info(row[:-1])
            modseqs[info.uid] = row[-1]
            if info.uid > last:
                added.append(info)
                continue
            pos = before.position(info.uid)
            if pos is None or pos in gone_at:
                continue
            if before.flags(pos) != info.flags:
                reflagged[info.uid] = info.flags
            if told.pop(info.uid, before.flags(pos)) != info.flags:
                changed.append((pos, info.uid, info.flags))
        # What STORE reported of a message the rows do not name is the list's already
        # unless something went behind its back: then the client hears the truth.
        for uid, flags in told.items():
            pos = before.position(uid)
            if pos is not None and pos not in gone_at and before.flags(pos) != flags:
                changed.append((pos, uid, before.flags(pos)))
        changed.sort()
        modseqs = self._modseqs_of([uid for _pos, uid, _flags in changed], modseqs)
        if not (positions or reflagged or added):
            # Nothing that shows: the same list (the process's, if it is the same).
            if latest is not None and latest.uids == before.uids:
                self._list = latest
            self._flags = {}
            return self._changes(
                recent=len(self._recent) if len(self._recent) != recent_before else None,
                flags=tuple((pos + 1, uid, flags) for pos, uid, flags in changed),
                modseqs=modseqs,
                keywords=keywords,
            )
        derived = before.derive(
            self._modseq,
            gone=positions,
            flags=reflagged,
            added=added,
            keep_made=latest is None,
        )
        if latest is not None and latest.uids == derived.uids:
            self._list = latest
        else:
            self._list = share(self._index.db_path, derived)
        self._flags = {}
        for info in added:
            if info.uid in claimed:
                self._recent.add(info.uid)
        return self._changes(
            expunged=tuple(pos + 1 for pos in reversed(positions)),
            expunged_uids=expunged_uids,
            added=tuple(added),
            recent=len(self._recent) if len(self._recent) != recent_before else None,
            flags=tuple(
                (pos + 1 - bisect.bisect_left(positions, pos), uid, flags)
                for pos, uid, flags in changed
            ),
            modseqs=modseqs,
            keywords=keywords,
        )

    def _changes(
        self,
        *,
        keywords: tuple[str, ...],
        expunged: tuple[int, ...] = (),
        expunged_uids: tuple[int, ...] = (),
        added: tuple[ImapMessage, ...] = (),
        recent: int | None = None,
        flags: tuple[tuple[int, int, frozenset[str]], ...] = (),
        modseqs: dict[int, int] | None = None,
    ) -> SyncChanges:
        new_keywords = None
        if keywords != self._keywords:
            self._keywords = new_keywords = keywords
        return SyncChanges(
            expunged=expunged,
            expunged_uids=expunged_uids,
            added=added,
            exists=len(self._list),
            recent=recent,
            flags=flags,
            modseqs=modseqs or {},
            keywords=new_keywords,
        )

    def _modseqs_of(self, uids: list[int], known: dict[int, int]) -> dict[int, int]:
        """`known` for `uids`, and for a UID it lacks (its flags were reported by STORE
        but changed back behind it) the index's mod-sequence, else the view's."""
        out = {uid: known[uid] for uid in uids if uid in known}
        missing = [uid for uid in uids if uid not in out]
        if missing:
            out.update(self._index.rows(self._index.conn, missing, "uid, modseq"))
            for uid in missing:
                out.setdefault(uid, self._modseq)
        return out

    def _keyword_names(self) -> tuple[str, ...]:
        return tuple(k for k in self._index.keywords() if k is not None)

    # -- reading ----------------------------------------------------------------------

    def _check(self, *, write: bool = False) -> None:
        if write and self._readonly:
            raise ReadOnlyError("the folder is open read-only")
        row = None if self._dead else self._index.conn.execute(_UIDVALIDITY).fetchone()
        self._check_uidvalidity(row)

    def _check_uidvalidity(self, row: tuple[int, ...] | None) -> None:
        if self._dead or row is None or row[0] != self._uidvalidity:
            self._dead = True
            raise FolderGoneError("the folder was deleted, renamed or rebuilt")

    def _checked_column(self, query: str, uid: int) -> object:
        """`_check` and one column of message `uid` (None: no such row) in one query.

        FETCH and SEARCH call this once per message of the set: in autocommit mode every
        statement is a read transaction of its own, so one query instead of two halves
        what a message costs in SQLite."""
        row = None if self._dead else self._index.conn.execute(query, (uid,)).fetchone()
        self._check_uidvalidity(row)
        assert row is not None
        return row[1]

    def _path(self, uid: int) -> str | None:
        row = self._index.conn.execute("SELECT name FROM messages WHERE uid = ?", (uid,)).fetchone()
        return None if row is None else os.path.join(self._index.folder, row[0])

    @_guarded
    def _open(self, uid: int) -> io.BufferedReader | None:
        name = self._checked_column(_CHECKED_NAME, uid)
        for attempt in range(2):
            if attempt:
                path = self._path(uid)
            else:
                path = None if name is None else os.path.join(self._index.folder, str(name))
            if path is None:
                return None
            try:
                return open(path, "rb")
            except FileNotFoundError:
                if attempt:
                    return None
                # Renamed (flags) or removed by someone else: learn where from the disk.
                self._index.refresh(force=True)
        return None

    def read(self, uid: int) -> bytes | None:
        f = self._open(uid)
        if f is None:
            return None
        with f:
            return to_crlf(f.read())

    def open_content(self, uid: int) -> BinaryIO | None:
        f = self._open(uid)
        if f is None:
            return None
        return io.BufferedReader(CrlfReader(f))

    @_guarded
    def get_cache(self, uid: int) -> bytes | None:
        blob = self._checked_column(_CHECKED_CACHE, uid)
        assert blob is None or isinstance(blob, bytes)
        return blob

    def set_cache(self, uid: int, blob: bytes) -> None:
        self.set_structures({uid: Structures(cache=blob)})

    @_guarded
    def structures(self, uids: Iterable[int], *, cache: bool = False) -> dict[int, Structures]:
        with self._checked_read() as conn:
            return self._index.structures(conn, uids, cache=cache)

    @_guarded
    def set_structures(self, values: Mapping[int, Structures]) -> None:
        if values:
            with self._cache_write() as conn:
                self._index.keep_structures(conn, dict(values))

    @_guarded
    def search_missing(self, uids: Iterable[int], *, texts: bool) -> list[int]:
        with self._checked_read() as conn:
            return _imapsearch.missing(conn, uids, texts=texts)

    @_guarded
    def keep_search_data(self, values: Mapping[int, SearchData]) -> None:
        if values:
            with self._cache_write() as conn:
                _imapsearch.keep(conn, values)

    @_guarded
    def find_in_header(self, name: str, needle: str) -> set[int]:
        with self._checked_read() as conn:
            return _imapsearch.find_in_header(conn, name, needle)

    @_guarded
    def search_fields(self, names: Iterable[str]) -> dict[int, dict[str, str]]:
        with self._checked_read() as conn:
            return _imapsearch.field_values(conn, names)

    @_guarded
    def find_in_texts(self, needle: str, *, bodies_only: bool) -> set[int] | None:
        with self._checked_read() as conn:
            return _imapsearch.find_in_texts(conn, needle, bodies_only=bodies_only)

    @_guarded
    def sent_days(self) -> dict[int, int]:
        with self._checked_read() as conn:
            return _imapsearch.sent_days(conn)

    @contextlib.contextmanager
    def _checked_read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction of this view's folder (`FolderGoneError` if it is not)."""
        with self._index.read() as conn:
            self._check_uidvalidity(conn.execute(_UIDVALIDITY).fetchone())
            yield conn

    @contextlib.contextmanager
    def _cache_write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction for what is only a cache of the files: a lost one is
        worked out again, so it is not worth an fsync of its own (the next FULL commit
        makes it durable with the rest)."""
        self._check()
        conn = self._index.conn
        conn.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._index.write():
                yield conn
        finally:
            conn.execute("PRAGMA synchronous=FULL")

    def contents(self, uids: Iterable[int]) -> Iterator[tuple[int, bytes | None]]:
        wanted = list(uids)
        names = self._names(wanted)
        for uid in wanted:
            name = names.get(uid)
            if name is None:
                yield uid, None
                continue
            try:
                with open(os.path.join(self._index.folder, name), "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                # Renamed (flags) or removed meanwhile: the one-message path finds it.
                yield uid, self.read(uid)
                continue
            yield uid, to_crlf(data)

    @_guarded
    def _names(self, uids: list[int]) -> dict[int, str]:
        with self._checked_read() as conn:
            return dict(self._index.rows(conn, uids, "uid, name"))

    # -- mod-sequences (RFC 7162) -----------------------------------------------------

    @_guarded
    def flag_states(self, uids: Iterable[int]) -> dict[int, tuple[int, frozenset[str]]]:
        with self._checked_read() as conn:
            rows = self._index.rows(conn, uids, "uid, modseq, flags, keywords")
        return {uid: (modseq, flag_set(flags, keywords)) for uid, modseq, flags, keywords in rows}

    @_guarded
    def changed_since(self, modseq: int) -> dict[int, tuple[int, frozenset[str]]]:
        with self._checked_read() as conn:
            rows = conn.execute(
                "SELECT uid, modseq, flags, keywords FROM messages WHERE modseq > ?", (modseq,)
            ).fetchall()
        listed = self._list
        return {
            uid: (changed, flag_set(flags, keywords))
            for uid, changed, flags, keywords in rows
            if listed.position(uid) is not None
        }

    @_guarded
    def vanished_since(self, modseq: int, uids: Sequence[range]) -> list[int]:
        listed = self._list
        below = self._uidnext
        with self._checked_read() as conn:
            floor = conn.execute("SELECT expunge_floor FROM folder").fetchone()[0]
            if modseq >= floor:
                # The tombstones up to what this view reported; later ones are still in
                # its list, and reach the client as VANISHED with its next sync.
                gone = [
                    uid
                    for (uid,) in conn.execute(
                        "SELECT uid FROM expunged WHERE modseq > ? AND modseq <= ? ORDER BY uid",
                        (modseq, self._modseq),
                    )
                ]
                return [uid for uid in gone if any(uid in span for span in uids)]
        # Pruned past `modseq`: every UID of `uids` this view does not list (RFC 7162
        # §3.2.5.2), walked as the spans between listed UIDs, never one by one.
        out: list[int] = []
        for span in uids:
            start, stop = span.start, min(span.stop, below)
            uid = start
            while uid < stop:
                pos = bisect.bisect_left(listed.uids, uid)
                nxt = listed.uids[pos] if pos < len(listed.uids) else stop
                if nxt == uid:
                    uid += 1
                    continue
                out.extend(range(uid, min(nxt, stop)))
                uid = min(nxt, stop)
        return sorted(set(out))

    # -- flags ------------------------------------------------------------------------

    def store_flags(
        self, uids: Iterable[int], flags: Collection[str], mode: FlagMode
    ) -> dict[int, frozenset[str]]:
        return self.store(uids, flags, mode).flags

    @_guarded
    def store(
        self,
        uids: Iterable[int],
        flags: Collection[str],
        mode: FlagMode,
        *,
        unchangedsince: int | None = None,
    ) -> StoreResult:
        self._check(write=True)
        bits, keywords = bits_of(flags)
        wanted = self._known(uids)
        index = self._index
        result: dict[int, frozenset[str]] = {}
        modseqs: dict[int, int] = {}
        modified: list[int] = []
        updates: list[tuple[str, int, str, int, int]] = []
        renamed: list[tuple[str, str]] = []
        with _renamed_back(index.folder, renamed), index.write() as conn:
            if keywords and mode is not FlagMode.REMOVE:
                keywords = frozenset(index.allocate_keywords(keywords).values())
            else:
                keywords = frozenset(index.canonical_keywords(keywords))

            def change(old_bits: int, old_keywords: set[str]) -> tuple[int, set[str]]:
                return _apply_mode(mode, old_bits, old_keywords, bits, keywords)

            table = index.keywords()
            modseq = index.header(conn).highestmodseq + 1
            relister = _Relister(index)
            for uid, base, rel, old_bits, old_keywords, old_modseq in index.rows(
                conn, wanted, "uid, base, name, flags, keywords, modseq"
            ):
                if unchangedsince is not None and old_modseq > unchangedsince:
                    # RFC 7162 §3.1.3: changed since the client looked; checked under
                    # the write lock, so no other change can come in between.
                    modified.append(uid)
                    continue
                before = (rel, old_bits, set(old_keywords.split()))
                after = self._rename_for_flags(base, before, change, table, relister)
                if after is None:
                    continue  # gone: its EXPUNGE comes with the next sync
                if after[0] != before[0]:
                    renamed.append((before[0], after[0]))
                if after[1:] != before[1:]:
                    updates.append((after[0], after[1], " ".join(sorted(after[2])), modseq, uid))
                    modseqs[uid] = modseq
                else:
                    if after != before:
                        # Only the file's name changed (another tool's spelling).
                        conn.execute("UPDATE messages SET name = ? WHERE uid = ?", (after[0], uid))
                    modseqs[uid] = old_modseq
                result[uid] = flags_of(after[1], after[2])
            conn.executemany(
                "UPDATE messages SET name = ?, flags = ?, keywords = ?, modseq = ? WHERE uid = ?",
                updates,
            )
            if updates:
                conn.execute("UPDATE folder SET highestmodseq = ?", (modseq,))
        self._flags.update(result)
        return StoreResult(result, modseqs, modified)

    def _rename_for_flags(
        self,
        base: str,
        state: tuple[str, int, set[str]],
        change: Callable[[int, set[str]], tuple[int, set[str]]],
        table: list[str | None],
        relister: _Relister,
    ) -> tuple[str, int, set[str]] | None:
        """Rename the file of `base` (now at state[0], with state's flags) to carry the
        flags `change` makes of them; returns the new (name, bits, keywords), or None if
        the file is gone. The file is the truth: if another tool renamed it, its flags
        are the ones changed."""
        rel, bits, keywords = state
        for attempt in range(2):
            new_bits, new_keywords = change(bits, keywords)
            if (new_bits, new_keywords) == (bits, keywords):
                return rel, bits, keywords
            letters = info_letters(new_bits, new_keywords, table, split_name(rel[4:])[1])
            target = f"cur/{base}:2,{letters}"
            try:
                os.rename(
                    os.path.join(self._index.folder, rel),
                    os.path.join(self._index.folder, target),
                )
            except FileNotFoundError:
                found = relister.find(base)
                if attempt or found is None:
                    return None
                rel = found
                bits, found_keywords = parse_info(split_name(rel[4:])[1], table)
                keywords = set(found_keywords)
                continue
            return target, new_bits, new_keywords
        return None

    def _known(self, uids: Iterable[int]) -> list[int]:
        # Only messages the client has been told about can be acted on: their responses
        # need sequence numbers.
        return sorted(uid for uid in set(uids) if self._list.position(uid) is not None)

    # -- expunge ----------------------------------------------------------------------

    @_guarded
    def expunge(self, uids: Iterable[int] | None = None) -> list[int]:
        self._check(write=True)
        index = self._index
        scope = self._list.uids if uids is None else self._known(uids)
        removed: list[int] = []
        with index.write() as conn:
            relister = _Relister(index)
            touched: set[str] = set()
            for uid, base, rel, bits in index.rows(conn, scope, "uid, base, name, flags"):
                if not bits & DELETED:
                    continue
                try:
                    os.unlink(os.path.join(index.folder, rel))
                except FileNotFoundError:
                    # Renamed by another tool: the flags it now has do not matter, the
                    # client expunged what it saw flagged \Deleted.
                    found = relister.find(base)
                    if found is not None:
                        unlink_quietly(os.path.join(index.folder, found))
                        touched.add(found[:3])
                else:
                    touched.add(rel[:3])
                removed.append(uid)
            for sub in touched:
                fsync_dir(os.path.join(index.folder, sub))
            index.delete(conn, removed, index.header(conn).highestmodseq + 1)
        return removed

    # -- append, copy, move -----------------------------------------------------------

    def append(
        self,
        content: bytes,
        flags: Collection[str] = (),
        internaldate: datetime.datetime | None = None,
    ) -> AppendResult:
        self._check(write=True)
        return self._account.append(self._name, content, flags, internaldate)

    @_guarded
    def copy(self, uids: Iterable[int], dest: str) -> CopyResult:
        self._check()
        return transfer(
            self._index,
            self._account.index_for(dest),
            self._known(uids),
            namer=self._account.namer,
            move=False,
        )

    @_guarded
    def move(self, uids: Iterable[int], dest: str) -> CopyResult:
        self._check(write=True)
        return transfer(
            self._index,
            self._account.index_for(dest),
            self._known(uids),
            namer=self._account.namer,
            move=True,
        )

    def close(self) -> None:
        # The index (and its connection) belongs to the account, which may reuse it. The
        # list goes, so that the process's copy goes with its last view.
        self._dead = True
        self._list = FolderList.empty()
        self._flags = {}
        self._recent = set()


@contextlib.contextmanager
def _renamed_back(folder: str, renamed: list[tuple[str, str]]) -> Iterator[None]:
    """On the way out of a failed STORE (its rows rolled back: a full disk), give the
    files in `renamed` (old, new: relative to `folder`) their names back, so that a
    STORE answered NO changed nothing and every row still names its file."""
    try:
        yield
    except Exception:
        for old, new in reversed(renamed):
            with contextlib.suppress(OSError):
                os.rename(os.path.join(folder, new), os.path.join(folder, old))
        raise


def _apply_mode(
    mode: FlagMode, bits: int, keywords: set[str], new_bits: int, new_keywords: frozenset[str]
) -> tuple[int, set[str]]:
    if mode is FlagMode.ADD:
        return bits | new_bits, keywords | new_keywords
    if mode is FlagMode.REMOVE:
        return bits & ~new_bits, keywords - new_keywords
    return new_bits, set(new_keywords)


class _Reflagged(Sequence[ImapMessage]):
    """A view's list with the flags its STOREs reported since its last sync."""

    __slots__ = ("_flags", "_list")

    def __init__(self, messages: FolderList, flags: dict[int, frozenset[str]]) -> None:
        self._list = messages
        self._flags = flags

    def __len__(self) -> int:
        return len(self._list)

    @overload
    def __getitem__(self, index: int) -> ImapMessage: ...

    @overload
    def __getitem__(self, index: slice) -> list[ImapMessage]: ...

    def __getitem__(self, index: int | slice) -> ImapMessage | list[ImapMessage]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self._list)))]
        message = self._list[index]
        flags = self._flags.get(message.uid)
        return message if flags is None else attrs.evolve(message, flags=flags)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]
