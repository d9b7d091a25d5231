"""`QueueStore`: the outbound queue on disk, under ``<data_dir>/queue/``, written so that
a message accepted with ``250`` survives ``kill -9`` and power loss.

Theory of operation
-------------------
Each message is a pair of files in one flat directory: ``<id>.msg``, the content exactly
as received (CRLF line ends, what the next hop will be sent), and ``<id>.env``, the JSON
envelope (`_envelope.py`): sender, DSN parameters and the state of every recipient.

**The envelope is the commit point.** A message is in the queue exactly when its envelope
file exists. `QueueWriter.commit` therefore runs, returning only after the last step:

1. write the rest of the content to ``<id>.msg.<n>.tmp``, fsync it, close it;
2. write the envelope to ``<id>.env.<n>.tmp``, fsync it, close it;
3. rename the content into ``<id>.msg``, then the envelope into ``<id>.env``;
4. fsync the directory, so both names are on disk.

Both files are on disk before either name exists, and the journalling file systems we
run on (ext4, XFS) commit the two renames of one directory in order, so a crash leaves
nothing, tmp files, an orphan ``<id>.msg``, or the whole message; never an envelope
without its content (should a file system reorder them, `recover` sets that envelope
aside rather than queue mail it cannot send). The ``250`` is sent only after `commit` returns, so in
every partial case the client did not hear "accepted" and will send again.

`update` replaces the envelope the same way (tmp, fsync, rename over, fsync directory):
``rename(2)`` is atomic, so after a crash a reader finds the old envelope or the new one,
whole, and per-recipient state is never half-written. `delete` removes the envelope
first (the message is gone from that moment) and the content after, so a crash between
the two leaves only an orphan. Temporary names carry a per-process counter, so two
updates of one message (the queue runner and ``queue flush``) cannot write one tmp file.

`recover`, called once at start while no one else writes, removes what a crash can
leave: tmp files and orphan contents. It also sets aside, in ``corrupt/``, envelopes it
cannot read or whose content is missing (damage from outside, or a downgrade), as
Postfix's ``corrupt`` queue does: deleting them could lose mail, and a queue runner that
trips on them at every pass helps nobody.

`list` reads the directory and returns only entries whose envelope reads and whose
content exists, oldest first, so ``queue list`` works while the server runs.

``queue flush`` reaches the running server through the file system too: `request_flush`
creates the file ``flush`` in the queue directory, and the runner's `take_flush_request`
removes it and retries everything deferred. A file needs no socket, no pid and no
signal, works for several server processes (the first to take it flushes), and a
request made while the server is down waits for it.

Like `MaildirStore`, this does blocking file I/O and is meant to be called from worker
threads; it holds no locks (the package imports no threading) and shares only an
`itertools.count`, whose single step is atomic under the GIL.
"""

from __future__ import annotations

import builtins
import errno
import itertools
import os
import pathlib
import time
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

__all__ = ["QueueStore", "QueueWriter", "UnknownQueueIdError"]

_DIR_MODE: Final = 0o700
_FILE_MODE: Final = 0o600
_O_CREATE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
_MSG: Final = ".msg"
_ENV: Final = ".env"
_TMP: Final = ".tmp"
_CORRUPT: Final = "corrupt"
# The flush request: lower case, so never a queue id (upper-case letters and digits), and
# without a dot, so `list` and `recover` pass it by as they pass by ``corrupt/``.
_FLUSH: Final = "flush"


class UnknownQueueIdError(LookupError):
    """No message with this queue id is in the queue (any more)."""


