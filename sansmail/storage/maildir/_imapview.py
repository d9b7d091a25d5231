"""`MaildirFolderView`: one session's view of one folder, over a `FolderIndex`.

Theory of operation
-------------------
The view holds the message list as last reported to the client (UIDs ascending, so
``messages[i]`` is sequence number i+1), the flags it reported, the modseq those reports
reflect and the UIDs it claimed as \\Recent. `sync` refreshes the index from the Maildir
(`FolderIndex.refresh`), then reads only rows and tombstones newer than the view's modseq
and turns them into EXPUNGE sequence numbers (highest first, so each number is valid
when it is sent), new messages (always above every UID the view has: UIDs are assigned
in increasing order under the index's write lock) and flag changes.

A big folder's list is read in one query whose rows SQLite serialises itself (JSON,
parsed in C), and a row becomes an `ImapMessage` only when something looks at it
(`MessageList`): a client that SELECTs a folder of 10,000 messages and fetches only
what is new never pays for the other 9,990.

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
import json
import os
import sqlite3
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO, Concatenate, Final, ParamSpec, Protocol, TypeVar

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
    Structures,
    SyncChanges,
)
from sansmail.storage.maildir._imapcopy import transfer
from sansmail.storage.maildir._imapindex import FolderIndex, is_corrupt
from sansmail.storage.maildir._imaplist import ALL_ROWS, INFO_COLUMNS, MessageList, make_info
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
            self._lost()
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
        self._uids: list[int] = []
        # ImapMessages, or the rows not looked at yet (see `MessageList`).
        self._messages: list[ImapMessage | list[Any]] = []
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
        self._catch_up(first=True)

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
        return MessageList(self._messages)

    @property
    def uids(self) -> Sequence[int]:
        return self._uids

    def _message(self, pos: int) -> ImapMessage:
        return MessageList(self._messages)[pos]

    @property
    def recent(self) -> frozenset[int]:
        return frozenset(self._recent)

    @property
    def keywords(self) -> tuple[str, ...]:
        return self._keywords

    @property
    def can_create_keywords(self) -> bool:
        return None in self._index.keywords()

    @property
    def index_rebuilt(self) -> bool:
        return self._index_rebuilt

    # -- sync -------------------------------------------------------------------------

    def sync(self) -> SyncChanges:
        if self._dead:
            return SyncChanges(exists=len(self._uids), uidvalidity_changed=True)
        try:
            self._index.refresh(move_new=not self._readonly)
            return self._catch_up()
        except FolderGoneError:
            self._dead = True
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise
            self._lost()
        return SyncChanges(exists=len(self._uids), uidvalidity_changed=True)

    def _lost(self) -> None:
        self._dead = True
        self._index.rebuild()

    def _catch_up(self, *, first: bool = False) -> SyncChanges:
        """Read what changed since the view's last report (everything, when `first`:
        then the rows stay rows until looked at, and no news is made of them, the
        SELECT being the report)."""
        index = self._index
        header = index.header()
        claim = not self._readonly and header.recent_uid < header.uidnext
        keywords = self._keyword_names()
        if header.uidvalidity == self._uidvalidity and header.highestmodseq == self._modseq:
            if not claim:
                return self._changes(keywords=keywords)
        with index.write() if claim else index.read() as conn:
            header = index.header(conn)
            if header.uidvalidity != self._uidvalidity:
                self._dead = True
                return SyncChanges(exists=len(self._uids), uidvalidity_changed=True)
            if first:
                rows = json.loads(conn.execute(ALL_ROWS).fetchone()[0])
                gone: list[int] = []
            elif self._modseq < header.expunge_floor:
                rows = conn.execute(f"SELECT {INFO_COLUMNS} FROM messages").fetchall()  # noqa: S608
                present = {row[0] for row in rows}
                gone = [uid for uid in self._uids if uid not in present]
            else:
                rows = conn.execute(
                    f"SELECT {INFO_COLUMNS} FROM messages WHERE modseq > ?",  # noqa: S608
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
            self._uids = [row[0] for row in rows]
            self._messages = rows
            if claimed:
                self._recent = set(self._uids[bisect.bisect_left(self._uids, claimed.start) :])
            return self._changes(keywords=keywords)
        return self._apply(rows, gone, claimed, keywords)

    def _apply(
        self,
        rows: list[Any],
        gone: Iterable[int],
        claimed: range,
        keywords: tuple[str, ...],
    ) -> SyncChanges:
        recent_before = len(self._recent)
        expunged: list[int] = []
        expunged_uids: list[int] = []
        for uid in sorted(set(gone), reverse=True):
            pos = bisect.bisect_left(self._uids, uid)
            if pos < len(self._uids) and self._uids[pos] == uid:
                del self._uids[pos]
                del self._messages[pos]
                self._recent.discard(uid)
                expunged.append(pos + 1)
                expunged_uids.append(uid)
        last = self._uids[-1] if self._uids else 0
        added: list[ImapMessage] = []
        changed: list[tuple[int, int, frozenset[str]]] = []
        for row in sorted(rows):
            info = make_info(row)
            if info.uid > last:
                added.append(info)
                continue
            pos = bisect.bisect_left(self._uids, info.uid)
            if pos < len(self._uids) and self._uids[pos] == info.uid:
                if self._message(pos).flags != info.flags:
                    self._messages[pos] = info
                    changed.append((pos + 1, info.uid, info.flags))
        for info in added:
            self._uids.append(info.uid)
            self._messages.append(info)
            if info.uid in claimed:
                self._recent.add(info.uid)
        return self._changes(
            expunged=tuple(expunged),
            expunged_uids=tuple(sorted(expunged_uids)),
            added=tuple(added),
            recent=len(self._recent) if len(self._recent) != recent_before else None,
            flags=tuple(changed),
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
    ) -> SyncChanges:
        new_keywords = None
        if keywords != self._keywords:
            self._keywords = new_keywords = keywords
        return SyncChanges(
            expunged=expunged,
            expunged_uids=expunged_uids,
            added=added,
            exists=len(self._uids),
            recent=recent,
            flags=flags,
            keywords=new_keywords,
        )

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

    # -- flags ------------------------------------------------------------------------

    @_guarded
    def store_flags(
        self, uids: Iterable[int], flags: Collection[str], mode: FlagMode
    ) -> dict[int, frozenset[str]]:
        self._check(write=True)
        bits, keywords = bits_of(flags)
        wanted = self._known(uids)
        index = self._index
        result: dict[int, frozenset[str]] = {}
        updates: list[tuple[str, int, str, int, int]] = []
        with index.write() as conn:
            if keywords and mode is not FlagMode.REMOVE:
                keywords = frozenset(index.allocate_keywords(keywords).values())
            else:
                keywords = frozenset(index.canonical_keywords(keywords))

            def change(old_bits: int, old_keywords: set[str]) -> tuple[int, set[str]]:
                return _apply_mode(mode, old_bits, old_keywords, bits, keywords)

            table = index.keywords()
            modseq = index.header(conn).highestmodseq + 1
            relister = _Relister(index)
            for uid, base, rel, old_bits, old_keywords in index.rows(
                conn, wanted, "uid, base, name, flags, keywords"
            ):
                before = (rel, old_bits, set(old_keywords.split()))
                after = self._rename_for_flags(base, before, change, table, relister)
                if after is None:
                    continue  # gone: its EXPUNGE comes with the next sync
                if after != before:
                    updates.append((after[0], after[1], " ".join(sorted(after[2])), modseq, uid))
                result[uid] = flags_of(after[1], after[2])
            conn.executemany(
                "UPDATE messages SET name = ?, flags = ?, keywords = ?, modseq = ? WHERE uid = ?",
                updates,
            )
            if updates:
                conn.execute("UPDATE folder SET highestmodseq = ?", (modseq,))
        for uid, new_flags in result.items():
            pos = bisect.bisect_left(self._uids, uid)
            self._messages[pos] = attrs.evolve(self._message(pos), flags=new_flags)
        return result

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
        out = []
        for uid in set(uids):
            pos = bisect.bisect_left(self._uids, uid)
            if pos < len(self._uids) and self._uids[pos] == uid:
                out.append(uid)
        out.sort()
        return out

    # -- expunge ----------------------------------------------------------------------

    @_guarded
    def expunge(self, uids: Iterable[int] | None = None) -> list[int]:
        self._check(write=True)
        index = self._index
        scope = self._uids if uids is None else self._known(uids)
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
        # The index (and its connection) belongs to the account, which may reuse it.
        self._dead = True


def _apply_mode(
    mode: FlagMode, bits: int, keywords: set[str], new_bits: int, new_keywords: frozenset[str]
) -> tuple[int, set[str]]:
    if mode is FlagMode.ADD:
        return bits | new_bits, keywords | new_keywords
    if mode is FlagMode.REMOVE:
        return bits & ~new_bits, keywords - new_keywords
    return new_bits, set(new_keywords)
