"""The rate windows (`sansmail.mail.anvil`) of every server process, in one small file:
``<data_dir>/anvil.table``. Blocking, for microseconds, and never more than 5 ms on a lock.

Theory of operation
-------------------
With ``processes = N`` the kernel picks which process accepts a connection, so a client's
messages land in several processes and each must see the counts of all: Postfix asks its
one anvil server; we share a fixed-size hash table in a file that every process opens
(by path, so nothing needs handing over at fork, and a process started later, or a
replacement for a dead one, finds the same counts).

Layout: a 64-octet header (magic, version, geometry, and a random 16-octet key made when
the file is), then `SETS` sets of `WAYS` slots of 24 octets: a key's fingerprint
(64 bits, 0 for an empty slot), its window's start (a double) and its two counts
(unsigned 32 bits). A key is hashed with BLAKE2b keyed with the file's key (so no client
can choose addresses that collide with someone else's, and the hash is the same in every
process, unlike Python's), the hash picking the set and giving the fingerprint. Within
its set a key takes its own slot, or else an empty one, one whose window has ended, or
the one whose window opened longest ago: its count is forgotten. The file has 65,536
slots (1.5 MiB) however many clients come; keys past that many in one minute push each
other out, which only ever forgets counts (a brake, not a ban).

One count is a read-modify-write of one set, under a POSIX record lock (``fcntl``) on
that set's octets: two processes counting keys of different sets do not even meet. A
count takes about 5 µs (two lock calls, a 192-octet ``pread``, a 24-octet ``pwrite``,
the key's hash remembered). The lock is asked for without waiting, again and again with
the CPU yielded between tries (its holder may have been preempted); if it is still taken
after `LOCK_WAIT` (5 ms), or the file cannot be read or written, `count` raises
`AnvilError` and the caller lets the command through: a rate limit is a brake, never a
reason to refuse mail. Reads and writes are ``pread``/``pwrite``, not a shared mapping,
so that a full disk is an error here and not a SIGBUS anywhere.

Record locks belong to a process, not a thread: use one `AnvilTable` from one thread
per process (the event loop's). Nothing is fsync'd: the counts are worth a minute; after
a crash a torn slot only miscounts one key for one window, and a file whose header is
not ours is made anew.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import pathlib
import secrets
import struct
import time
from typing import Final

from sansmail.mail.anvil import TIME_UNIT, Event, Window, counted

__all__ = ["FILE_NAME", "LOCK_WAIT", "SETS", "WAYS", "AnvilError", "AnvilTable"]

FILE_NAME: Final = "anvil.table"
SETS: Final = 8192
WAYS: Final = 8
#: Seconds of trying a taken lock before `count` gives up (a count holds it for about
#: ten microseconds; a holder preempted on a busy machine, for a scheduler tick or two).
LOCK_WAIT: Final = 0.005

_MAGIC: Final = b"SMANVIL\x00"
_VERSION: Final = 1
_HEADER: Final = struct.Struct("<8sIII12x16s16x")  # magic, version, sets, ways, key
_SLOT: Final = struct.Struct("<QdII")  # fingerprint, window start, messages, recipients
_BUSY: Final = frozenset({errno.EACCES, errno.EAGAIN})
_PLACES: Final = 4096  # keys whose place is remembered


class AnvilError(Exception):
    """The table could not be read, written or locked: the caller counts nothing."""


class AnvilTable:
    """The shared windows in the file at `path` (made, mode 0600, on first use)."""

    def __init__(
        self,
        path: pathlib.Path,
        *,
        sets: int = SETS,
        ways: int = WAYS,
        unit: float = TIME_UNIT,
    ) -> None:
        if sets < 1 or ways < 1:
            raise ValueError("sets and ways must be at least 1")
        self.path = path
        self.sets = sets
        self.ways = ways
        self.unit = unit
        self._set_size = ways * _SLOT.size
        self._fd = -1
        self._pid = 0
        self._key = b""
        self._places: dict[str, tuple[int, int]] = {}

    def count(self, key: str, event: Event, now: float) -> Window:
        """Count `event` at `now` (wall-clock seconds: every process must use the same
        clock) for `key`; the key's window after it. Blocking (microseconds); raises
        `AnvilError`."""
        try:
            fd = self._open()
            place = self._places.get(key)
            if place is None:
                place = self._place(key)
            fingerprint, offset = place
            self._lock(fd, offset, self._set_size)
            try:
                return self._count(fd, offset, fingerprint, event, now)
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, self._set_size, offset)
        except OSError as exc:
            raise AnvilError(f"{self.path}: {exc.strerror or exc}") from exc

    def _place(self, key: str) -> tuple[int, int]:
        """`key`'s fingerprint and its set's offset, remembered for the next count (the
        same few clients come back; the hash is a fifth of a count)."""
        digest = hashlib.blake2b(key.encode(), key=self._key, digest_size=16).digest()
        fingerprint = int.from_bytes(digest[:8], "little") | 1
        offset = _HEADER.size + int.from_bytes(digest[8:], "little") % self.sets * self._set_size
        if len(self._places) >= _PLACES:
            self._places.clear()
        self._places[key] = (fingerprint, offset)
        return fingerprint, offset

    def _count(self, fd: int, offset: int, fingerprint: int, event: Event, now: float) -> Window:
        data = os.pread(fd, self._set_size, offset)
        if len(data) < self._set_size:
            raise AnvilError(f"{self.path}: shorter than its header says")
        # The fingerprint found by a search in C, at a slot's first octet.
        mark = fingerprint.to_bytes(8, "little")
        at = data.find(mark)
        while at >= 0 and at % _SLOT.size:
            at = data.find(mark, at + 1)
        before: Window | None = None
        if at >= 0:
            chosen = at // _SLOT.size
            _p, start, messages, recipients = _SLOT.unpack_from(data, at)
            before = Window(start, messages, recipients)
        else:
            slots = list(_SLOT.iter_unpack(data))
            chosen = min(range(len(slots)), key=lambda i: self._age_rank(slots[i], now))
        window = counted(before, event, now, self.unit)
        os.pwrite(
            fd,
            _SLOT.pack(fingerprint, window.start, window.messages, window.recipients),
            offset + chosen * _SLOT.size,
        )
        return window

    def _age_rank(self, slot: tuple[int, float, int, int], now: float) -> tuple[int, float]:
        """Which slot a new key takes first: empty, then ended (or from a clock that went
        back), then the one whose window opened longest ago."""
        print_, start, _m, _r = slot
        if print_ == 0:
            return (0, 0.0)
        if not start <= now < start + self.unit:
            return (1, 0.0)
        return (2, start)

    def _lock(self, fd: int, offset: int, length: int) -> None:
        deadline = 0.0
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, length, offset)
                return
            except OSError as exc:
                if exc.errno not in _BUSY:
                    raise
            # The clock is read only once the lock was found taken: the common case
            # costs one system call.
            now = time.monotonic()
            if not deadline:
                deadline = now + LOCK_WAIT
            elif now >= deadline:
                raise AnvilError(f"{self.path}: still locked after {LOCK_WAIT * 1000:g} ms")
            os.sched_yield()

    def _open(self) -> int:
        """The file's descriptor, opened (and made or mended) on first use in this
        process: one inherited over a fork shares its parent's record locks, so a child
        opens its own."""
        if self._fd >= 0 and self._pid == os.getpid():
            return self._fd
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            size = _HEADER.size + self.sets * self._set_size
            self._lock(fd, 0, 0)  # the whole file, while the header is read or made
            try:
                self._key = self._header(fd, size)
                self._places.clear()
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 0, 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._pid = fd, os.getpid()
        return fd

    def _header(self, fd: int, size: int) -> bytes:
        """The file's key; a file that is not a table of this geometry is made anew."""
        header = os.pread(fd, _HEADER.size, 0)
        if len(header) == _HEADER.size and os.fstat(fd).st_size == size:
            magic, version, sets, ways, key = _HEADER.unpack(header)
            if (magic, version, sets, ways) == (_MAGIC, _VERSION, self.sets, self.ways):
                return bytes(key)
        key = secrets.token_bytes(16)
        os.ftruncate(fd, 0)
        # Written out, not left sparse, so that a full disk fails here, at once.
        os.pwrite(fd, bytes(size - _HEADER.size), _HEADER.size)
        os.pwrite(fd, _HEADER.pack(_MAGIC, _VERSION, self.sets, self.ways, key), 0)
        return key

    def close(self) -> None:
        """Close the file (this process's locks go with it)."""
        if self._fd >= 0 and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = -1
