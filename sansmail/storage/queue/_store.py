"""`QueueStore`: the outbound queue on disk, under ``<data_dir>/queue/``, written so that
a message accepted with ``250`` survives ``kill -9`` and power loss.

Theory of operation
-------------------
Each message is one file, ``<id>.q``, in one flat directory: its content exactly as
received (CRLF line ends, what the next hop will be sent) and its envelope (sender, DSN
parameters, the state of every recipient) after it, in the layout of `_format.py`.

**Writing a message** (`QueueWriter.commit`, before the ``250``) costs one file and two
fsyncs: the file is created under its final name, locked (``flock``) while it is
written, given its content and first envelope record (in one ``write`` when the message
was buffered whole), fsync'd, checked to be still linked, closed, and the directory
fsync'd so its name is on disk too. Format 1 (sansmail 0.1) wrote a content file and an
envelope file, each through a tmp file and a rename: three fsyncs and two renames.

A file is **committed** when its header and an envelope record are whole and its
content matches the header's checksum. A crash before the commit's fsync returned (so
no ``250`` went out) leaves a file that is not: empty, cut short, with the placeholder
header of a message written in pieces, or with pages that never reached the disk.
Readers treat a file without a header (`load`: not queued) or without an envelope
(damaged) accordingly, the queue runner checks the content's checksum before sending
it, and `recover` removes what was never committed and sets aside, in ``corrupt/``
(Postfix's ``corrupt`` queue), what it cannot read: deleting that could lose mail.

**The lock on each file.** A writer holds ``flock(LOCK_EX)`` on its file from creation
until the commit has checked that the file is still linked; `recover` and `set_aside`
skip a file they cannot lock, so a server process still finishing a transaction while a
new server starts (the old one was killed) never sees its file removed under it, and
the link check catches anything else that removed it (``queue delete``): such a commit
fails, so no ``250`` is sent for mail that is gone. Creating a file and locking it are
two system calls, and a queue runner starting (or replacing a dead one) beside live
server processes may look at the file between them: `recover` then finds it unlocked
and empty. So it removes a file that was never committed only when the process that
named it (the pid inside every queue id, `new_id`) is gone; and a writer that finds its
new file locked waits for the lock, which `recover` holds only to read the file.

**After an attempt** (`update`), the new envelope is appended as one more record and
the file ``fdatasync``'d: one write, no rename, no directory fsync. A record cut short
by a crash reads as absent, so a reader finds the old envelope or the new one, whole,
and per-recipient state is never half-written; the next record is written where the
last whole one ends. When the records outgrow `COMPACT_AT` (a message retried for days
to many recipients), the file is rewritten whole under a tmp name and renamed over the
old one, holding the old file's lock so that a concurrent `delete` cannot be undone.

**Removing** (`delete`) unlinks the file (under its lock, for the same reason) and
fsyncs the directory; `delete(..., sync=False)` leaves the fsync to one `sync` for a
batch, which the queue runner uses to record a batch of deliveries with one directory
fsync. The message is gone from the moment of the unlink.

`list` reads the directory and returns only committed messages, oldest first, so
``queue list`` works while the server runs. Format-1 pairs are read too (`_legacy.py`)
and converted by `recover`.

``queue flush`` reaches the running server through the file system: `request_flush`
creates the file ``flush`` in the queue directory, and the runner's `take_flush_request`
removes it and retries everything deferred. A file needs no socket, no pid and no
signal, and a request made while the server is down waits for it. The queue runner
holds ``flock`` on the file ``lock`` (`lock`) for as long as it runs, so two runners
never deliver from one queue, and a server starting after a crash waits for the old
runner to be gone before `recover` looks at the files.

Like `MaildirStore`, this does blocking file I/O and is meant to be called from worker
threads; it keeps no in-memory locks (the package imports no threading) and shares only
an `itertools.count`, whose single step is atomic under the GIL.
"""

from __future__ import annotations

import builtins
import errno
import fcntl
import itertools
import os
import pathlib
import time
import zlib
from collections.abc import Callable
from typing import Final

import attrs

