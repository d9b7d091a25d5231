"""`Maildrop`: the read-and-delete side of one user's INBOX Maildir, as POP3 uses it
(the `Pop3Maildrop` protocol; `MaildirMaildrops` opens them, the `MaildropSource`).

Theory of operation
-------------------
Snapshot (RFC 1939 §4, §5). `Maildrop.open` takes the POP3 lock, then lists ``new/`` and
``cur/`` once; the session sees that list and nothing else until it ends, so message
numbers keep their meaning while mail keeps arriving (a message delivered during the
session shows up in the next one). ``new/`` is listed before ``cur/``: an IMAP client
moving a file from one to the other between the two listings makes us see it twice
(and keep one copy), never zero times. Names starting with "." are not messages
(Maildir convention). Messages are ordered by arrival: the time stamp at the start of
the name (``<secs>.M<usecs>...``; for a name without one, the file's mtime), then the
base name.

Where IMAP keeps an index in the Maildir (``sansmail.index.sqlite``), the snapshot is
its rows instead, brought up to date first (`FolderIndex.refresh`: nothing listed when
the directories did not change, new files given their UIDs as IMAP would): the sizes
were measured once, when the message was first indexed, and the listing costs one
query, with no look at each file; the order is the same arrival order. An index that
cannot be read (damaged, of an unknown version, busy past its timeout) is not repaired
here: the snapshot lists the directories as above, and IMAP rebuilds the index.

Base names and UIDL (RFC 1939 §7). A Maildir file name is ``<base>[:<info>]``; flag
changes by IMAP clients and mutt rename ``new/X`` to ``cur/X:2,S`` and back and forth,
but never touch the base, which is unique in the Maildir by its naming rules. So the base
is the message's unique-id, stable across sessions and restarts; and a message whose
file moved is found again by its base across ``new/`` and ``cur/``. RFC 1939 allows 1 to
70 characters in 0x21..0x7E: a base that does not fit (a long host name, or a foreign
tool's name with spaces or non-ASCII) gets ``H`` followed by 40 hex digits of the SHA-256
of its octets, equally stable and, at 160 bits, as unique.

Sizes (RFC 1939 §5): octets as sent, CRLF line ends. Files are stored with LF line ends
(``sansmail.storage.maildir`` writes them so, as Postfix and Dovecot do), so the size comes from
the name's ``,W=`` field (the CRLF size, written by us and by Dovecot) when it is there;
otherwise the file is read once, at open, and measured with the very conversion that
sends it. A file that already has CRLF line ends is sent unchanged, and a bare CR counts
as a line end: the POP3 core refuses any CR or LF outside a CRLF, so the conversion makes
every line end a CRLF (`crlf_chunks`).

Reading (RETR, TOP). `reader` opens the file and returns a `MessageReader` that yields
the message in chunks, already converted, so a 25 MiB message never sits whole in
memory; the POP3 core does the byte-stuffing. TOP stops reading at the requested body
line. Reading itself never changes the file or moves it: a rename per RETR would be
disk work and a race with IMAP sessions in the middle of the session.

The UPDATE state (RFC 1939 §6). `expunge` runs only for QUIT in the TRANSACTION state,
and does the session's two kinds of change in one commit:

* it unlinks each message marked deleted, found again by its base if it moved. A message
  already removed by another client counts as removed (it is gone, which is what the
  user asked for); only a file that exists and cannot be unlinked is a failure, which
  the session reports with -ERR;
* it marks \\Seen the messages the session asks for (those RETR sent, as Dovecot does
  with its default ``pop3_no_flag_updates = no``), so a user who reads by POP3 on one
  device sees them read over IMAP on another: ``new/<base>`` or ``cur/<base>:2,<letters>``
  is renamed to ``cur/<base>:2,<letters + S>``, the flag letters the IMAP index reads
  back from file names (`_imapmaildir`), in ASCII order, other letters kept. The base,
  and so the UIDL and the ``,W=`` size, stays. A file already carrying S stays where it
  is; one with an info part that is not ``2,`` (not ours to read) is left alone. An
  IMAP session renaming the same file at the same time makes our rename miss it: it is
  found again by its base and renamed from where it is now;

then it fsyncs every directory it removed or added names in, and only then returns, so
the +OK that follows is said about changes on disk. A dropped connection never calls it,
so nothing is deleted or marked.

Locking (one POP3 session per maildrop, RFC 1939 §4: "an exclusive-access lock"). The lock is
``flock(LOCK_EX | LOCK_NB)`` on ``sansmail-pop3.lock`` in the Maildir. flock locks belong
to the open file, so a second session in the same process is refused like one in another
process (``processes = N``), and the kernel drops the lock when the holder dies: a crash
never leaves a stale lock, which an ``O_EXCL`` file plus pid would (pids are reused, and
the check is racy). The lock file itself stays; it is empty and Maildir readers ignore
it. Deliveries and IMAP sessions never take it: they are not blocked.

Everything here blocks (file I/O): the adapter calls it from worker threads, one thread at
a time per `Maildrop`.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator
from typing import Any, Final, Protocol

import attrs

from sansmail.mail.address import MailboxId
from sansmail.storage.durable import fsync_dir
from sansmail.storage.maildir._imapindex import INDEX_NAME, FolderIndex
from sansmail.storage.maildir._imapmaildir import crlf_chunks, crlf_size, split_name
from sansmail.storage.maildir._maildir import MaildirStore
from sansmail.storage.maildir._quota import record as record_quota

__all__ = [
    "LOCK_NAME",
    "Expunged",
    "MaildirMaildrops",
    "Maildrop",
    "MaildropInUseError",
    "MaildropSource",
    "MessageGoneError",
    "MessageInfo",
    "MessageReader",
    "Pop3Maildrop",
    "crlf_chunks",
    "unique_id",
]

#: The lock file in the Maildir's root.
LOCK_NAME: Final = "sansmail-pop3.lock"
#: Octets read from a message file at a time.
READ_SIZE: Final = 128 * 1024

_SUBDIRS: Final = ("new", "cur")
_DIR_MODE: Final = 0o700
_FILE_MODE: Final = 0o600
# RFC 1939 §7: "unique-id ... consists of one to 70 characters in the range 0x21 to 0x7E".
_UIDL_OK: Final = re.compile(r"[!-~]{1,70}")
_ARRIVAL: Final = re.compile(r"([0-9]{1,12})\.(?:M([0-9]{1,9}))?")
_WIRE_SIZE: Final = re.compile(r",W=([0-9]{1,15})(?:,|$)")
# How often a message that keeps moving is looked for again before giving up.
_RELOCATE_ATTEMPTS: Final = 3


class MaildropInUseError(Exception):
    """Another POP3 session holds this maildrop (RFC 2449 §8.1.2: [IN-USE])."""


class MessageGoneError(Exception):
    """The message's file is in neither ``new/`` nor ``cur/`` any more."""


