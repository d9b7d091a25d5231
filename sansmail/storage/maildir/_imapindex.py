"""`FolderIndex`: one folder's SQLite index, and its sync with the Maildir beside it.

Theory of operation
-------------------
The Maildir is the truth about which messages exist and what flags they carry; the index
(``sansmail.index.sqlite`` in the folder's directory, SQLite in WAL mode) adds what a
Maildir cannot hold: UIDVALIDITY, UIDNEXT, each message's UID, its INTERNALDATE time
zone, the CRLF size and a modification sequence. Rows are keyed by the file's base name
(the part before ``:``), which no rename changes. What FETCH derives from a message's
content (its pre-serialised ENVELOPE, BODYSTRUCTURE and BODY, and the session's cache
blob: `Structures`) lives in a table of its own, ``structures``, so that the list of
messages a SELECT reads stays small; a row there goes with its message's row (expunge
deletes both in one transaction) and is only ever a cache: losing it costs a re-parse.

Sync (as Dovecot's maildir sync does it). Under the write lock (``BEGIN IMMEDIATE``),
list ``new/`` and then ``cur/`` (a file moved from new/ to cur/ between the two listings
is then seen at least once), and compare with the rows:

- a base on disk with no row gets a UID; new files get UIDs in arrival order, the time
  stamp in the name (``<secs>.M<usecs>``, else the mtime), then the name, and UIDNEXT
  moves in the same transaction, so a UID is assigned once and never again;
- a row whose file name changed takes its flags from the new name;
- a row whose base is on disk no more is expunged. readdir(3) may miss an entry that is
  renamed while the directory is read, so before believing that, both directories are
  listed once more and only a base missing from both listings is expunged;
- a read-write session moves files from ``new/`` to ``cur/`` (adding ``:2,``) when it
  syncs them, as Dovecot does; \\Recent does not depend on it (see `recent_uid`).

Being inside the write lock while listing matters: every writer of the index (APPEND,
COPY, MOVE and other sessions' syncs) takes the same lock to insert rows, so a listing
can never miss a file whose row is already there.

Freshness without listing. The header keeps the mtimes of ``new/`` and ``cur/`` as they
were when last listed, and the clock reading taken just before. Any creation, rename or
unlink in a directory changes its mtime, but only at the file system's time granularity:
a change in the same tick as the listing could leave the mtime as recorded. So the
recorded mtimes are trusted only when they are older than the listing by a margin
(one second); otherwise the next sync lists again. A no-change sync is then two stat
calls and one small query.

A caller that knows when the change it looks for happened (an IDLE session woken by
inotify: the change came before the wake-up) passes that time as `listed_since`: a
listing that started later (`synced`) saw the change, so when another session made one
meanwhile, this caller does not list again, even inside the margin. Without it, the
sessions idling on a folder would each list it under the write lock after every
delivery (the first one's listing is less than a second old for all the others).

Modification sequences. Every transaction that changes messages takes
``highestmodseq + 1`` and stamps it on the rows it changed and on a tombstone per
expunged UID. A `FolderView` remembers the modseq it reported last and asks only for
newer rows and tombstones (RFC 7162 CONDSTORE comes nearly free). Tombstones are pruned
past a bound; a view older than the pruned range compares its whole UID list instead.

\\Recent (RFC 3501 §2.3.2, rev1 only). The header keeps `recent_uid`, the lowest UID that
no read-write session has claimed yet. A read-write view's sync claims every UID from it
to UIDNEXT in a write transaction, so exactly one session is first to see a message.

Schema versions: `_imapschema`.

Crash safety. SQLite's WAL makes each transaction all or nothing (``synchronous=FULL``:
a committed transaction survives power loss too, so UIDNEXT never goes backwards). A file
written into ``cur/`` whose row was never inserted is simply found by the next sync. An
index that SQLite reports corrupt (or that is not a database) is deleted and rebuilt
from the Maildir with a new UIDVALIDITY, so clients drop their caches; the account lock
keeps two processes from rebuilding at once.

What a lost index costs. The UIDs live in the index and nowhere else (Dovecot's
``dovecot-uidlist`` is read once, at the first index, `_uidlist`), so an index deleted,
truncated or damaged takes them along: the new one numbers the messages again under a
greater UIDVALIDITY (the account's counter, `MaildirAccount._uidvalidity`), as Dovecot
does when its uidlist is lost (RFC 9051 §2.3.1.1: clients then drop their caches).
Nothing else is lost: the messages are the files, their flags the letters in the file
names, the keywords' letters ``dovecot-keywords``. What goes is what only the index held
(each message's INTERNALDATE time zone, the modification sequences, the FETCH and SEARCH
caches). To tell a lost index from a folder never indexed, each index leaves
``sansmail.indexed`` beside it (its UIDVALIDITY, written when it is made): a new index
made where one is found is a repair, and both kinds are logged at warning level on the
``sansmail.repair`` logger, with the UIDVALIDITY before and after; `rebuilt` tells the
view it happened. An admin's ``sansmail-trio mailbox resync`` (`_imapadmin`) does better
with a damaged index whose folder row still reads: it keeps its UIDVALIDITY and every
UID it can read, through the same ``adopted`` table as Dovecot's (the `seed` of
`_create`).

Connections. An open SQLite connection costs about 130 KiB (its page cache, schema and
statements), which an idle IMAP session would hold all day. So a session gives its
connection back between commands (`release`), to a pool of the process's idle
connections, by index file; the next operation on the index takes one from there
(`conn`), or opens one. At most `_IDLE_MAX` wait in the pool, the oldest closed first, so
a server with 1,000 idle sessions keeps a few connections rather than 1,000, and a busy
folder finds its page cache warm. A connection taken from the pool whose file was
replaced meanwhile (a rebuild) is closed, not used. The pool's steps are single list and
dictionary operations, atomic under the GIL, so sessions in different threads share it
without a lock: a connection belongs to whoever took it out of its list.

Everything blocks; one object is used by one thread at a time (it holds its connection
only while it works, and SQLite's locks order the sessions and processes).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import itertools
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final

import attrs

from sansmail.storage.durable import unlink_quietly, write_file_atomically
from sansmail.storage.maildir._imapbase import FolderGoneError, Structures, TooManyKeywordsError
from sansmail.storage.maildir._imapmaildir import (
    arrival_key,
    crlf_size,
    parse_info,
    size_from_name,
    split_name,
)
from sansmail.storage.maildir._imapnames import (
    KEYWORD_LETTERS,
    read_keywords,
    write_keywords,
)
from sansmail.storage.maildir._imapschema import (
    INSERT_MESSAGE,
    SCHEMA_VERSION,
    UPSERT_STRUCTURES,
    create,
    migrate,
)
from sansmail.storage.maildir._imapsearch import forget
from sansmail.storage.maildir._quota import account_root
from sansmail.storage.maildir._quota import invalidate as _invalidate_quota
from sansmail.storage.maildir._quota import record as _record_quota
from sansmail.storage.maildir._uidlist import Uidlist, read_uidlist

__all__ = [
    "ADOPTED_MARKER",
    "INDEXED_MARKER",
    "INDEX_NAME",
    "KEYWORDS_NAME",
    "FolderIndex",
    "Header",
    "NewRow",
    "is_corrupt",
    "is_unwritable",
]

INDEX_NAME: Final = "sansmail.index.sqlite"
KEYWORDS_NAME: Final = "dovecot-keywords"
#: Written in a folder whose ``dovecot-uidlist`` an index was made from (`_uidlist`).
ADOPTED_MARKER: Final = "sansmail.dovecot-adopted"
#: Written beside every index when it is made, with its UIDVALIDITY: an index missing
#: where this is was lost, not never made (see "What a lost index costs").
INDEXED_MARKER: Final = "sansmail.indexed"

_log = logging.getLogger("sansmail.repair")
_MARKER_COUNTER: Final = itertools.count()

_BUSY_TIMEOUT: Final = 60.0
_WAL_LIMIT: Final = 4 * 1024 * 1024
# SQLite does not call the busy handler for the switch to WAL: while another process
# opening the same new index holds a lock, the switch fails at once with "database is
# locked". It is tried again after these pauses (about 6 s in all), only ever for an
# index's first opens, since the mode is kept in the file.
_WAL_PAUSES: Final = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.5, 3.0)
_FRESH_MARGIN_NS: Final = 1_000_000_000
_TOMBSTONES_MAX: Final = 10_000
_TOMBSTONES_KEEP: Final = 2_000
_CORRUPT: Final = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})
_UNWRITABLE: Final = ("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN")
# Idle connections the process keeps (see "Connections" above).
_IDLE_MAX: Final = 16
# Index file -> its idle (connection, inode of the file it opened); and the order they
# went idle in, oldest first (entries of connections taken out since are skipped).
_IDLE: Final[dict[str, list[tuple[sqlite3.Connection, int]]]] = {}
_IDLE_ORDER: Final[collections.deque[tuple[str, sqlite3.Connection, int]]] = collections.deque()

_NOTHING: Final = Structures()


class _DamagedError(sqlite3.DatabaseError):
    """A database SQLite reads fine that is not a sound index."""


def is_unwritable(exc: BaseException) -> bool:
    """Whether `exc` says SQLite could not write (a full disk, an I/O error, a read-only
    file system): the transaction was rolled back, and the index is as it was."""
    name = getattr(exc, "sqlite_errorname", "")
    return isinstance(exc, sqlite3.OperationalError) and name.startswith(_UNWRITABLE)


def is_corrupt(exc: BaseException) -> bool:
    """Whether `exc` says the index file is damaged (as opposed to busy or full)."""
    return isinstance(exc, _DamagedError) or (
        isinstance(exc, sqlite3.DatabaseError) and getattr(exc, "sqlite_errorname", "") in _CORRUPT
    )


@attrs.frozen
class Header:
    """The folder row."""

    uidvalidity: int
    uidnext: int
    highestmodseq: int
    recent_uid: int
    expunge_floor: int
    new_mtime: int
    cur_mtime: int
    synced: int
    new_count: int


@attrs.frozen(kw_only=True)
class NewRow:
    """A message to index whose file is already in place."""

    base: str
    name: str
    flags: int
    keywords: tuple[str, ...]
    internaldate: int
    tz: int
    size: int
    #: What is known of its structures already (a copy's are its source's).
    structures: Structures | None = None


class FolderIndex:
    """The index of the Maildir folder at `folder` (see the module docstring).

    `uidvalidity` gives a fresh UIDVALIDITY for a new or rebuilt index; `note_uidvalidity`
    is told one taken from Dovecot's uidlist instead (so that later fresh ones are
    greater); `lock` is the account's exclusive lock, taken only to rebuild; `clock`
    returns nanoseconds.
    """

    def __init__(
        self,
        folder: str,
        *,
        uidvalidity: Callable[[], int],
        lock: Callable[[], contextlib.AbstractContextManager[None]],
        clock: Callable[[], int],
        note_uidvalidity: Callable[[int], None] = lambda value: None,
    ) -> None:
        self.folder = folder
        self._note_uidvalidity = note_uidvalidity
        self.db_path = os.path.join(folder, INDEX_NAME)
        self._new_uidvalidity = uidvalidity
        self._lock = lock
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._ino = -1
        self._keywords: list[str | None] = [None] * len(KEYWORD_LETTERS)
        self._keywords_stamp: tuple[int, int, int] | None = None
        #: Set when this object replaced a corrupt index; the owner logs and clears it.
        self.rebuilt = False
        # Octets and messages added (removed: negative) by the open write transaction,
        # counted in the account's quota file once it commits (`_quota`).
        self._quota_root = account_root(folder)
        self._quota_delta = [0, 0]

    # -- connection -------------------------------------------------------------------

    def open(self, *, rebuild: bool = True) -> None:
        """Connect, creating the index if there is none and rebuilding a corrupt one
        (unless not `rebuild`: then the error is raised, for a reader that can do
        without the index and leaves its repair to IMAP)."""
        if self._conn is not None or self._take_idle():
            return
        try:
            self._connect()
        except sqlite3.DatabaseError as exc:
            if not rebuild or not is_corrupt(exc):
                raise
            self.rebuild(exc)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def release(self) -> None:
        """Put the connection in the process's pool until the next operation (see
        "Connections" in the module docstring); nothing if it is inside a transaction."""
        conn = self._conn
        if conn is None or conn.in_transaction:
            return
        self._conn = None
        entry = (conn, self._ino)
        _IDLE.setdefault(self.db_path, []).append(entry)
        _IDLE_ORDER.append((self.db_path, *entry))
        while len(_IDLE_ORDER) > _IDLE_MAX:
            try:
                path, old, ino = _IDLE_ORDER.popleft()
            except IndexError:
                break
            idle = _IDLE.get(path)
            if idle is None:
                continue
            try:
                # Whoever takes it out of its list owns it: a connection in use is not.
                idle.remove((old, ino))
            except ValueError:
                continue
            old.close()
            _forget_if_empty(path, idle)

    def _take_idle(self) -> bool:
        """Take an idle connection of this index from the pool (whether one was)."""
        idle = _IDLE.get(self.db_path)
        while idle:
            try:
                conn, ino = idle.pop()
            except IndexError:
                break
            # Its entry in the order goes too. Left there, it would count as idle, and the
            # same connection released again has an equal entry: once the older one was
            # first in line, the pool would close the connection its session had just
            # given back (every 17th command of a session paid a new connection).
            with contextlib.suppress(ValueError):
                _IDLE_ORDER.remove((self.db_path, conn, ino))
            if ino == _inode(self.db_path):
                self._conn, self._ino = conn, ino
                _forget_if_empty(self.db_path, idle)
                return True
            conn.close()  # the file was replaced: this connection reads the old one
        if idle is not None:
            _forget_if_empty(self.db_path, idle)
        return False

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            self.open()
        assert self._conn is not None
        return self._conn

    def _connect(self, *, adopt: bool = True, seed: Uidlist | None = None, modseq: int = 1) -> None:
        if not os.path.isdir(os.path.join(self.folder, "cur")):
            raise FolderGoneError(f"{self.folder} is gone")
        conn = sqlite3.connect(
            self.db_path,
            timeout=_BUSY_TIMEOUT,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute("PRAGMA synchronous=FULL")
            # The first SEARCH of a big folder writes tens of MiB of texts through the
            # WAL: once checkpointed, the file is cut back instead of staying that big.
            conn.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
            _enter_wal(conn)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                self._create(conn, adopt=adopt, seed=seed, modseq=modseq)
            elif version != SCHEMA_VERSION:
                migrate(conn, self.db_path)
            if conn.execute("SELECT count(*) FROM folder").fetchone()[0] != 1:
                raise _DamagedError("the index has no folder row")
            if version and not os.path.exists(os.path.join(self.folder, INDEXED_MARKER)):
                # An index made before the markers were: mark it now.
                (uidvalidity,) = conn.execute("SELECT uidvalidity FROM folder").fetchone()
                _write_marker(self.folder, uidvalidity)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._ino = _inode(self.db_path)

    def _create(
        self,
        conn: sqlite3.Connection,
        *,
        adopt: bool,
        seed: Uidlist | None = None,
        modseq: int = 1,
    ) -> None:
        """Fill a new, empty index (`adopt`: from Dovecot's uidlist if this is the
        folder's first; `seed` and `modseq`: from these UIDs, past this mod-sequence,
        what a resync read from a damaged index, `_imapadmin`); log it when the folder
        had one before (not for `rebuild`, which logs its own line)."""
        lost = _read_marker(self.folder)
        dovecot = seed
        if dovecot is None and adopt and lost is None:
            dovecot = self._dovecot_uidlist()
        if dovecot is not None:
            self._note_uidvalidity(dovecot.uidvalidity)
            uidvalidity = dovecot.uidvalidity
        else:
            # Taken before the write lock: the account's counter is a file of its own.
            uidvalidity = self._new_uidvalidity()
        if not create(conn, self.db_path, uidvalidity, dovecot, modseq=modseq):
            return  # another process made it meanwhile (and said so)
        _write_marker(self.folder, uidvalidity)
        if lost is not None and adopt:
            self.rebuilt = True
            _log.warning(
                "IMAP index %s was missing (or empty): rebuilt from the Maildir, UIDVALIDITY"
                " %s -> %d (messages and flags kept, UIDs renumbered)",
                self.db_path,
                lost or "unknown",
                uidvalidity,
            )

    def _dovecot_uidlist(self) -> Uidlist | None:
        """Dovecot's UIDs for a folder sansmail indexes for the first time (see
        `_uidlist`), or None. Only the first time: an index deleted or rebuilt later has
        messages the uidlist never saw, which must not share its UIDVALIDITY. The marker
        that says so is written before the index, so a crash in between loses the
        adoption, never repeats it."""
        marker = os.path.join(self.folder, ADOPTED_MARKER)
        if os.path.exists(marker):
            return None
        dovecot = read_uidlist(self.folder)
        if dovecot is not None:
            write_file_atomically(marker, b"dovecot-uidlist adopted\n")
        return dovecot

    def rebuild(self, reason: object = "damaged") -> None:
        """Replace a corrupt index with an empty one (new UIDVALIDITY); the next
        `refresh` fills it from the Maildir. `reason` (the error met) goes into the log
        line."""
        self.close()
        with self._lock():
            # Another process may have rebuilt it while we waited for the lock.
            if _inode(self.db_path) not in (self._ino, -1):
                try:
                    self._connect()
                    self.conn.execute("SELECT count(*) FROM messages").fetchone()
                except sqlite3.DatabaseError as exc:
                    self.close()
                    if not is_corrupt(exc):
                        raise
                else:
                    self.rebuilt = True
                    return
            before = _read_marker(self.folder)
            for suffix in ("", "-wal", "-shm"):
                unlink_quietly(self.db_path + suffix)
            self._connect(adopt=False)
            self.rebuilt = True
            _log.warning(
                "IMAP index %s was damaged (%s): rebuilt from the Maildir, UIDVALIDITY"
                " %s -> %d (messages and flags kept, UIDs renumbered)",
                self.db_path,
                reason,
                before or "unknown",
                self.header().uidvalidity,
            )

    def _check_replaced(self) -> None:
        # A rebuild by another process (or a user deleting the file) leaves us on the old
        # inode; reopen so both use the same index.
        if self._conn is not None and _inode(self.db_path) != self._ino:
            if not os.path.isdir(os.path.join(self.folder, "cur")):
                raise FolderGoneError(f"{self.folder} is gone")
            self.close()
            self.open()

    # -- transactions -----------------------------------------------------------------

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: the folder's lock, held until the block ends."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        self._quota_delta = [0, 0]
        try:
            yield conn
            conn.execute("COMMIT")
            octets, messages = self._quota_delta
            if octets or messages:
                _record_quota(self._quota_root, octets, messages)
        except BaseException:
            if conn.in_transaction:
                # A damaged file may refuse even this; the error being raised says more.
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot, no lock against writers."""
        conn = self.conn
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    def header(self, conn: sqlite3.Connection | None = None) -> Header:
        row = (conn or self.conn).execute("SELECT * FROM folder").fetchone()
        return Header(*row[1:])

    # -- keywords ---------------------------------------------------------------------

    def keywords(self) -> list[str | None]:
        """The keyword of each letter a-z (``dovecot-keywords``), re-read when changed."""
        path = os.path.join(self.folder, KEYWORDS_NAME)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            stamp = None
        else:
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._keywords_stamp:
            self._keywords = read_keywords(path)
            self._keywords_stamp = stamp
        return list(self._keywords)

    def allocate_keywords(self, names: Iterable[str]) -> dict[str, str]:
        """Give each keyword of `names` a letter (inside `write`, which serialises the
        writers of ``dovecot-keywords``); returns each name's spelling in this folder
        (keywords match without regard to case)."""
        self._keywords_stamp = None
        table = self.keywords()
        known = {k.lower(): k for k in table if k is not None}
        out: dict[str, str] = {}
        added = False
        for name in names:
            spelled = known.get(name.lower())
            if spelled is None:
                try:
                    slot = table.index(None)
                except ValueError:
                    raise TooManyKeywordsError("this folder holds 26 keywords already") from None
                table[slot] = spelled = name
                known[name.lower()] = name
                added = True
            out[name] = spelled
        if added:
            write_keywords(os.path.join(self.folder, KEYWORDS_NAME), table)
            self._keywords_stamp = None
        return out

    def canonical_keywords(self, names: Iterable[str]) -> set[str]:
        """`names` spelled as this folder spells them; unknown ones are left out."""
        known = {k.lower(): k for k in self.keywords() if k is not None}
        return {known[n.lower()] for n in names if n.lower() in known}

    # -- the Maildir ------------------------------------------------------------------

    def scan(self) -> dict[str, str]:
        """base -> "new/<name>" or "cur/<name>": new/ listed first, cur/ wins."""
        seen: dict[str, str] = {}
        for sub in ("new", "cur"):
            try:
                names = os.listdir(os.path.join(self.folder, sub))
            except FileNotFoundError:
                raise FolderGoneError(f"{self.folder} is gone") from None
            prefix = sub + "/"
            for name in names:
                if not name.startswith("."):
                    seen[name.partition(":")[0]] = prefix + name
        return seen

    def _stat_dirs(self) -> tuple[int, int]:
        try:
            return (
                os.stat(os.path.join(self.folder, "new")).st_mtime_ns,
                os.stat(os.path.join(self.folder, "cur")).st_mtime_ns,
            )
        except FileNotFoundError:
            raise FolderGoneError(f"{self.folder} is gone") from None

    def _fresh(
        self,
        header: Header,
        mtimes: tuple[int, int],
        move_new: bool,
        listed_since: int | None = None,
    ) -> bool:
        if move_new and header.new_count:
            return False
        if listed_since is not None and header.synced >= listed_since:
            return True
        return (
            mtimes == (header.new_mtime, header.cur_mtime)
            and max(mtimes) <= header.synced - _FRESH_MARGIN_NS
        )

    def refresh(
        self, *, move_new: bool = False, force: bool = False, listed_since: int | None = None
    ) -> bool:
        """Sync the index with the Maildir unless it is known fresh; returns whether
        any message was added, changed or expunged. `move_new` moves ``new/`` files to
        ``cur/`` (read-write sessions only). `listed_since` (the clock's nanoseconds):
        a listing started since then is fresh enough (see the module docstring)."""
        self._check_replaced()
        if not force and self._fresh(self.header(), self._stat_dirs(), move_new, listed_since):
            return False
        try:
            with self.write() as conn:
                # Another session may have synced while we waited for the lock.
                header = self.header(conn)
                if not force and self._fresh(header, self._stat_dirs(), move_new, listed_since):
                    return False
                return self._sync(conn, move_new)
        except sqlite3.OperationalError as exc:
            # A full disk: the index stays as it was, consistent but behind the Maildir,
            # and the reads go on from it (what arrived meanwhile shows at the first
            # sync that can write again; a file moved to cur/ just now is found there).
            if force or not is_unwritable(exc):
                raise
            return False

    def _sync(self, conn: sqlite3.Connection, move_new: bool) -> bool:
        # A first sync of a big folder meets every file as new: the loops below are
        # the ones that run per file, so they do no more than they must (one stat for
        # the INTERNALDATE, the flag letters parsed once per distinct string).
        synced = self._clock()
        mtimes = self._stat_dirs()
        seen = self.scan()
        rows = {
            base: (uid, name, flags, keywords)
            for uid, base, name, flags, keywords in conn.execute(
                "SELECT uid, base, name, flags, keywords FROM messages"
            )
        }
        if any(base not in seen for base in rows):
            again = self.scan()
            for base in rows:
                if base not in seen and base in again:
                    seen[base] = again[base]
        in_new = [base for base, rel in seen.items() if rel[0] == "n"]
        if move_new and in_new:
            self._move_new(seen, in_new)
        new_count = sum(1 for base in in_new if seen[base][0] == "n")
        table = self.keywords()
        letters: dict[str | None, tuple[int, str]] = {}

        def info(rel: str) -> tuple[int, str]:
            # (flag bits, keywords as stored) of a file name; few distinct ones.
            key = split_name(rel[4:])[1]
            parsed = letters.get(key)
            if parsed is None:
                bits, names = parse_info(key, table)
                parsed = letters[key] = (bits, " ".join(names))
            return parsed

        header = self.header(conn)
        modseq = header.highestmodseq + 1
        renamed: list[tuple[str, int]] = []
        reflagged: list[tuple[str, int, str, int, int]] = []
        found: list[tuple[tuple[int, int, str], str, str, os.stat_result]] = []
        for base, rel in seen.items():
            row = rows.get(base)
            if row is None:
                try:
                    st = os.stat(os.path.join(self.folder, rel))
                except FileNotFoundError:
                    continue  # gone between the listing and now; the next sync knows
                found.append((arrival_key(base, st.st_mtime_ns), base, rel, st))
                continue
            uid, name, flags, keywords = row
            if name == rel:
                continue
            bits, names = info(rel)
            if bits == flags and names == keywords:
                renamed.append((rel, uid))
            else:
                reflagged.append((rel, bits, names, modseq, uid))
        expunged = [row[0] for base, row in rows.items() if base not in seen]
        found.sort(key=lambda item: item[0])
        # The UIDs Dovecot gave (see `_uidlist`), kept for the first sync only: a file
        # that shows up later is new mail and gets a UID above all others.
        adopted = {base: (uid, size) for base, uid, size in conn.execute("SELECT * FROM adopted")}
        uidnext = header.uidnext
        new_rows = []
        for _, base, rel, st in found:
            uid, size = adopted.get(base, (None, None))
            size = size_from_name(base) or size
            if size is None:
                try:
                    size = crlf_size(os.path.join(self.folder, rel))
                except FileNotFoundError:
                    continue
            if uid is None:
                uid, uidnext = uidnext, uidnext + 1
            bits, names = info(rel)
            new_rows.append((uid, base, rel, bits, names, int(st.st_mtime), 0, size, modseq))
        conn.executemany("UPDATE messages SET name = ? WHERE uid = ?", renamed)
        conn.executemany(
            "UPDATE messages SET name = ?, flags = ?, keywords = ?, modseq = ? WHERE uid = ?",
            reflagged,
        )
        self.delete(conn, expunged, modseq)
        if new_rows:
            # Under the lock it listed in, so no row has these bases: one bulk insert.
            conn.executemany(INSERT_MESSAGE, new_rows)
            # Files in new/ were counted by their delivery; others came from outside,
            # unless this is a new index meeting the folder's old mail: then the quota
            # file is dropped, to be measured again.
            arrived = set(in_new)
            outside = [row[7] for row in new_rows if row[1] not in arrived]
            if outside and not header.synced:
                _invalidate_quota(self._quota_root)
            self._quota_delta[0] += sum(outside)
            self._quota_delta[1] += len(outside)
            conn.execute("UPDATE folder SET uidnext = ?", (uidnext,))
        if adopted:
            conn.execute("DELETE FROM adopted")
        changed = bool(reflagged or expunged or new_rows)
        conn.execute(
            "UPDATE folder SET highestmodseq = max(highestmodseq, ?), new_mtime = ?,"
            " cur_mtime = ?, synced = ?, new_count = ?",
            (modseq if changed else header.highestmodseq, *mtimes, synced, new_count),
        )
        return changed

    def _move_new(self, seen: dict[str, str], in_new: list[str]) -> None:
        for base in in_new:
            name = seen[base][4:]
            target = name if split_name(name)[1] is not None or ":" in name else name + ":2,"
            try:
                os.rename(
                    os.path.join(self.folder, "new", name), os.path.join(self.folder, "cur", target)
                )
            except FileNotFoundError:
                continue  # moved or deleted by someone else: the next sync sees where
            seen[base] = "cur/" + target

    # -- row changes (inside `write`) -------------------------------------------------

    def insert(
        self,
        conn: sqlite3.Connection,
        rows: Sequence[NewRow],
        modseq: int | None = None,
    ) -> list[int]:
        """Give `rows` UIDs in order; a base already indexed (a sync found the file
        first) keeps its UID. UIDNEXT moves in this same transaction."""
        if not rows:
            return []
        header = self.header(conn)
        if modseq is None:
            modseq = header.highestmodseq + 1
        uidnext = header.uidnext
        values = [
            (
                row.base,
                row.name,
                row.flags,
                " ".join(sorted(row.keywords)),
                row.internaldate,
                row.tz,
                row.size,
                modseq,
            )
            for row in rows
        ]
        uids = []
        for row, value in zip(rows, values, strict=True):
            cursor = conn.execute(
                INSERT_MESSAGE + " ON CONFLICT (base) DO NOTHING", (uidnext, *value)
            )
            if cursor.rowcount == 1:
                uids.append(uidnext)
                uidnext += 1
                self._quota_delta[0] += row.size
                self._quota_delta[1] += 1
                continue
            (uid,) = conn.execute("SELECT uid FROM messages WHERE base = ?", (row.base,)).fetchone()
            # What the caller knows beats what a sync could guess from the file.
            conn.execute(
                "UPDATE messages SET tz = ?, internaldate = ? WHERE uid = ?",
                (row.tz, row.internaldate, uid),
            )
            uids.append(uid)
        conn.execute(
            "UPDATE folder SET uidnext = ?, highestmodseq = max(highestmodseq, ?)",
            (uidnext, modseq),
        )
        self.keep_structures(
            conn,
            {
                uid: row.structures
                for uid, row in zip(uids, rows, strict=True)
                if row.structures is not None
            },
        )
        return uids

    def keep_structures(self, conn: sqlite3.Connection, values: dict[int, Structures]) -> None:
        """Keep `values` (see `Structures`; a None member leaves what is kept) for the
        messages that still exist."""
        conn.executemany(
            UPSERT_STRUCTURES,
            [
                (uid, s.cache, s.envelope, s.bodystructure, s.body)
                for uid, s in values.items()
                if s != _NOTHING
            ],
        )

    def structures(
        self, conn: sqlite3.Connection, uids: Iterable[int], *, cache: bool = True
    ) -> dict[int, Structures]:
        """The kept structures of the messages of `uids` that exist (all None where
        none are kept); the cache blob only when `cache`."""
        blob = "s.cache" if cache else "NULL"
        return {
            uid: Structures(envelope, bodystructure, body, cached)
            for uid, envelope, bodystructure, body, cached in conn.execute(
                f"SELECT m.uid, s.envelope, s.bodystructure, s.body, {blob}"  # noqa: S608
                " FROM messages AS m LEFT JOIN structures AS s USING (uid)"
                " WHERE m.uid IN (SELECT value FROM json_each(?))",
                (json.dumps(sorted(set(uids))),),
            )
        }

    def delete(self, conn: sqlite3.Connection, uids: Sequence[int], modseq: int) -> None:
        """Expunge `uids` from the index, leaving tombstones for views to find."""
        if not uids:
            return
        sizes = conn.execute(
            "DELETE FROM messages WHERE uid IN (SELECT value FROM json_each(?)) RETURNING size",
            (json.dumps(list(uids)),),
        ).fetchall()
        self._quota_delta[0] -= sum(size for (size,) in sizes)
        self._quota_delta[1] -= len(sizes)
        conn.executemany("DELETE FROM structures WHERE uid = ?", [(uid,) for uid in uids])
        forget(conn, uids)
        conn.executemany(
            "INSERT OR REPLACE INTO expunged (uid, modseq) VALUES (?, ?)",
            [(uid, modseq) for uid in uids],
        )
        conn.execute("UPDATE folder SET highestmodseq = max(highestmodseq, ?)", (modseq,))
        (count,) = conn.execute("SELECT count(*) FROM expunged").fetchone()
        if count > _TOMBSTONES_MAX:
            (floor,) = conn.execute(
                "SELECT modseq FROM expunged ORDER BY modseq DESC LIMIT 1 OFFSET ?",
                (_TOMBSTONES_KEEP,),
            ).fetchone()
            conn.execute("DELETE FROM expunged WHERE modseq <= ?", (floor,))
            conn.execute("UPDATE folder SET expunge_floor = max(expunge_floor, ?)", (floor,))

    def rows(self, conn: sqlite3.Connection, uids: Iterable[int], columns: str) -> list[Any]:
        """`columns` of the rows of `uids` that exist, by ascending UID."""
        return conn.execute(
            f"SELECT {columns} FROM messages WHERE uid IN (SELECT value FROM json_each(?))"  # noqa: S608
            " ORDER BY uid",
            (json.dumps(sorted(set(uids))),),
        ).fetchall()