from sansmail.mail.envelope import (
    CorruptEnvelopeError,
    QueuedMessage,
    check_queue_id,
    decode_envelope,
    encode_envelope,
)
from sansmail.storage.durable import fsync_dir as _fsync_dir
from sansmail.storage.durable import unlink_quietly as _unlink_quietly
from sansmail.storage.durable import write_all as _write_all
from sansmail.storage.queue import _legacy
from sansmail.storage.queue._format import (
    MAGIC,
    PLACEHOLDER,
    PREFIX,
    Head,
    content_head,
    envelope_record,
    parse_head,
    parse_records,
)

__all__ = ["COMPACT_AT", "QueueStore", "QueueWriter", "UnknownQueueIdError"]

_DIR_MODE: Final = 0o700
_FILE_MODE: Final = 0o600
_O_CREATE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
_O_READ: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
_QF: Final = ".q"
_TMP: Final = ".tmp"
_CORRUPT: Final = "corrupt"
# The flush request and the runner's lock: lower case, so never a queue id (upper-case
# letters and digits), and without a dot, so `list` and `recover` pass them by as they
# pass by ``corrupt/``.
_FLUSH: Final = "flush"
_LOCK: Final = "lock"
#: Files up to this size are read whole; past it, only the header and the records.
_READ_WHOLE: Final = 64 * 1024
#: When the envelope records pass this many octets, the next update rewrites the file.
COMPACT_AT: Final = 256 * 1024


class UnknownQueueIdError(LookupError):
    """No message with this queue id is in the queue (any more)."""


def _is_queue_id(text: str) -> bool:
    try:
        check_queue_id(text)
    except ValueError:
        return False
    return True


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _writer_alive(queue_id: str) -> bool:
    """Whether the process that named `queue_id` (`QueueStore.new_id`: the pid is the
    five hex digits before the counter's three) still runs, ourselves excepted: the
    caller of `recover` writes nothing before it returns. A pid reused since, or one
    above 0xFFFFF, can only keep a leftover until the next start, never remove a file
    being written."""
    if len(queue_id) < 16:
        return False  # not of new_id's making (tests', format 1's)
    try:
        pid = int(queue_id[-8:-3], 16)
    except ValueError:
        return False
    if pid in (0, os.getpid() & 0xFFFFF):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: it exists, under another user
    return True


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@attrs.frozen
class _Parsed:
    head: Head
    message: QueuedMessage
    #: Where the next record goes, and the file's size.
    end: int
    size: int
    content: bytes | None = None