@attrs.frozen(kw_only=True)
class MessageInfo:
    """One message of the snapshot (of any `Pop3Maildrop`; what the fields hold for a
    Maildir is said here, for a database its store says)."""

    #: The file name, without its info part: stable across flag changes (the name the
    #: log lines give the message).
    base: str
    #: The unique-id listing's id (RFC 1939 §7): `base`, or its hash when it does not fit.
    uid: str
    #: Octets as sent, CRLF line ends (RFC 1939 §5).
    size: int
    #: Where the file was at the snapshot: "new" or "cur", and its full name there.
    folder: str
    name: str


@attrs.frozen(kw_only=True)
class Expunged:
    """What `Maildrop.expunge` did."""

    #: Files unlinked by us.
    removed: int = 0
    #: Marked messages another client had already removed.
    gone: int = 0
    #: Base names of messages whose file exists but could not be unlinked.
    failed: tuple[str, ...] = ()
    #: Files renamed by us to carry \Seen.
    seen: int = 0
    #: Base names of messages whose file exists but could not be renamed to carry \Seen.
    unmarked: tuple[str, ...] = ()


def unique_id(base: str) -> str:
    """The UIDL of a message whose base name is `base` (see the module docstring)."""
    if _UIDL_OK.fullmatch(base):
        return base
    raw = os.fsencode(base)
    return "H" + hashlib.sha256(raw).hexdigest()[:40]


def _wire_size(path: str) -> int:
    """The size of a file as sent: what `crlf_chunks` makes of it."""
    return crlf_size(path)


def _base_of(name: str) -> str:
    # Maildir: "unique:info"; the unique part never holds a ":" (writers escape it).
    return name.partition(":")[0]


def _seen_name(name: str) -> str | None:
    """The name in ``cur/`` of the file `name` once it carries \\Seen; None when it need
    not or must not be renamed (already S, or an info part that is not ``2,``)."""
    base, letters = split_name(name)
    if letters is None:
        return None if ":" in name else f"{base}:2,S"
    if "S" in letters:
        return None
    return f"{base}:2,{''.join(sorted({*letters, 'S'}))}"


