"""What ``sansmail-trio mailbox`` does to a user's folders, beside the IMAP sessions:
status, resync (as ``doveadm force-resync``) and expunge by date (as ``doveadm expunge
... before``, by INTERNALDATE). Blocking file and SQLite I/O; the CLI calls it directly.

Theory of operation
-------------------
These work on the storage as an IMAP session does, through the folder's `FolderIndex`
and its locks, so they are safe beside live sessions, in this process or any other: an
expunge or a sync done here is one more transaction under the folder's write lock, and
the sessions report it (EXPUNGE, FETCH FLAGS, EXISTS) at their next sync, as they report
another client's changes. A session idling on the folder hears at once (the files
changed in ``cur/`` wake its watch); others at their next command.

`folder_status` counts what IMAP STATUS counts (`MaildirAccount.status`, after the same
sync), so the two always agree.

Resync has three cases, decided under the account lock (which every rebuild takes, so
a session meeting the same damage waits, then uses the index made here):

1. The index opens and SQLite's integrity check passes: it stays. One write transaction
   drops what was derived from the messages' content (FETCH structures, SEARCH data: a
   wrong cached BODYSTRUCTURE is the kind of fault one resyncs for) and lists the Maildir
   in full without trusting the directories' mtimes: files put there by hand get UIDs,
   missing ones are expunged, renamed ones take their flags. UIDs and UIDVALIDITY stay.
2. The index is damaged but its folder row can still be read (UIDVALIDITY, UIDNEXT,
   HIGHESTMODSEQ) and agrees with the message rows read: a new index under the SAME
   UIDVALIDITY, seeded with every row that could be read (UID, INTERNALDATE and its
   zone) through the table Dovecot's UIDs go through (`_uidlist`). A message whose row
   was lost gets a new UID at or above the old UIDNEXT, never one given out before.
   HIGHESTMODSEQ moves past the old one and the tombstones' floor with it, so a
   CONDSTORE/QRESYNC client and a live session re-read every flag and compare their UID
   list in full (RFC 7162 §3.1.2: mod-sequences never go backwards).
3. Nothing trustworthy can be read (the file deleted or emptied, not a database, no
   folder row): a new index under a new, greater UIDVALIDITY, the messages numbered in
   arrival order, as an IMAP session's own repair does (`_imapindex`, "What a lost index
   costs"): the UIDs were in that index only, and reusing a number that once named an
   expunged message would show clients the wrong mail from their caches.

Every case keeps the messages (they are the files), their flags (the letters in the file
names) and keywords (``dovecot-keywords``); cases 2 and 3 log one line on the
``sansmail.repair`` logger, and drop the quota file so that it is measured again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Callable
from typing import Final

import attrs

from sansmail.storage.durable import fsync_dir, unlink_quietly
from sansmail.storage.maildir._imapbase import STATUS_ITEMS, ImapStoreError, MailAccount
from sansmail.storage.maildir._imapindex import INDEX_NAME, FolderIndex, Header, _read_marker
from sansmail.storage.maildir._imapschema import SCHEMA_VERSION
from sansmail.storage.maildir._quota import account_root
from sansmail.storage.maildir._quota import invalidate as _invalidate_quota
from sansmail.storage.maildir._uidlist import Uidlist, UidlistRecord

__all__ = ["FolderStatus", "Resynced", "expunge_before", "folder_status", "resync"]

_log = logging.getLogger("sansmail.repair")

_UID_MAX: Final = 0xFFFFFFFF
_SIDE_FILES: Final = ("", "-wal", "-shm")
#: SQLite's errors that say nothing of the file's contents (busy past the wait, a full
#: disk, an I/O or permission error): a resync meeting one stops, as taking it for
#: damage would delete a sound index (and, its folder row unread, renumber the folder).
_NOT_DAMAGE: Final = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_FULL",
    "SQLITE_IOERR",
    "SQLITE_READONLY",
    "SQLITE_CANTOPEN",
    "SQLITE_PERM",
    "SQLITE_NOMEM",
)


@attrs.frozen(kw_only=True)
class FolderStatus:
    """One folder's counts, as IMAP STATUS gives them (RFC 9051 §6.3.11)."""

    name: str
    messages: int
    unseen: int
    #: RFC 3501's \\Recent: messages no read-write session has seen yet.
    recent: int
    deleted: int
    #: The messages' sizes summed, as RFC822.SIZE counts them (CRLF): doveadm's vsize.
    vsize: int
    uidvalidity: int
    uidnext: int
    highestmodseq: int


@attrs.frozen(kw_only=True)
class Resynced:
    """What `resync` did to one folder."""

    name: str
    #: "checked" (case 1), "rebuilt" (case 2: UIDs kept), "renumbered" (case 3), or
    #: "made": the folder had never been indexed (Dovecot's UIDs taken if it has them).
    outcome: str
    #: The UIDVALIDITY before (None: unknown, the index and its marker both lost).
    uidvalidity_before: int | None
    uidvalidity: int
    messages: int
    #: UIDs the index had that its Maildir has no file for (expunged now).
    expunged: int
    #: Files the index had no row for (given UIDs now).
    added: int


