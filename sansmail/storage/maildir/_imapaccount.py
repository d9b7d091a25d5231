"""`MaildirImapStore` and `MaildirAccount`: a user's IMAP folders as Maildir++ folders.

Theory of operation
-------------------
Layout (CONTRACT.md "Where mail lives"; names in `_imapnames`): INBOX is the user's Maildir
``<data_dir>/mail/<domain>/<local>/``, the one delivery writes to; every other folder is
a ``.Name`` directory inside it with its own ``tmp/ new/ cur/`` and an empty
``maildirfolder`` file (the Maildir++ marker). Each folder's `FolderIndex` lives in its
directory. The user's Maildir also holds ``subscriptions`` (Dovecot's format) and
``sansmail.uidvalidity``, the last UIDVALIDITY given out, so that a folder deleted and
created again, or rebuilt, gets a greater one (RFC 9051 §2.3.1.1).

First open: an account whose INBOX has no index yet gets the special-use folders Sent,
Drafts, Trash, Junk and Archive (RFC 6154), subscribed with INBOX. Special use is by
name, as Dovecot's ``mailbox { special_use }`` configuration gives it, so a Maildir
shared with Dovecot agrees.

Folder rules (RFC 9051 §6.3.4-6.3.6), as Dovecot applies them to a Maildir++ layout:

- CREATE makes no parent folders: ``a/b`` alone shows ``a`` as \\Noselect (\\NonExistent
  in rev2) with children, as a directory ``.a.b`` without ``.a`` does for Dovecot.
- DELETE INBOX is refused. DELETE of a folder removes it and its messages; its children
  stay, and the name lives on as a \\Noselect parent (RFC 3501 §6.3.4). DELETE of a name
  that is only a parent is refused with HASCHILDREN, as Dovecot does. Subscriptions are
  kept (RFC 9051 §6.3.9: the server must not remove them on its own).
- RENAME moves the folder and all its inferiors, and their subscriptions (as Dovecot).
  RENAME INBOX creates the new folder, moves every message of INBOX into it (new UIDs
  there) and leaves INBOX empty; INBOX's inferiors do not move.

Structural changes (create, delete, rename, subscriptions) and the rebuild of a damaged
index run under the account lock, ``flock`` on ``sansmail-imap.lock`` in the Maildir;
message operations never take it, they have each folder's SQLite lock. A deleted folder
is first renamed into ``tmp/`` (one atomic step, so nobody sees half a folder), then
removed; leftovers from a crash are removed at the next open.

One account object belongs to one session: it and its views are used by one thread at a
time. It caches each folder's `FolderIndex`; between commands (`release`) their SQLite
connections go back to the process's pool (`_imapindex`).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import pathlib
import shutil
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Final, TypeVar

from sansmail.mail.address import MailboxId
from sansmail.storage.durable import fsync_dir, unlink_quietly, write_file_atomically
from sansmail.storage.maildir._imapadmin import (
    FolderStatus,
    Resynced,
    expunge_before,
    folder_status,
    resync,
)
from sansmail.storage.maildir._imapbase import (
    SEPARATOR,
    STATUS_ITEMS,
    AppendResult,
    FolderExistsError,
    FolderGoneError,
    FolderHasChildrenError,
    FolderInfo,
    ImapStore,
    InvalidFolderNameError,
    MailAccount,
    NoSuchFolderError,
    NotAllowedError,
)
from sansmail.storage.maildir._imapindex import (
    INDEX_NAME,
    INDEXED_MARKER,
    FolderIndex,
    NewRow,
    is_corrupt,
)
from sansmail.storage.maildir._imapmaildir import (
    DELETED,
    SEEN,
    Namer,
    bits_of,
    info_letters,
    store_file,
)
from sansmail.storage.maildir._imapmaildir import to_crlf as _to_crlf
from sansmail.storage.maildir._imapnames import (
    INBOX,
    disk_name,
    folder_dir,
    folder_name,
    normalize,
    read_subscriptions,
    rename_names,
    write_subscriptions,
)
from sansmail.storage.maildir._imapview import MaildirFolderView
from sansmail.storage.maildir._maildir import MaildirStore
from sansmail.storage.maildir._quota import OverQuotaError
from sansmail.storage.maildir._quota import invalidate as _invalidate_quota
from sansmail.storage.maildir._quota import usage as _quota_usage

__all__ = ["DEFAULT_SPECIAL_USE", "MaildirAccount", "MaildirImapStore"]

#: Folders made for every new account, with their RFC 6154 attribute.
DEFAULT_SPECIAL_USE: Final[Mapping[str, str]] = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}

_LOCK_NAME: Final = "sansmail-imap.lock"
_UIDVALIDITY_NAME: Final = "sansmail.uidvalidity"
_SUBSCRIPTIONS_NAME: Final = "subscriptions"
_DELETED_PREFIX: Final = "sansmail-deleted."
_DIR_MODE: Final = 0o700
_UID_MAX: Final = 0xFFFFFFFF  # RFC 9051 §9: nz-number is 32 bits

_T = TypeVar("_T")


class MaildirImapStore(ImapStore):
    """The `ImapStore` over the Maildirs ``MaildirStore`` delivers into.

    `hostname` goes into the names of files APPEND writes; `clock` returns nanoseconds
    since the epoch (file names, UIDVALIDITY, index freshness); `quota` gives each
    mailbox's storage limit in octets (0: none; `_quota.QuotaLimits`).
    """

    def __init__(
        self,
        data_dir: pathlib.Path,
        *,
        hostname: str,
        clock: Callable[[], int] = time.time_ns,
        special_use: Mapping[str, str] = DEFAULT_SPECIAL_USE,
        quota: Callable[[MailboxId], int] | None = None,
    ) -> None:
        self._quota = quota
        # Only for its mapping of addresses to directories, so both agree by construction.
        self._paths = MaildirStore(data_dir, hostname=hostname, clock=clock)
        self._namer = Namer(hostname, clock)
        self._clock = clock
        self._special_use = dict(special_use)

    def account(self, mailbox: MailboxId, *, open_inbox: bool = True) -> MaildirAccount:
        """Open `mailbox`'s folders (creating its Maildir if delivery has not yet);
        `open_inbox`: see `MaildirAccount`."""
        return MaildirAccount(
            self._paths.maildir(mailbox),
            namer=self._namer,
            clock=self._clock,
            special_use=self._special_use,
            quota=self._quota(mailbox) if self._quota is not None else 0,
            open_inbox=open_inbox,
        )


class MaildirAccount(MailAccount):
    """One user's folders; see the module docstring. INBOX's index is opened at once
    (made, or repaired, as needed) unless not `open_inbox`: `resync` wants to read a
    damaged one before anything replaces it."""

    def __init__(
        self,
        root: pathlib.Path | str,
        *,
        namer: Namer,
        clock: Callable[[], int] = time.time_ns,
        special_use: Mapping[str, str] = DEFAULT_SPECIAL_USE,
        quota: int = 0,
        open_inbox: bool = True,
    ) -> None:
        self.root = os.fspath(root)
        #: The storage limit in octets, 0 for none (`_quota`).
        self.quota_limit = quota
        self.namer = namer
        self._clock = clock
        self._special_use = dict(special_use)
        self._indexes: dict[str, FolderIndex] = {}
        # Not merely "INBOX has no index": one lost (`_imapindex`) must not bring back
        # the special-use folders and subscriptions the user removed.
        first = not any(
            os.path.exists(os.path.join(self.root, name))
            for name in (INDEX_NAME, INDEXED_MARKER, _UIDVALIDITY_NAME)
        )
        _make_maildir(self.root, parents=True)
        self._clean_deleted()
        if first:
            for name in self._special_use:
                with contextlib.suppress(FolderExistsError):
                    self.create(name)
            self._update_subscriptions(add=[INBOX, *self._special_use])
        if open_inbox:
            self.index_for(INBOX)

    # -- folders ----------------------------------------------------------------------

    def _dir(self, name: str) -> str:
        return folder_dir(self.root, name)

    def index_for(self, name: str) -> FolderIndex:
        """The index of existing folder `name` (`NoSuchFolderError` otherwise)."""
        name = normalize(name)
        index = self._indexes.get(name)
        if index is not None:
            if os.path.isdir(index.folder):
                return index
            index.close()
            del self._indexes[name]
        index = self._new_index(name)
        index.open()
        self._indexes[name] = index
        return index

    def _new_index(self, name: str) -> FolderIndex:
        """A `FolderIndex` of existing folder `name`, not opened yet."""
        path = self._dir(name)
        if not os.path.isdir(path):
            raise NoSuchFolderError(f"no folder {name!r}")
        # A folder made by hand may lack a Maildir subdirectory.
        _make_maildir(path, parents=False)
        return FolderIndex(
            path,
            uidvalidity=self._uidvalidity,
            lock=self._lock,
            clock=self._clock,
            note_uidvalidity=self._note_uidvalidity,
        )

    def _forget(self, name: str, *, inferiors: bool = False) -> None:
        for cached in list(self._indexes):
            if cached == name or (inferiors and cached.startswith(name + SEPARATOR)):
                self._indexes.pop(cached).close()

    def _existing(self) -> set[str]:
        names = {INBOX}
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.name.startswith(".") and entry.is_dir():
                    name = folder_name(entry.name)
                    if name is not None:
                        names.add(name)
        return names

    def list_folders(self) -> list[FolderInfo]:
        existing = self._existing()
        parents: set[str] = set()
        for name in existing:
            levels = name.split(SEPARATOR)
            for depth in range(1, len(levels)):
                parents.add(SEPARATOR.join(levels[:depth]))
        subscribed = set(read_subscriptions(os.path.join(self.root, _SUBSCRIPTIONS_NAME)))
        names = existing | parents | subscribed
        out = [
            FolderInfo(
                name=name,
                exists=name in existing,
                has_children=name in parents,
                subscribed=name in subscribed,
                special_use=self._special_use.get(name) if name in existing else None,
            )
            for name in names
        ]
        out.sort(key=lambda info: (info.name != INBOX, info.name))
        return out

    def create(self, name: str) -> None:
        name = normalize(name, trailing_separator=True)
        if name == INBOX:
            raise FolderExistsError("INBOX always exists")
        path = self._dir(name)
        with self._lock():
            try:
                os.mkdir(path, _DIR_MODE)
            except FileExistsError:
                raise FolderExistsError(f"{name!r} exists") from None
            _make_maildir(path, parents=False)
            fd = os.open(os.path.join(path, "maildirfolder"), os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
            fsync_dir(path)
            fsync_dir(self.root)

    def delete(self, name: str) -> None:
        name = normalize(name)
        if name == INBOX:
            raise NotAllowedError("INBOX cannot be deleted")
        path = self._dir(name)
        graveyard = os.path.join(self.root, "tmp", _DELETED_PREFIX + self.namer())
        with self._lock():
            if not os.path.isdir(path):
                if self._inferiors(name):
                    raise FolderHasChildrenError(f"{name!r} has children; delete them first")
                raise NoSuchFolderError(f"no folder {name!r}")
            os.rename(path, graveyard)
            fsync_dir(self.root)
        _invalidate_quota(self.root)  # its messages no longer count: measure again
        self._forget(name)
        shutil.rmtree(graveyard, ignore_errors=True)

    def _inferiors(self, name: str) -> list[str]:
        """Directory entries of the folders below `name`."""
        prefix = disk_name(name) + "."
        return [entry for entry in os.listdir(self.root) if entry.startswith(prefix)]

    def rename(self, old: str, new: str) -> None:
        old, new = rename_names(old, new)
        if old == INBOX:
            self._rename_inbox(new)  # only the messages move (RFC 9051 §6.3.6)
            return
        source = disk_name(old)
        target = disk_name(new)
        with self._lock():
            entries = [
                e for e in os.listdir(self.root) if e == source or e.startswith(source + ".")
            ]
            if not entries:
                raise NoSuchFolderError(f"no folder {old!r}")
            moves = [(e, target + e[len(source) :]) for e in entries]
            for _, dst in moves:
                if len(os.fsencode(dst)) > 255:
                    raise InvalidFolderNameError("folder name too long")
                if os.path.lexists(os.path.join(self.root, dst)):
                    raise FolderExistsError(f"{folder_name(dst)!r} exists")
            self._forget(old, inferiors=True)
            for src, dst in moves:
                os.rename(os.path.join(self.root, src), os.path.join(self.root, dst))
            fsync_dir(self.root)
            path = os.path.join(self.root, _SUBSCRIPTIONS_NAME)
            subscribed = read_subscriptions(path)
            renamed = [
                new + s[len(old) :] if s == old or s.startswith(old + SEPARATOR) else s
                for s in subscribed
            ]
            if renamed != subscribed:
                write_subscriptions(path, list(dict.fromkeys(renamed)))

    def _rename_inbox(self, new: str) -> None:
        self.create(new)
        view = self.select(INBOX)
        try:
            view.move([m.uid for m in view.messages], new)
            view.sync()
        finally:
            view.close()

    # -- subscriptions ----------------------------------------------------------------

    def subscribe(self, name: str) -> None:
        self._update_subscriptions(add=[normalize(name)])

    def unsubscribe(self, name: str) -> None:
        self._update_subscriptions(remove=[normalize(name)])

    def _update_subscriptions(
        self, *, add: Collection[str] = (), remove: Collection[str] = ()
    ) -> None:
        path = os.path.join(self.root, _SUBSCRIPTIONS_NAME)
        with self._lock():
            names = read_subscriptions(path)
            updated = [n for n in names if n not in remove]
            updated += [n for n in add if n not in updated]
            if updated != names or not os.path.exists(path):
                write_subscriptions(path, updated)

    # -- messages ---------------------------------------------------------------------

    def status(self, name: str, items: Collection[str]) -> dict[str, int]:
        unknown = set(items) - STATUS_ITEMS
        if unknown:
            raise ValueError(f"unknown STATUS items {sorted(unknown)}")
        return self._retry(name, lambda index: _status(index, items))

    def folder_status(self, name: str) -> FolderStatus:
        """Folder `name`'s counts, as IMAP STATUS gives them (`_imapadmin`)."""
        return folder_status(self, normalize(name))

    def resync(self, name: str) -> Resynced:
        """Check folder `name`'s index against its Maildir, rebuilding it where it must
        be, keeping every UID it can (`_imapadmin`, as ``doveadm force-resync``)."""
        name = normalize(name)
        self._forget(name)
        index = self._new_index(name)
        try:
            return resync(index, name, self._lock)
        finally:
            index.close()

    def expunge_before(self, name: str, before: int) -> list[int]:
        """Expunge folder `name`'s messages whose INTERNALDATE is before `before`
        (seconds since the epoch), durably; their UIDs (`_imapadmin`)."""
        return self._retry(normalize(name), lambda index: expunge_before(index, before))

    def select(self, name: str, *, readonly: bool = False) -> MaildirFolderView:
        name = normalize(name)
        return self._retry(
            name, lambda index: MaildirFolderView(self, name, index, readonly=readonly)
        )

    def storage(self) -> tuple[int, int] | None:
        if not self.quota_limit:
            return None
        return _quota_usage(self.root, self.quota_limit)[0].octets, self.quota_limit

    def check_quota(self, octets: int) -> None:
        if self.quota_limit:
            used = _quota_usage(self.root, self.quota_limit)[0].octets
            if used + octets > self.quota_limit:
                raise OverQuotaError("the mailbox would be over its storage quota")

    def append(
        self,
        name: str,
        content: bytes,
        flags: Collection[str] = (),
        internaldate: datetime.datetime | None = None,
    ) -> AppendResult:
        bits, keywords = bits_of(flags)
        # Stored with LF line ends and no CR left, so ,W= is the size and read() gives
        # back these very octets.
        data = _to_crlf(content).replace(b"\r\n", b"\n")
        self.check_quota(len(data) + data.count(b"\n"))
        tz = 0
        if internaldate is not None:
            offset = internaldate.utcoffset()
            tz = int(offset.total_seconds() // 60) if offset else 0

        def append(index: FolderIndex) -> AppendResult:
            spelled = keywords
            if keywords:
                with index.write():
                    spelled = frozenset(index.allocate_keywords(keywords).values())
            letters = info_letters(bits, spelled, index.keywords(), None)
            mtime = internaldate.timestamp() if internaldate is not None else None
            rel, stamp = store_file(index.folder, self.namer(), data, letters, mtime)
            row = NewRow(
                base=rel[4:].partition(":")[0],
                name=rel,
                flags=bits,
                keywords=tuple(sorted(spelled)),
                internaldate=stamp,
                tz=tz,
                size=len(data) + data.count(b"\n"),
            )
            try:
                with index.write() as conn:
                    (uid,) = index.insert(conn, [row])
                    return AppendResult(index.header(conn).uidvalidity, uid)
            except Exception:
                # No row (a full disk refused it): the client hears NO and APPENDs again
                # later, so the file must not turn up at the next sync as a first copy.
                unlink_quietly(os.path.join(index.folder, rel))
                raise

        return self._retry(name, append)

    def _retry(self, name: str, action: Callable[[FolderIndex], _T]) -> _T:
        # A corrupt index is rebuilt once and the action tried again; a folder removed
        # under a cached index is looked up again.
        for attempt in range(2):
            index = self.index_for(name)
            try:
                return action(index)
            except FolderGoneError:
                self._forget(normalize(name))
                if attempt:
                    raise NoSuchFolderError(f"no folder {name!r}") from None
            except Exception as exc:
                if attempt or not is_corrupt(exc):
                    raise
                index.rebuild(exc)
        raise AssertionError("unreachable")

    def release(self) -> None:
        for index in self._indexes.values():
            index.release()

    def close(self) -> None:
        for index in self._indexes.values():
            index.close()
        self._indexes.clear()

    # -- account files ----------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        fd = os.open(
            os.path.join(self.root, _LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _uidvalidity(self) -> int:
        # Time-based, and above any given out before in this account (a folder deleted
        # and made again within the second, a rebuilt index). Two processes racing here
        # may hand out the same value to two different folders, which is harmless.
        path = os.path.join(self.root, _UIDVALIDITY_NAME)
        try:
            with open(path, "rb") as f:
                last = int(f.read().strip() or 0)
        except (FileNotFoundError, ValueError):
            last = 0
        value = max(self._clock() // 1_000_000_000, last + 1)
        if value > _UID_MAX:  # past 2106, or a clock gone mad: keep counting, wrapping
            value = last % _UID_MAX + 1
        write_file_atomically(path, f"{value}\n".encode())
        return value

    def _note_uidvalidity(self, value: int) -> None:
        # A folder keeps the UIDVALIDITY Dovecot gave it (`_uidlist`): the ones given out
        # later, to folders made or rebuilt, must still be greater. (Unlocked, as
        # `_uidvalidity` is: a race at worst gives two folders one value.)
        path = os.path.join(self.root, _UIDVALIDITY_NAME)
        try:
            with open(path, "rb") as f:
                last = int(f.read().strip() or 0)
        except (FileNotFoundError, ValueError):
            last = 0
        if value > last:
            write_file_atomically(path, f"{value}\n".encode())

    def _clean_deleted(self) -> None:
        tmp = os.path.join(self.root, "tmp")
        for entry in os.listdir(tmp):
            if entry.startswith(_DELETED_PREFIX):
                shutil.rmtree(os.path.join(tmp, entry), ignore_errors=True)


def _status(index: FolderIndex, items: Collection[str]) -> dict[str, int]:
    index.refresh()
    with index.read() as conn:
        header = index.header(conn)
        count, size, unseen, deleted, recent = conn.execute(
            "SELECT count(*), total(size), count(*) - total(flags & ?), total((flags & ?) != 0),"
            " total(uid >= ?) FROM messages",
            (SEEN, DELETED, header.recent_uid),
        ).fetchone()
    values = {
        "MESSAGES": count,
        "UIDNEXT": header.uidnext,
        "UIDVALIDITY": header.uidvalidity,
        "UNSEEN": int(unseen),
        "DELETED": int(deleted),
        "SIZE": int(size),
        "RECENT": int(recent),
        "HIGHESTMODSEQ": header.highestmodseq,
    }
    return {item: values[item] for item in items}


def _make_maildir(path: str, *, parents: bool) -> None:
    """Make sure `path` has ``tmp/ new/ cur/``, each on disk before it is used."""
    if all(os.path.isdir(os.path.join(path, sub)) for sub in ("cur", "new", "tmp")):
        return
    if parents and not os.path.isdir(path):
        os.makedirs(path, _DIR_MODE, exist_ok=True)
        fsync_dir(os.path.dirname(path))
    for sub in ("tmp", "new", "cur"):
        with contextlib.suppress(FileExistsError):
            os.mkdir(os.path.join(path, sub), _DIR_MODE)
    fsync_dir(path)