class Pop3Maildrop(Protocol):
    """One POP3 session's hold on an INBOX (RFC 1939): the exclusive lock, taken when
    it was opened and kept until `close`, and the snapshot `messages`, fixed for the
    session. Blocking (worker threads), one thread at a time."""

    @property
    def messages(self) -> tuple[MessageInfo, ...]:
        """The snapshot, in arrival order: message number n is ``messages[n - 1]``."""
        ...

    def reader(self, message: MessageInfo, *, lines: int | None = None) -> MessageReader:
        """`message` in wire form for RETR, or with `lines` for TOP (RFC 1939 §7).
        `MessageGoneError` when another client removed it, OSError on failure."""
        ...

    def expunge(
        self, messages: Iterable[MessageInfo], *, seen: Iterable[MessageInfo] = ()
    ) -> Expunged:
        """QUIT in the UPDATE state (RFC 1939 §6): remove `messages` and mark `seen`
        \\Seen, durably before it returns; OSError when that could not be done."""
        ...

    def close(self) -> None:
        """Release the lock. Idempotent."""
        ...


class MaildropSource(Protocol):
    """Where POP3 sessions open maildrops."""

    def open_maildrop(self, mailbox: MailboxId) -> Pop3Maildrop:
        """Blocking: lock `mailbox`'s INBOX for one POP3 session and take the snapshot.
        `MaildropInUseError` when another session holds it, on any node; OSError when
        it cannot be opened."""
        ...


class MaildirMaildrops(MaildropSource):
    """Opens the Maildir INBOXes of `store` for POP3 sessions (`Maildrop.open`)."""

    def __init__(self, store: MaildirStore) -> None:
        self.store = store

    def open_maildrop(self, mailbox: MailboxId) -> Maildrop:
        return Maildrop.open(self.store.maildir(mailbox))


class Maildrop(Pop3Maildrop):
    """One POP3 session's view of a Maildir INBOX; see the module docstring.

    Use `Maildrop.open`; `close` (or the ``with`` block) releases the lock.
    """

    def __init__(self, root: str, lock_fd: int, messages: tuple[MessageInfo, ...]) -> None:
        self.root = root
        self._lock_fd = lock_fd
        self._messages = messages

    @property
    def messages(self) -> tuple[MessageInfo, ...]:
        """The snapshot, in arrival order: message number n is ``messages[n - 1]``."""
        return self._messages

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> Maildrop:
        """Lock the Maildir at `root` and take the snapshot. The Maildir is created
        when it does not exist yet (a user who never got mail). Raises `MaildropInUseError`
        when another session holds it, OSError when the disk says no."""
        path = os.fspath(root)
        for sub in ("", "tmp", *_SUBDIRS):
            os.makedirs(os.path.join(path, sub), _DIR_MODE, exist_ok=True)
        fd = os.open(
            os.path.join(path, LOCK_NAME),
            os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
            _FILE_MODE,
        )
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise MaildropInUseError(f"{path} is in use by another POP3 session") from None
            messages = _snapshot(path)
        except BaseException:
            os.close(fd)  # closing drops the lock too
            raise
        return cls(path, fd, messages)

    @property
    def closed(self) -> bool:
        return self._lock_fd < 0

    def close(self) -> None:
        """Release the lock. Idempotent."""
        fd, self._lock_fd = self._lock_fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> Maildrop:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def reader(
        self, message: MessageInfo, *, lines: int | None = None, read_size: int = READ_SIZE
    ) -> MessageReader:
        """Open `message` for sending: the whole message, or with `lines` the header,
        the blank line and that many body lines (RFC 1939 §7, TOP). Raises
        `MessageGoneError` when another client removed it meanwhile."""
        for _attempt in range(_RELOCATE_ATTEMPTS):
            path = self._find(message)
            if path is None:
                break
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except FileNotFoundError:
                continue  # renamed between the listing and the open: look again
            return MessageReader(fd, lines=lines, read_size=read_size)
        raise MessageGoneError(f"message {message.base} is no longer in {self.root}")

    def expunge(
        self, messages: Iterable[MessageInfo], *, seen: Iterable[MessageInfo] = ()
    ) -> Expunged:
        """Remove `messages` for good and mark `seen` \\Seen, then make both durable
        (RFC 1939 §6; see the module docstring)."""
        removed = gone = marked = octets = 0
        failed: list[str] = []
        unmarked: list[str] = []
        touched: set[str] = set()
        for message in messages:
            outcome = self._unlink(message)
            if outcome is None:
                gone += 1
            elif isinstance(outcome, OSError):
                failed.append(message.base)
            else:
                removed += 1
                octets += message.size
                touched.add(outcome)
        for message in seen:
            renamed = self._mark_seen(message)
            if isinstance(renamed, OSError):
                unmarked.append(message.base)
            elif renamed:
                marked += 1
                touched.update(renamed)
        for folder in sorted(touched):
            fsync_dir(os.path.join(self.root, folder))
        if removed and not os.path.exists(os.path.join(self.root, INDEX_NAME)):
            # Where there is an IMAP index, its next sync counts what went (`_quota`).
            record_quota(self.root, -octets, -removed)
        return Expunged(
            removed=removed,
            gone=gone,
            failed=tuple(failed),
            seen=marked,
            unmarked=tuple(unmarked),
        )

    # -- finding a message that may have moved ---------------------------------------------

    def _find(self, message: MessageInfo) -> str | None:
        """The path of `message` now: where the snapshot saw it, or wherever its base
        name is in ``new/`` or ``cur/``; None when it is in neither."""
        path = os.path.join(self.root, message.folder, message.name)
        if os.path.lexists(path):
            return path
        for folder in _SUBDIRS:
            directory = os.path.join(self.root, folder)
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                continue
            for name in names:
                if _base_of(name) == message.base and not name.startswith("."):
                    return os.path.join(directory, name)
        return None

    def _unlink(self, message: MessageInfo) -> str | OSError | None:
        # The folder a name was removed from, None when the message was already gone,
        # or the error that kept it there.
        for _attempt in range(_RELOCATE_ATTEMPTS):
            path = self._find(message)
            if path is None:
                return None
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue  # moved after we found it: find it again
            except OSError as exc:
                return exc
            return os.path.basename(os.path.dirname(path))
        return OSError(errno.EAGAIN, f"{message.base} keeps moving")

    def _mark_seen(self, message: MessageInfo) -> tuple[str, ...] | OSError:
        # The folders a name left and arrived in: empty when there was nothing to do (the
        # message is gone, or already seen), or the error that kept the file as it was.
        for _attempt in range(_RELOCATE_ATTEMPTS):
            path = self._find(message)
            if path is None:
                return ()
            folder, name = os.path.split(path)
            target = _seen_name(name)
            if target is None:
                return ()
            try:
                os.rename(path, os.path.join(self.root, "cur", target))
            except FileNotFoundError:
                continue  # renamed by someone else after we found it: find it again
            except OSError as exc:
                return exc
            return (os.path.basename(folder), "cur")
        return OSError(errno.EAGAIN, f"{message.base} keeps moving")