def folder_status(account: MailAccount, name: str) -> FolderStatus:
    """Folder `name`'s counts, from the same sync and query as IMAP STATUS."""
    values = account.status(name, STATUS_ITEMS)
    return FolderStatus(
        name=name,
        messages=values["MESSAGES"],
        unseen=values["UNSEEN"],
        recent=values["RECENT"],
        deleted=values["DELETED"],
        vsize=values["SIZE"],
        uidvalidity=values["UIDVALIDITY"],
        uidnext=values["UIDNEXT"],
        highestmodseq=values["HIGHESTMODSEQ"],
    )


def expunge_before(index: FolderIndex, before: int) -> list[int]:
    """Expunge every message of the folder whose INTERNALDATE (its arrival, for mail
    delivered here) is before `before` (seconds since the epoch); returns their UIDs.

    The files are unlinked and their directories fsync'd before the rows go, as IMAP
    EXPUNGE does, so what this returns stays expunged, and a crash in between leaves
    rows the next sync expunges. Unlike EXPUNGE, the unlinks happen outside the
    folder's write lock: one costs 0.1-0.5 ms here (ext4 freeing the blocks), so a big
    folder's would hold the lock for seconds, and SQLite's lock is not fair (a session
    waiting on it sleeps and retries), so batches would not let the sessions in either.
    A file missing meanwhile is what a session's sync already handles: it expunges the
    row itself (the same expunge, reported by whoever syncs first), and a FETCH or STORE
    of it leaves it out. Only the rows' removal takes the lock."""
    index.refresh()
    with index.read() as conn:
        rows = conn.execute(
            "SELECT uid, base, name FROM messages WHERE internaldate < ? ORDER BY uid",
            (before,),
        ).fetchall()
    if not rows:
        return []
    _unlink(index, [(base, rel) for _uid, base, rel in rows])
    uids = [uid for uid, _base, _rel in rows]
    with index.write() as conn:
        # A session's sync may have found some files gone and expunged them already.
        left = [uid for (uid,) in index.rows(conn, uids, "uid")]
        index.delete(conn, left, index.header(conn).highestmodseq + 1)
    return uids


def _unlink(index: FolderIndex, files: list[tuple[str, str]]) -> None:
    """Unlink each (base, "new/..." or "cur/...") of `index`'s folder, durably."""
    listing: dict[str, str] | None = None
    touched: set[str] = set()
    for base, rel in files:
        try:
            os.unlink(os.path.join(index.folder, rel))
        except FileNotFoundError:
            # Renamed meanwhile by a flag change outside any lock (another tool).
            if listing is None:
                listing = index.scan()
            found = listing.get(base)
            if found is None:
                continue  # gone already: its row goes all the same
            unlink_quietly(os.path.join(index.folder, found))
            touched.add(found[:3])
        else:
            touched.add(rel[:3])
    for sub in touched:
        fsync_dir(os.path.join(index.folder, sub))


@attrs.frozen
class _Found:
    """What could be read of an index file."""

    #: Opened, passed the integrity check, one folder row, a schema this code reads
    #: (maybe after migrating it).
    sound: bool
    #: The folder row, when it could be read and agrees with the message rows.
    header: Header | None
    #: (uid, base, internaldate, tz, size) of each message row read.
    rows: list[tuple[int, str, int, int, int]]


def _inspect(path: str) -> _Found:
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return _Found(sound=False, header=None, rows=[])
    try:
        conn = sqlite3.connect(path, timeout=60.0, isolation_level=None)
    except sqlite3.DatabaseError as exc:
        _raise_unless_damage(exc)
        return _Found(sound=False, header=None, rows=[])
    try:
        return _read_found(conn, path)
    finally:
        conn.close()


def _read_found(conn: sqlite3.Connection, path: str) -> _Found:
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        checked = conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    except sqlite3.DatabaseError as exc:
        _raise_unless_damage(exc)
        version, checked = 0, False
    if version > SCHEMA_VERSION:
        # Rebuilding would renumber every message for nothing (`_imapschema`).
        raise ImapStoreError(f"{path} was made by a newer sansmail (index version {version})")
    header = None
    try:
        folder = conn.execute("SELECT * FROM folder").fetchall()
        if len(folder) == 1:
            header = Header(*(int(value) for value in folder[0][1:]))
    except sqlite3.DatabaseError as exc:
        _raise_unless_damage(exc)
    except (TypeError, ValueError):
        pass
    rows: list[tuple[int, str, int, int, int]] = []
    complete = True
    try:
        for uid, base, internaldate, tz, size in conn.execute(
            "SELECT uid, base, internaldate, tz, size FROM messages"
        ):
            if (
                isinstance(uid, int)
                and isinstance(base, str)
                and base
                and "/" not in base
                and isinstance(internaldate, int)
                and isinstance(tz, int)
                and isinstance(size, int)
            ):
                rows.append((uid, base, internaldate, tz, size))
            else:
                complete = False
    except sqlite3.DatabaseError as exc:
        _raise_unless_damage(exc)
        complete = False
    except ValueError:
        complete = False
    if header is not None and not _agrees(header, rows):
        header = None
    # An older schema is sound too: opening it migrates it in place, UIDs and all.
    sound = checked and complete and header is not None and 0 < version <= SCHEMA_VERSION
    return _Found(sound=sound, header=header, rows=rows)