def _is_queue_id(text: str) -> bool:
    try:
        check_queue_id(text)
    except ValueError:
        return False
    return True


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

    # -- public API -----------------------------------------------------------------

    def new_id(self) -> str:
        """A fresh queue id: microseconds since the epoch, the pid and a counter, in
        upper-case hex, so ids sort roughly by arrival and never repeat across restarts
        (unless the clock steps back, which `begin` then catches)."""
        micros = int(self._clock() * 1_000_000)
        return f"{micros:X}{os.getpid() & 0xFFFFF:05X}{next(self._counter) & 0xFFF:03X}"

    def begin(self, queue_id: str) -> QueueWriter:
        """Start writing a new message; FileExistsError if `queue_id` is in use."""
        check_queue_id(queue_id)
        self._ensure_dir()
        if os.path.lexists(self._path(queue_id, _ENV)) or os.path.lexists(
            self._path(queue_id, _MSG)
        ):
            raise FileExistsError(errno.EEXIST, f"queue id {queue_id} is in use")
        return QueueWriter(self, queue_id)

    def load(self, queue_id: str) -> QueuedMessage:
        """The envelope of `queue_id`; UnknownQueueIdError if it is not queued,
        CorruptEnvelopeError if its envelope cannot be read."""
        check_queue_id(queue_id)
        try:
            with open(self._path(queue_id, _ENV), "rb") as file:
                data = file.read()
        except FileNotFoundError:
            raise UnknownQueueIdError(queue_id) from None
        message = decode_envelope(data)
        if message.queue_id != queue_id:
            raise CorruptEnvelopeError(f"envelope of {queue_id} names {message.queue_id}")
        return message

    def read_message(self, queue_id: str) -> bytes:
        """The content of `queue_id`, CRLF line ends, as received."""
        check_queue_id(queue_id)
        try:
            with open(self._path(queue_id, _MSG), "rb") as file:
                return file.read()
        except FileNotFoundError:
            raise UnknownQueueIdError(queue_id) from None

    def update(self, message: QueuedMessage) -> None:
        """Atomically replace the envelope of a queued message (tmp, fsync, rename,
        fsync directory); UnknownQueueIdError if it was deleted meanwhile."""
        queue_id = message.queue_id
        env = self._path(queue_id, _ENV)
        if not os.path.lexists(env):
            raise UnknownQueueIdError(queue_id)
        tmp = self._write_tmp(queue_id, _ENV, encode_envelope(message))
        try:
            os.replace(tmp, env)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        # A `delete` may have run between the check above and the rename: the rename then
        # brought back an envelope whose content is gone. Take it away again.
        if not os.path.lexists(self._path(queue_id, _MSG)):
            _unlink_quietly(env)
            _fsync_dir(self._dir)
            raise UnknownQueueIdError(queue_id)
        _fsync_dir(self._dir)

    def delete(self, queue_id: str) -> None:
        """Remove a message: the envelope first (the commit point), then the content."""
        check_queue_id(queue_id)
        try:
            os.unlink(self._path(queue_id, _ENV))
        except FileNotFoundError:
            raise UnknownQueueIdError(queue_id) from None
        _unlink_quietly(self._path(queue_id, _MSG))
        _fsync_dir(self._dir)

    def ids(self) -> set[str]:
        """The id of every message with an envelope, complete or being written; one
        directory listing."""
        return {name[: -len(_ENV)] for name in self._names() if name.endswith(_ENV)}

    def list(self) -> builtins.list[QueuedMessage]:
        """Every complete, readable message, oldest first (by arrival, then id)."""
        names = self._names()
        found = []
        for name in names:
            queue_id, dot, kind = name.partition(".")
            if not dot or "." + kind != _ENV or queue_id + _MSG not in names:
                continue
            try:
                found.append(self.load(queue_id))
            except (UnknownQueueIdError, CorruptEnvelopeError, ValueError):
                continue  # deleted meanwhile, or for `recover` to set aside
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

    def recover(self) -> builtins.list[str]:
        """Clean up after a crash; call at start, before anyone else uses the queue.

        Removes tmp files and contents without an envelope, moves unreadable envelopes
        and envelopes without content (with whatever content they have) to
        ``corrupt/``. Returns the file names acted on, sorted, for the log.
        """
        names = self._names()
        acted: builtins.list[str] = []
        for name in sorted(names):
            path = os.path.join(self._dir, name)
            queue_id, _, kind = name.partition(".")
            if not _is_queue_id(queue_id):
                continue  # not ours: leave it alone
            orphan = "." + kind == _MSG and queue_id + _ENV not in names
            if name.endswith(_TMP) or orphan:
                _unlink_quietly(path)
                acted.append(name)
            elif "." + kind == _ENV and not self._readable(queue_id, names):
                self._set_aside(queue_id, names, acted)
        if acted:
            _fsync_dir(self._dir)
        return sorted(acted)

    # -- used by writers --------------------------------------------------------------

    def _path(self, queue_id: str, suffix: str) -> str:
        return os.path.join(self._dir, queue_id + suffix)

    def _ensure_dir(self) -> None:
        if self._made:
            return
        # The queue directory's own entry must be durable before any message in it is.
        os.makedirs(self._dir, _DIR_MODE, exist_ok=True)
        _fsync_dir(os.path.dirname(os.path.abspath(self._dir)))
        self._made = True

    def _tmp_name(self, queue_id: str, suffix: str) -> str:
        return self._path(queue_id, f"{suffix}.{os.getpid()}-{next(self._counter)}{_TMP}")

    def _open_tmp(self, queue_id: str, suffix: str) -> tuple[int, str]:
        path = self._tmp_name(queue_id, suffix)
        return os.open(path, _O_CREATE, _FILE_MODE), path

    def _write_tmp(self, queue_id: str, suffix: str, data: bytes) -> str:
        fd, path = self._open_tmp(queue_id, suffix)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink_quietly(path)
            raise
        os.close(fd)
        return path

    def _names(self) -> set[str]:
        try:
            return set(os.listdir(self._dir))
        except FileNotFoundError:
            return set()

    def _readable(self, queue_id: str, names: set[str]) -> bool:
        if queue_id + _MSG not in names:
            return False
        try:
            self.load(queue_id)
        except (CorruptEnvelopeError, ValueError, UnknownQueueIdError):
            return False
        return True

    def _set_aside(self, queue_id: str, names: set[str], acted: builtins.list[str]) -> None:
        corrupt = os.path.join(self._dir, _CORRUPT)
        os.makedirs(corrupt, _DIR_MODE, exist_ok=True)
        # Content first: if we crash in between, the envelope is still in the queue
        # and the next `recover` finishes the move.
        for suffix in (_MSG, _ENV):
            name = queue_id + suffix
            if name in names:
                os.replace(os.path.join(self._dir, name), os.path.join(corrupt, name))
                acted.append(name)
        _fsync_dir(corrupt)


