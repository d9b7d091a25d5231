"""Word that a directory changed, for IMAP IDLE: Linux inotify, one descriptor per event
loop, read by one system task.

Why inotify. A change to a mailbox, whoever makes it, is a change to the files of its
Maildir: a delivery (the SMTP session, the queue runner) renames a file into ``new/``,
APPEND and COPY/MOVE write into ``cur/``, STORE renames in ``cur/``, EXPUNGE, MOVE and
POP3's DELE unlink, and so do mutt or a user's shell. The kernel reports every one of
those to every process that watches the directory, so one mechanism reaches the idlers
of all ``processes = N`` server processes and notices outside tools too, with no writer
having to announce anything (a change counter file or a socket per process would need
every writer, sansmail's and others', to take part, and would miss mutt). What changed
is not taken from the events: a woken session syncs its view (`FolderView.sync`), whose
freshness check costs two ``stat`` calls when nothing did.

One inotify descriptor per event loop holds one watch per directory, shared by every
subscriber to it (a thousand sessions idling on one folder cost one watch); a
subscription is woken, not queued to: a burst of renames (a STORE of many messages)
wakes an idler once, or twice if it arrives while the idler syncs. The kernel's queue
overflowing (``IN_Q_OVERFLOW``) wakes every subscriber. A directory that goes away
(``IN_IGNORED``) wakes its subscribers, whose sync then finds the folder gone.

Where inotify is missing (not Linux, a libc without it, ``max_user_watches`` reached), or
on file systems whose remote changes it does not see (NFS, and other machines' writes),
`Watcher.available` is False for that subscription and the caller polls at a long
interval instead (``FALLBACK_POLL``).

A node on the PostgreSQL backend has no files to watch: its folders say what to listen
for as keys (``FolderView.watch_keys``), and the process's `KeyWatcher`, the database
listener of `_pgnotify` (set by `_pgnotify.run_listener`, found with `key_watcher`),
gives the same `Subscription` for them.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Final, Protocol

import trio

__all__ = [
    "FALLBACK_POLL",
    "KeyWatcher",
    "Subscription",
    "Watcher",
    "key_watcher",
    "set_key_watcher",
    "watcher",
]

log = logging.getLogger("sansmail.notify")

#: Seconds between syncs of an idler whose folder cannot be watched.
FALLBACK_POLL: Final = 30.0

_IN_NONBLOCK: Final = os.O_NONBLOCK
_IN_CLOEXEC: Final = os.O_CLOEXEC
# What changes a Maildir directory: files created, renamed in or out, deleted; the
# directory itself deleted or renamed.
_IN_CREATE: Final = 0x100
_IN_DELETE: Final = 0x200
_IN_DELETE_SELF: Final = 0x400
_IN_MOVE_SELF: Final = 0x800
_IN_MOVED_FROM: Final = 0x40
_IN_MOVED_TO: Final = 0x80
_IN_CLOSE_WRITE: Final = 0x08
_IN_Q_OVERFLOW: Final = 0x4000
_IN_IGNORED: Final = 0x8000
_IN_ONLYDIR: Final = 0x01000000
_MASK: Final = (
    _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CLOSE_WRITE
    | _IN_ONLYDIR
)
_EVENT: Final = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)
_READ_SIZE: Final = 64 * 1024


class _Libc:
    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.init1 = libc.inotify_init1
        self.init1.argtypes = [ctypes.c_int]
        self.init1.restype = ctypes.c_int
        self.add_watch = libc.inotify_add_watch
        self.add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.add_watch.restype = ctypes.c_int
        self.rm_watch = libc.inotify_rm_watch
        self.rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        self.rm_watch.restype = ctypes.c_int


def _libc() -> _Libc | None:
    try:
        return _Libc()
    except (OSError, AttributeError, TypeError):  # no libc, or no inotify in it
        return None


class Subscription:
    """What one idler waits on: `wait()` returns once something it watches changed (or
    `wake()` was called) since the last `wait()` returned. `turn` is shared by every
    subscription to the same paths in this event loop: the idlers a change wakes
    together look at the folder one after the other, so that the first one's look
    serves the rest (each taking the folder's write lock at once would have them wait
    in SQLite's busy handler, which sleeps for milliseconds at a time)."""

    def __init__(self, available: bool, turn: trio.Lock | None = None) -> None:
        #: Every path is watched: changes will be told. False: the caller must poll.
        self.available = available
        self.turn = trio.Lock() if turn is None else turn
        self._event = trio.Event()

    def wake(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        # No checkpoint between the wake-up and the new event: a change told from now on
        # wakes the next wait.
        self._event = trio.Event()


class Watcher:
    """The inotify descriptor of one event loop and its watches (see the module
    docstring). `subscribe(paths)` is a context manager giving a `Subscription`."""

    def __init__(self, libc: _Libc | None = None) -> None:
        self._libc = libc
        # Opened, with its reader task, at the first subscription: the task closes it
        # when the loop ends.
        self._fd = -1
        self._failed = libc is None
        self._subscribers: dict[int, set[Subscription]] = {}  # wd -> its subscribers
        # paths -> the turn their subscribers share, and how many hold it.
        self._turns: dict[tuple[str, ...], tuple[trio.Lock, int]] = {}

    @property
    def available(self) -> bool:
        return not self._failed

    @contextlib.contextmanager
    def subscribe(self, paths: Iterable[str]) -> Iterator[Subscription]:
        wanted = list(dict.fromkeys(paths))
        watches: list[int] = []
        ok = True
        for path in wanted:
            wd = self._add(path)
            if wd is None:
                ok = False
            else:
                watches.append(wd)
        key = tuple(wanted)
        turn, holders = self._turns.get(key, (trio.Lock(), 0))
        self._turns[key] = (turn, holders + 1)
        subscription = Subscription(ok and self.available, turn)
        for wd in watches:
            self._subscribers.setdefault(wd, set()).add(subscription)
        try:
            yield subscription
        finally:
            for wd in watches:
                self._drop(wd, subscription)
            turn, holders = self._turns[key]
            if holders == 1:
                del self._turns[key]
            else:
                self._turns[key] = (turn, holders - 1)

    def _add(self, path: str) -> int | None:
        if self._libc is None or self._failed:
            return None
        if self._fd < 0:
            fd = self._libc.init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd < 0:
                self._failed = True
                log.warning(
                    "inotify unavailable (%s): idlers poll", os.strerror(ctypes.get_errno())
                )
                return None
            self._fd = fd
            trio.lowlevel.spawn_system_task(self._read, fd, name="sansmail inotify")
        wd = int(self._libc.add_watch(self._fd, os.fsencode(path), _MASK))
        if wd < 0:
            code = ctypes.get_errno()
            if code != errno.ENOENT:  # a folder deleted meanwhile: its sync will tell
                log.warning("cannot watch %s (%s): its idlers poll", path, os.strerror(code))
            return None
        # The kernel gives an existing watch's number again for the same inode, so
        # subscribers to one directory share its watch.
        return wd

    def _drop(self, wd: int, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(wd)
        if subscribers is None:
            return
        subscribers.discard(subscription)
        if subscribers:
            return
        del self._subscribers[wd]
        if self._libc is not None and self._fd >= 0:
            # EINVAL: the kernel dropped it already (the directory went away).
            self._libc.rm_watch(self._fd, wd)

    async def _read(self, fd: int) -> None:
        try:
            while True:
                await trio.lowlevel.wait_readable(fd)
                try:
                    data = os.read(fd, _READ_SIZE)
                except BlockingIOError:
                    continue
                self._dispatch(data)
        finally:
            self._fd = -1
            os.close(fd)

    def _dispatch(self, data: bytes) -> None:
        woken: set[int] = set()
        everyone = False
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size + length
            if mask & _IN_Q_OVERFLOW:
                everyone = True
            else:
                woken.add(wd)
        for wd in list(self._subscribers) if everyone else woken:
            for subscription in self._subscribers.get(wd, ()):
                subscription.wake()


_WATCHERS: trio.lowlevel.RunVar[Watcher] = trio.lowlevel.RunVar("sansmail_watcher")


def watcher(make: Callable[[], Watcher] = lambda: Watcher(_libc())) -> Watcher:
    """The event loop's `Watcher`, made at the first call."""
    try:
        return _WATCHERS.get()
    except LookupError:
        made = make()
        _WATCHERS.set(made)
        return made


class KeyWatcher(Protocol):
    """Word of changes named by keys rather than directories (`_pgnotify.Listener`)."""

    def subscribe(self, keys: Iterable[str]) -> AbstractContextManager[Subscription]: ...


_KEY_WATCHERS: trio.lowlevel.RunVar[KeyWatcher | None] = trio.lowlevel.RunVar(
    "sansmail_key_watcher", default=None
)


def key_watcher() -> KeyWatcher | None:
    """The event loop's `KeyWatcher`, or None (a node on Maildir)."""
    return _KEY_WATCHERS.get()


def set_key_watcher(keys: KeyWatcher | None) -> None:
    """Make `keys` the event loop's `KeyWatcher` (None: no more)."""
    _KEY_WATCHERS.set(keys)