def _raise_unless_damage(exc: sqlite3.DatabaseError) -> None:
    if getattr(exc, "sqlite_errorname", "").startswith(_NOT_DAMAGE):
        raise exc


def _agrees(header: Header, rows: list[tuple[int, str, int, int, int]]) -> bool:
    """Whether a damaged index's folder row can be believed beside the rows read: every
    UID below UIDNEXT, none twice, UIDVALIDITY and UIDNEXT in range."""
    if not 0 < header.uidvalidity <= _UID_MAX or not 0 < header.uidnext <= _UID_MAX + 1:
        return False
    uids = [row[0] for row in rows]
    bases = {row[1] for row in rows}
    return all(0 < uid < header.uidnext for uid in uids) and len(set(uids)) == len(uids) == len(
        bases
    )


def resync(
    index: FolderIndex, name: str, lock: Callable[[], contextlib.AbstractContextManager[None]]
) -> Resynced:
    """Check folder `name`'s index against its Maildir and rebuild it where it must be
    (see the module docstring); `lock` is the account's lock."""
    with lock():
        index.close()
        found = _inspect(index.db_path)
        if found.sound:
            return _check(index, name)
        return _rebuild(index, name, found)


def _check(index: FolderIndex, name: str) -> Resynced:
    index.open(rebuild=False)
    with index.write() as conn:
        header = index.header(conn)
        before = {uid for (uid,) in conn.execute("SELECT uid FROM messages")}
        # Derived from the content, made again when next asked for.
        for table in ("structures", "fields", "searched", "texts"):
            conn.execute(f"DELETE FROM {table}")  # noqa: S608
        index._sync(conn, move_new=False)
        after = {uid for (uid,) in conn.execute("SELECT uid FROM messages")}
    return Resynced(
        name=name,
        outcome="checked",
        uidvalidity_before=header.uidvalidity,
        uidvalidity=header.uidvalidity,
        messages=len(after),
        expunged=len(before - after),
        added=len(after - before),
    )


def _rebuild(index: FolderIndex, name: str, found: _Found) -> Resynced:
    old = found.header
    marker = _read_marker(index.folder)
    before = old.uidvalidity if old is not None else marker or None
    for suffix in _SIDE_FILES:
        unlink_quietly(index.db_path + suffix)
    if old is None:
        # A folder never indexed takes Dovecot's UIDs, when it has them, as at any
        # first open; a lost index cannot (see `_imapindex._dovecot_uidlist`).
        index._connect(adopt=marker is None)
        index.refresh(force=True)
        added = index.conn.execute("SELECT count(*) FROM messages").fetchone()[0]
        outcome, expunged, messages = "renumbered" if marker is not None else "made", 0, added
    else:
        seed = Uidlist(
            uidvalidity=old.uidvalidity,
            next_uid=old.uidnext,
            records={
                base: UidlistRecord(uid=uid, filename=base, extensions={"W": str(size)})
                for uid, base, _date, _tz, size in found.rows
            },
        )
        # Past every mod-sequence given out, and no tombstones: views compare in full.
        index._connect(adopt=False, seed=seed, modseq=old.highestmodseq + 1)
        if index.header().uidvalidity != old.uidvalidity:
            # A session made an index of its own in the moment between the old one's
            # removal and this one (as it would after any loss): it numbered afresh.
            found = _Found(sound=False, header=None, rows=[])
        index.refresh(force=True)
        with index.write() as conn:
            # The INTERNALDATE and its zone as the old rows had them (a sync would take
            # the file's mtime and UTC).
            conn.executemany(
                "UPDATE messages SET internaldate = ?, tz = ? WHERE base = ? AND uid = ?",
                [(date, tz, base, uid) for uid, base, date, tz, _size in found.rows],
            )
            kept = {uid for (uid,) in conn.execute("SELECT uid FROM messages")}
        known = {row[0] for row in found.rows}
        outcome = "rebuilt" if found.header is not None else "renumbered"
        messages, expunged, added = len(kept), len(known - kept), len(kept - known)
    uidvalidity = index.header().uidvalidity
    _invalidate_quota(account_root(index.folder))
    if outcome == "made":
        return Resynced(
            name=name,
            outcome=outcome,
            uidvalidity_before=None,
            uidvalidity=uidvalidity,
            messages=messages,
            expunged=0,
            added=added,
        )
    _log.warning(
        "IMAP index %s resynced: %s from the Maildir, UIDVALIDITY %s -> %d (%s)",
        os.path.join(index.folder, INDEX_NAME),
        "rebuilt" if outcome == "rebuilt" else "damaged or lost, rebuilt",
        before or "unknown",
        uidvalidity,
        "UIDs kept" if outcome == "rebuilt" else "UIDs renumbered",
    )
    return Resynced(
        name=name,
        outcome=outcome,
        uidvalidity_before=before,
        uidvalidity=uidvalidity,
        messages=messages,
        expunged=expunged,
        added=added,
    )