class QueueStore:
    """The queue directory `root` (``<data_dir>/queue``); see the module docstring.

    `clock` (seconds since the epoch) is read only by `new_id`.
    """

    def __init__(self, root: pathlib.Path, *, clock: Callable[[], float] = time.time) -> None:
        self.root = pathlib.Path(root)
        self._dir = os.fspath(self.root)
        self._clock = clock
        self._counter = itertools.count(1)
        self._made = False
        #: Whether the queue may hold format-1 pairs (None: not looked yet); see `begin`.
        self._legacy_pairs: bool | None = None

    # -- writing and reading messages --------------------------------------------------

    def new_id(self) -> str:
        """A fresh queue id: microseconds since the epoch, the pid and a counter, in
        upper-case hex, so ids sort roughly by arrival and never repeat across restarts
        (unless the clock steps back, which `begin` then catches)."""
        micros = int(self._clock() * 1_000_000)
        return f"{micros:X}{os.getpid() & 0xFFFFF:05X}{next(self._counter) & 0xFFF:03X}"

    def begin(self, queue_id: str) -> QueueWriter:
        """Start writing a new message; FileExistsError if `queue_id` is in use, here
        for a format-1 pair, and from the writer's `flush` or `commit` for a message
        file, which it creates with ``O_EXCL``."""
        check_queue_id(queue_id)
        self._ensure_dir()
        # No lookup of our own file: O_EXCL refuses it at creation, race-free, and an
        # intake starting a message spares the loop's thread the system calls. Format-1
        # pairs are looked up only in a queue that held one at the first `begin`:
        # nothing writes that format any more, so one listing settles it for good.
        if self._legacy_pairs is None:
            self._legacy_pairs = _has_legacy_pairs(self._dir)
        if self._legacy_pairs and any(
            os.path.lexists(self._path(queue_id, s)) for s in (_legacy.ENV, _legacy.MSG)
        ):
            raise FileExistsError(errno.EEXIST, f"queue id {queue_id} is in use")
        return QueueWriter(self, queue_id)

    def load(self, queue_id: str) -> QueuedMessage:
        """The envelope of `queue_id`; UnknownQueueIdError if it is not queued (or not
        committed yet), CorruptEnvelopeError if it cannot be read."""
        return self._read(queue_id, content=False).message

    def read_message(self, queue_id: str) -> bytes:
        """The content of `queue_id`, CRLF line ends, as received."""
        return self.read(queue_id)[1]

    def read(self, queue_id: str) -> tuple[QueuedMessage, bytes]:
        """The envelope and the content of `queue_id`, from one read of its file;
        UnknownQueueIdError as `load`, CorruptEnvelopeError also when the content does
        not match its checksum."""
        parsed = self._read(queue_id, content=True)
        assert parsed.content is not None
        return parsed.message, parsed.content

    def update(self, message: QueuedMessage) -> None:
        """Record a new envelope for a queued message (one appended record, fdatasync);
        UnknownQueueIdError if it was deleted meanwhile."""
        queue_id = message.queue_id
        check_queue_id(queue_id)
        path = self._path(queue_id, _QF)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            self._convert(queue_id, message)
            return
        try:
            head, end, size = self._locate(fd, queue_id)
            record = envelope_record(encode_envelope(message))
            if end - head.records + len(record) > COMPACT_AT:
                self._compact(fd, path, head, record)
                return
            _pwrite_all(fd, record, end)
            if end + len(record) < size:
                # Debris of a record that was cut short: gone, so nothing follows ours.
                os.ftruncate(fd, end + len(record))
            os.fdatasync(fd)
            if os.fstat(fd).st_nlink == 0:  # deleted while we wrote
                raise UnknownQueueIdError(queue_id)
        finally:
            os.close(fd)

    def delete(self, queue_id: str, *, sync: bool = True) -> None:
        """Remove a message. `sync=False` leaves the directory fsync that makes the
        removal durable to a later `sync` (several removals, one fsync)."""
        check_queue_id(queue_id)
        path = self._path(queue_id, _QF)
        while True:
            try:
                fd = os.open(path, _O_READ)
            except FileNotFoundError:
                if not _legacy.delete(self._dir, queue_id):
                    raise UnknownQueueIdError(queue_id) from None
                break
            try:
                # Waits out a compaction, and then removes the file that replaced the
                # one we opened, not the one it replaced.
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    current = os.stat(path, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted meanwhile: the next open says so
                opened = os.fstat(fd)
                if (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino):
                    continue
                os.unlink(path)
                break
            finally:
                os.close(fd)
        if sync:
            self.sync()

    def sync(self) -> None:
        """Make every name change so far durable (one directory fsync): the messages
        committed with ``sync=False``, the removals made with ``sync=False``."""
        _fsync_dir(self._dir)

    def set_aside(self, queue_id: str) -> bool:
        """Move a damaged message to ``corrupt/``; False when its file is being written
        (locked), which a damaged one never is."""
        check_queue_id(queue_id)
        path = self._path(queue_id, _QF)
        try:
            fd = os.open(path, _O_READ)
        except FileNotFoundError:
            return False
        try:
            if not _try_lock(fd):
                return False
            corrupt = self._corrupt_dir()
            os.replace(path, os.path.join(corrupt, queue_id + _QF))
            _fsync_dir(corrupt)
            _fsync_dir(self._dir)
        finally:
            os.close(fd)
        return True

    # -- the directory ------------------------------------------------------------------

    def ids(self) -> set[str]:
        """The id of every message file, committed or being written; one directory
        listing."""
        found = set()
        for name in self._names():
            stem, dot, kind = name.partition(".")
            if dot and kind in ("q", "env"):
                found.add(stem)
        return found

    def list(self) -> builtins.list[QueuedMessage]:
        """Every committed, readable message, oldest first (by arrival, then id)."""
        found = []
        for queue_id in self.ids():
            try:
                found.append(self.load(queue_id))
            except (UnknownQueueIdError, CorruptEnvelopeError, ValueError, OSError):
                # Being written, deleted meanwhile, for `recover` to set aside, or not
                # readable at all (`recover` logs it): the others are listed all the same.
                continue
        found.sort(key=lambda message: (message.arrival, message.queue_id))
        return found

    def request_flush(self) -> None:
        """Ask the queue runner to retry every deferred message now (``queue flush``,
        Postfix's ``postqueue -f``): create the trigger file ``flush`` in the queue
        directory and fsync the directory, so a request made just before a crash is
        still honoured after it. Making it twice is one request. FileNotFoundError if
        the queue directory does not exist (nothing was ever queued): creating it here
        could leave it owned by whoever ran the command rather than by the server."""
        path = os.path.join(self._dir, _FLUSH)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, _FILE_MODE)
        os.close(fd)
        _fsync_dir(self._dir)

    def take_flush_request(self) -> bool:
        """Remove the flush request; True if there was one. The runner polls this about
        once a second. No fsync: should a crash bring the request back, the runner
        flushes once more, which is harmless."""
        try:
            os.unlink(os.path.join(self._dir, _FLUSH))
        except FileNotFoundError:
            return False
        return True

    def lock(self, *, wait: bool = True) -> int | None:
        """Take the queue runner's lock (``flock`` on the file ``lock``) and return its
        file descriptor; closing it, or exiting, lets go. With `wait` false, None when
        another process holds it."""
        self._ensure_dir()
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(os.path.join(self._dir, _LOCK), flags, _FILE_MODE)
        try:
            if wait:
                fcntl.flock(fd, fcntl.LOCK_EX)
            elif not _try_lock(fd):
                os.close(fd)
                return None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def recover(self) -> builtins.list[str]:
        """Clean up after a crash; call at start, under `lock`, before the queue runner
        runs (a server process still writing is safe: its files are locked).

        Removes tmp files and files that were never committed, moves committed-looking
        files that do not read to ``corrupt/``, converts format-1 pairs into format-2
        files, and cleans up what format 1 could leave. Returns what it did, one entry
        per file (``<name>: <what was done and why>``), sorted, for the log.
        """
        names = self._names()
        acted: builtins.list[str] = []
        # Format-2 files first, so a conversion cut short is finished (its pair
        # removed) before the pairs are looked at.
        for name in sorted(names):
            queue_id, _, kind = name.partition(".")
            if not _is_queue_id(queue_id):
                continue  # not ours: leave it alone
            if name.endswith(_TMP):
                _unlink_quietly(os.path.join(self._dir, name))
                names.discard(name)
                acted.append(f"{name}: removed (a temporary file)")
            elif kind == "q":
                self._recover_file(queue_id, names, acted)
        for name in sorted(names):
            queue_id, _, kind = name.partition(".")
            if not _is_queue_id(queue_id) or name not in names:
                continue  # not ours, or dealt with as part of its pair
            if kind == "msg" and queue_id + _legacy.ENV not in names:
                _unlink_quietly(os.path.join(self._dir, name))  # format 1: an orphan
                acted.append(f"{name}: removed (content whose envelope was never written)")
            elif kind == "env":
                self._recover_pair(queue_id, names, acted)
        if acted:
            _fsync_dir(self._dir)
        return sorted(acted)

    # -- internals -------------------------------------------------------------------------

    def _path(self, queue_id: str, suffix: str) -> str:
        return os.path.join(self._dir, queue_id + suffix)

    def _ensure_dir(self) -> None:
        if self._made:
            return
        # The queue directory's own entry must be durable before any message in it is.
        os.makedirs(self._dir, _DIR_MODE, exist_ok=True)
        _fsync_dir(os.path.dirname(os.path.abspath(self._dir)))
        self._made = True

    def _corrupt_dir(self) -> str:
        corrupt = os.path.join(self._dir, _CORRUPT)
        os.makedirs(corrupt, _DIR_MODE, exist_ok=True)
        return corrupt

    def _names(self) -> set[str]:
        try:
            return set(os.listdir(self._dir))
        except FileNotFoundError:
            return set()

    def _read(self, queue_id: str, *, content: bool) -> _Parsed:
        check_queue_id(queue_id)
        try:
            fd = os.open(self._path(queue_id, _QF), _O_READ)
        except FileNotFoundError:
            return self._read_legacy(queue_id, content=content)
        try:
            size = os.fstat(fd).st_size
            if content or size <= _READ_WHOLE:
                data = _pread_all(fd, size, 0)
                head = self._head(queue_id, data)
                area = data[head.records :]
            else:
                data = b""
                head = self._head(queue_id, os.pread(fd, PREFIX, 0))
                area = _pread_all(fd, size - head.records, head.records)
        finally:
            os.close(fd)
        if size < head.records:
            raise CorruptEnvelopeError(f"{queue_id}: the content is cut short")
        records = parse_records(area)
        if records.envelope is None:
            raise CorruptEnvelopeError(f"{queue_id}: no whole envelope record")
        message = decode_envelope(records.envelope)
        if message.queue_id != queue_id:
            raise CorruptEnvelopeError(f"envelope of {queue_id} names {message.queue_id}")
        body = None
        if content:
            body = data[PREFIX : head.records]
            if zlib.crc32(body) != head.crc:
                raise CorruptEnvelopeError(f"{queue_id}: the content does not match its checksum")
        return _Parsed(head, message, head.records + records.end, size, body)

    def _head(self, queue_id: str, data: bytes) -> Head:
        try:
            head = parse_head(data)
        except ValueError as exc:
            raise CorruptEnvelopeError(f"{queue_id}: {exc}") from None
        if head is None:
            raise UnknownQueueIdError(queue_id)  # still being written
        return head

    def _read_legacy(self, queue_id: str, *, content: bool) -> _Parsed:
        try:
            message = _legacy.load(self._dir, queue_id)
        except FileNotFoundError:
            raise UnknownQueueIdError(queue_id) from None
        try:
            if content:
                body: bytes | None = _legacy.read_message(self._dir, queue_id)
            elif os.path.lexists(self._path(queue_id, _legacy.MSG)):
                body = None
            else:
                raise FileNotFoundError(queue_id)
        except FileNotFoundError:
            raise CorruptEnvelopeError(f"{queue_id}: an envelope without content") from None
        size = len(body) if body is not None else message.size
        return _Parsed(Head(length=size, crc=0), message, 0, 0, body)

    def _locate(self, fd: int, queue_id: str) -> tuple[Head, int, int]:
        """The header of the open file `fd`, where its next record goes, its size."""
        size = os.fstat(fd).st_size
        head = self._head(queue_id, os.pread(fd, PREFIX, 0))
        records = parse_records(_pread_all(fd, size - head.records, head.records))
        if records.envelope is None:
            raise CorruptEnvelopeError(f"{queue_id}: no whole envelope record")
        return head, head.records + records.end, size

    def _compact(self, fd: int, path: str, head: Head, record: bytes) -> None:
        # Under the old file's lock: a `delete` waiting for it then removes the new file.
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink == 0:
            raise UnknownQueueIdError(os.path.basename(path).partition(".")[0])
        body = _pread_all(fd, head.length, PREFIX)
        tmp = f"{path}.{os.getpid()}-{next(self._counter)}{_TMP}"
        self._write_new(tmp, [MAGIC, content_head(head.length, head.crc), body, record])
        try:
            os.replace(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        _fsync_dir(self._dir)

    def _write_new(self, path: str, parts: builtins.list[bytes]) -> None:
        """Create `path` with `parts`, durably (file fsync; the caller names it)."""
        fd = os.open(path, _O_CREATE, _FILE_MODE)
        try:
            _write_all(fd, b"".join(parts))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink_quietly(path)
            raise
        os.close(fd)

    def _convert(self, queue_id: str, message: QueuedMessage) -> None:
        """Rewrite a format-1 pair as a format-2 file with envelope `message`: the new
        file written under a tmp name, made durable and named, then the pair removed (a
        crash in between leaves both, and `recover` keeps the new one)."""
        try:
            body = _legacy.read_message(self._dir, queue_id)
            if not os.path.lexists(self._path(queue_id, _legacy.ENV)):
                raise FileNotFoundError(queue_id)
        except FileNotFoundError:
            raise UnknownQueueIdError(queue_id) from None
        record = envelope_record(encode_envelope(message))
        head = content_head(len(body), zlib.crc32(body))
        path = self._path(queue_id, _QF)
        tmp = f"{path}.{os.getpid()}-{next(self._counter)}{_TMP}"
        self._write_new(tmp, [MAGIC, head, body, record])
        try:
            os.rename(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        _fsync_dir(self._dir)
        _legacy.delete(self._dir, queue_id)
        _fsync_dir(self._dir)

    def _recover_file(self, queue_id: str, names: set[str], acted: builtins.list[str]) -> None:
        name = queue_id + _QF
        path = os.path.join(self._dir, name)
        try:
            fd = os.open(path, _O_READ)
        except FileNotFoundError:
            return
        try:
            if not _try_lock(fd):
                return  # a live process is writing it
            try:
                self._read(queue_id, content=False)
            except UnknownQueueIdError:
                if _writer_alive(queue_id):
                    return  # created a moment ago, not locked yet (module docstring)
                # Cut short before its commit's fsync: no 250 was ever sent for it.
                os.unlink(path)
                names.discard(name)
                acted.append(f"{name}: removed (half-written, never committed)")
                return
            except (CorruptEnvelopeError, ValueError) as exc:
                # A format-1 pair beside it is older than it: set aside together.
                suffixes = (_QF, _legacy.MSG, _legacy.ENV)
                self._move_aside(queue_id, suffixes, names, acted, _why(exc, queue_id))
                return
            except OSError as exc:
                # Not ours to judge (a directory, an I/O error): the runner goes on
                # without it, and the log says where to look.
                acted.append(f"{name}: left alone, cannot be read ({exc.strerror or exc})")
                return
        finally:
            os.close(fd)
        # A format-1 pair beside a whole format-2 file: a conversion that was cut short.
        for suffix in (_legacy.ENV, _legacy.MSG):
            if queue_id + suffix in names:
                _unlink_quietly(self._path(queue_id, suffix))
                names.discard(queue_id + suffix)
                acted.append(f"{queue_id}{suffix}: removed (converted to {name} already)")

    def _recover_pair(self, queue_id: str, names: set[str], acted: builtins.list[str]) -> None:
        if not _legacy.readable(self._dir, queue_id, names):
            # Content first: if we crash in between, the envelope is still in the queue
            # and the next `recover` finishes the move.
            why = "a format-1 envelope that does not read, or without its content"
            self._move_aside(queue_id, (_legacy.MSG, _legacy.ENV), names, acted, why)
            return
        self._convert(queue_id, _legacy.load(self._dir, queue_id))
        names.discard(queue_id + _legacy.MSG)
        acted.append(f"{queue_id}{_legacy.ENV}, {queue_id}{_legacy.MSG}: now {queue_id}{_QF}")

    def _move_aside(
        self,
        queue_id: str,
        suffixes: tuple[str, ...],
        names: set[str],
        acted: builtins.list[str],
        why: str,
    ) -> None:
        corrupt = self._corrupt_dir()
        for suffix in suffixes:
            name = queue_id + suffix
            if name in names:
                os.replace(os.path.join(self._dir, name), os.path.join(corrupt, name))
                names.discard(name)
                acted.append(f"{name}: set aside in {_CORRUPT}/ ({why})")
        _fsync_dir(corrupt)


def _why(exc: Exception, queue_id: str) -> str:
    """The reason `exc` gives, without the queue id it starts with."""
    return str(exc).removeprefix(f"{queue_id}: ") or type(exc).__name__


def _has_legacy_pairs(directory: str) -> bool:
    with os.scandir(directory) as entries:
        return any(entry.name.endswith((_legacy.ENV, _legacy.MSG)) for entry in entries)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


class QueueWriter:
    """One message being written into the queue. Content is buffered in memory until
    `flush` (called by the adapter when `pending` grows) or `commit`."""

    def __init__(self, store: QueueStore, queue_id: str) -> None:
        self.queue_id = queue_id
        self._store = store
        self._path = store._path(queue_id, _QF)
        self._chunks: list[bytes] = []
        self._pending = 0
        self._size = 0
        self._crc = 0
        self._fd = -1
        self._created = False
        self._done = False

    @property
    def size(self) -> int:
        """Octets written so far, buffered or not."""
        return self._size

    @property
    def pending(self) -> int:
        """Octets buffered in memory, not yet handed to the file."""
        return self._pending

    def write(self, data: bytes) -> None:
        """Append content (CRLF line ends, as it will be sent on)."""
        if self._done:
            raise RuntimeError("write after commit or abort")
        if data:
            self._chunks.append(bytes(data))
            self._pending += len(data)
            self._size += len(data)

    def flush(self) -> None:
        """Hand the buffered content to the file (no fsync: `commit` does that). The
        file has the placeholder header until the commit."""
        if self._done:
            raise RuntimeError("flush after commit or abort")
        if self._fd < 0:
            self._create(MAGIC + PLACEHOLDER)
        if self._chunks:
            data = b"".join(self._chunks)
            self._chunks = []
            self._pending = 0
            self._crc = zlib.crc32(data, self._crc)
            _write_all(self._fd, data)

    def commit(self, envelope: QueuedMessage, *, sync: bool = True) -> QueuedMessage:
        """Make the message durable (see the module docstring) and return the envelope
        as stored, with `size` set to the octets written. Only after this returns may
        the client be told ``250``; with `sync=False`, only after the caller's next
        `QueueStore.sync`, which then makes the names of several messages durable with
        one directory fsync (a group commit)."""
        if self._done:
            raise RuntimeError("commit after commit or abort")
        if envelope.queue_id != self.queue_id:
            raise ValueError(f"envelope for {envelope.queue_id} given to {self.queue_id}")
        stored = attrs.evolve(envelope, size=self._size)
        record = envelope_record(encode_envelope(stored))
        try:
            if self._fd < 0:
                # Buffered whole: the file in one write, its header right from the start.
                data = b"".join(self._chunks)
                self._chunks = []
                head = content_head(len(data), zlib.crc32(data))
                self._create(b"".join((MAGIC, head, data, record)))
            else:
                self.flush()
                _write_all(self._fd, record)
                _pwrite_all(self._fd, content_head(self._size, self._crc), len(MAGIC))
            os.fsync(self._fd)
            if os.fstat(self._fd).st_nlink == 0:
                raise OSError(errno.ENOENT, f"queue file {self.queue_id} was removed")
            os.close(self._fd)  # lets go of the lock: the file is whole on disk
            self._fd = -1
            if sync:
                _fsync_dir(self._store._dir)
        except BaseException:
            self.abort()
            raise
        self._done = True
        return stored

    def abort(self) -> None:
        """Forget the message; safe to call at any time, more than once."""
        if self._done:
            return
        self._done = True
        self._chunks = []
        self._pending = 0
        if self._created:
            # Unlinked before the lock goes, so no one sees a half-written file
            # unlocked. Should the unlink fail, `recover` finds the file at the next
            # start: without a committed header it is removed.
            _unlink_quietly(self._path)
            self._created = False
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _create(self, first: bytes) -> None:
        fd = os.open(self._path, _O_CREATE, _FILE_MODE)
        self._fd = fd
        self._created = True
        # A new file: no one else holds its lock, unless `recover` or `queue delete`
        # opened it between our open and this flock. `recover` only reads it (our pid
        # is alive) and lets go; a delete removes it, which the commit's link check sees.
        fcntl.flock(fd, fcntl.LOCK_EX)
        _write_all(fd, first)