def _forget_if_empty(path: str, idle: list[tuple[sqlite3.Connection, int]]) -> None:
    # No key per index file ever seen. A connection put in the list between the test and
    # the removal is in no list then: its entry in _IDLE_ORDER is its last reference, and
    # it is closed when that goes.
    if not idle and _IDLE.get(path) is idle:
        _IDLE.pop(path, None)


def _inode(path: str) -> int:
    try:
        return os.stat(path).st_ino
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
        return -1


def _read_marker(folder: str) -> int | None:
    """The UIDVALIDITY in `folder`'s ``sansmail.indexed`` (0 if unreadable), or None
    when there is none: the folder never had an index."""
    try:
        with open(os.path.join(folder, INDEXED_MARKER), "rb") as f:
            text = f.read(32)
    except FileNotFoundError:
        return None
    try:
        return int(text)
    except ValueError:
        return 0


def _write_marker(folder: str, uidvalidity: int) -> None:
    # No fsync, and no error: it only serves the log line of a later repair.
    path = os.path.join(folder, INDEXED_MARKER)
    tmp = f"{path}.tmp.{os.getpid()}.{next(_MARKER_COUNTER)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"%d\n" % uidvalidity)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        unlink_quietly(tmp)


def _enter_wal(conn: sqlite3.Connection) -> None:
    for pause in (*_WAL_PAUSES, None):
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if pause is None or "locked" not in str(exc):
                raise
        time.sleep(pause)