class MessageReader:
    """One message being read for RETR or TOP, in wire form, chunk by chunk: from the
    open file `fd`, or from `content` already in memory (a database's; `fd` -1)."""

    def __init__(
        self, fd: int, *, lines: int | None, read_size: int, content: bytes | None = None
    ) -> None:
        self._fd = fd
        self._read_size = read_size
        raw = self._raw() if content is None else _slices(content, read_size)
        self._chunks = crlf_chunks(raw)
        self._top = _TopFilter(lines) if lines is not None else None
        self._done = False

    @classmethod
    def of_content(
        cls, content: bytes, *, lines: int | None, read_size: int = READ_SIZE
    ) -> MessageReader:
        """A reader of `content` (the message's octets) instead of a file."""
        return cls(-1, lines=lines, read_size=read_size, content=content)

    def _raw(self) -> Iterator[bytes]:
        while data := os.read(self._fd, self._read_size):
            yield data

    def read(self) -> bytes:
        """The next chunk (CRLF line ends, not byte-stuffed); b"" at the end."""
        while not self._done:
            chunk = next(self._chunks, None)
            if chunk is None:
                self._done = True
                break
            if self._top is not None:
                chunk = self._top.feed(chunk)
                if self._top.done:
                    self._done = True
            if chunk:
                return chunk
        self.close()
        return b""

    def read_up_to(self, limit: int) -> bytes:
        """Chunks joined until `limit` octets or the end (then `done` is true): a small
        message comes whole from one call, which for a server that reads in a worker
        thread is one thread hop per message instead of one per chunk plus one to learn
        that there is no more."""
        parts: list[bytes] = []
        size = 0
        while size < limit and (chunk := self.read()):
            parts.append(chunk)
            size += len(chunk)
        return b"".join(parts)

    @property
    def done(self) -> bool:
        """Everything has been returned (and the file is closed)."""
        return self._done

    def close(self) -> None:
        """Close the file. Idempotent."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> MessageReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _slices(content: bytes, size: int) -> Iterator[bytes]:
    view = memoryview(content)
    for start in range(0, len(content), size):
        yield bytes(view[start : start + size])


class _TopFilter:
    """TOP's cut (RFC 1939 §7): everything up to the first empty line, that line, then
    `lines` lines, from CRLF-only chunks.

    The header's end is the first CRLF CRLF, found like `DotStuffer` finds dots: over the
    last three octets already seen plus the new chunk, starting as if after a CRLF so
    that a message beginning with an empty line has an empty header."""

    __slots__ = ("_lines", "_remaining", "_tail", "done")

    def __init__(self, lines: int) -> None:
        self._lines = lines
        self._remaining: int | None = None  # body lines still to send; None: in header
        self._tail = b"\r\n"
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        if self.done:
            return b""
        start = 0
        if self._remaining is None:
            window = self._tail + chunk
            end = window.find(b"\r\n\r\n")
            if end < 0:
                self._tail = window[-3:]
                return chunk
            start = end + 4 - len(self._tail)
            self._remaining = self._lines
        remaining = self._remaining
        if remaining == 0:
            self.done = True
            return chunk[:start]
        if chunk.count(b"\n", start) < remaining:
            self._remaining = remaining - chunk.count(b"\n", start)
            return chunk
        position = start
        for _ in range(remaining):
            position = chunk.index(b"\n", position) + 1
        self.done = True
        return chunk[:position]


# -- the snapshot --------------------------------------------------------------------------


class _NoIndexError(Exception):
    """The IMAP index would have to be created or rebuilt: not POP3's business."""