class QueueWriter:
    """One message being written into the queue. Content is buffered in memory until
    `flush` (called by the adapter when `pending` grows) or `commit`."""

    def __init__(self, store: QueueStore, queue_id: str) -> None:
        self.queue_id = queue_id
        self._store = store
        self._chunks: list[bytes] = []
        self._pending = 0
        self._size = 0
        self._fd = -1
        self._tmp_msg: str | None = None
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
        """Hand the buffered content to the tmp file (no fsync: `commit` does that)."""
        if self._done:
            raise RuntimeError("flush after commit or abort")
        if self._fd < 0:
            self._fd, self._tmp_msg = self._store._open_tmp(self.queue_id, _MSG)
        if self._chunks:
            data = b"".join(self._chunks)
            self._chunks = []
            self._pending = 0
            _write_all(self._fd, data)

    def commit(self, envelope: QueuedMessage) -> QueuedMessage:
        """Make the message durable (see the module docstring) and return the envelope
        as stored, with `size` set to the octets written. Only after this returns may
        the client be told ``250``."""
        if self._done:
            raise RuntimeError("commit after commit or abort")
        if envelope.queue_id != self.queue_id:
            raise ValueError(f"envelope for {envelope.queue_id} given to {self.queue_id}")
        store = self._store
        stored = attrs.evolve(envelope, size=self._size)
        msg = store._path(self.queue_id, _MSG)
        env = store._path(self.queue_id, _ENV)
        renamed: list[str] = []
        tmp_env: str | None = None
        try:
            self.flush()
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            tmp_env = store._write_tmp(self.queue_id, _ENV, encode_envelope(stored))
            assert self._tmp_msg is not None
            os.rename(self._tmp_msg, msg)
            self._tmp_msg = None
            renamed.append(msg)
            os.rename(tmp_env, env)
            tmp_env = None
            renamed.append(env)
            _fsync_dir(store._dir)
        except BaseException:
            # Undo in commit order reversed: the envelope goes first, so no instant
            # shows an envelope without content.
            for path in reversed(renamed):
                _unlink_quietly(path)
            if tmp_env is not None:
                _unlink_quietly(tmp_env)
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
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._tmp_msg is not None:
            _unlink_quietly(self._tmp_msg)
            self._tmp_msg = None