def _refuse() -> Any:
    raise _NoIndexError


def _indexed_snapshot(root: str) -> tuple[MessageInfo, ...] | None:
    """The snapshot from the IMAP index, or None when there is none that can be read."""
    if not os.path.exists(os.path.join(root, INDEX_NAME)):
        return None
    # Only storage reads the clock: the index's freshness margin needs it.
    index = FolderIndex(root, uidvalidity=_refuse, lock=_refuse, clock=time.time_ns)
    try:
        index.open(rebuild=False)
        index.refresh()
        with index.read() as conn:
            rows = conn.execute("SELECT base, name, size FROM messages").fetchall()
    except (sqlite3.Error, _NoIndexError, RuntimeError):
        return None  # damaged, unknown version, busy: list the directories instead
    finally:
        index.close()
    keyed = []
    for base, rel, size in rows:
        folder, name = rel[:3], rel[4:]
        arrival = _ARRIVAL.match(base)
        if arrival is not None:
            key = (int(arrival[1]), int(arrival[2] or 0), base)
        else:
            try:
                stat = os.stat(os.path.join(root, rel), follow_symlinks=False)
            except FileNotFoundError:
                continue  # gone since the index saw it
            key = (int(stat.st_mtime), stat.st_mtime_ns // 1000 % 1_000_000, base)
        info = MessageInfo(base=base, uid=unique_id(base), size=size, folder=folder, name=name)
        keyed.append((key, info))
    keyed.sort(key=lambda item: item[0])
    return tuple(info for _key, info in keyed)


def _snapshot(root: str) -> tuple[MessageInfo, ...]:
    indexed = _indexed_snapshot(root)
    return indexed if indexed is not None else _listed_snapshot(root)


def _listed_snapshot(root: str) -> tuple[MessageInfo, ...]:
    seen: dict[str, tuple[tuple[int, int, str], MessageInfo]] = {}
    for folder in _SUBDIRS:  # new/ first: see the module docstring
        directory = os.path.join(root, folder)
        with os.scandir(directory) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                base = _base_of(name)
                if not base or base in seen:
                    continue
                try:
                    info = _describe(directory, folder, name, base)
                except FileNotFoundError:
                    continue  # moved or removed since the listing; the other folder may show it
                seen[base] = info
    return tuple(info for _key, info in sorted(seen.values(), key=lambda item: item[0]))


def _describe(
    directory: str, folder: str, name: str, base: str
) -> tuple[tuple[int, int, str], MessageInfo]:
    path = os.path.join(directory, name)
    arrival = _ARRIVAL.match(base)
    if arrival is not None:
        key = (int(arrival[1]), int(arrival[2] or 0), base)
    else:
        stat = os.stat(path, follow_symlinks=False)
        key = (int(stat.st_mtime), stat.st_mtime_ns // 1000 % 1_000_000, base)
    wire = _WIRE_SIZE.search(base)
    size = int(wire[1]) if wire is not None else _wire_size(path)
    message = MessageInfo(base=base, uid=unique_id(base), size=size, folder=folder, name=name)
    return key, message
