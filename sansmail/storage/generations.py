"""Change generations: how a write by one process (``sansmail-trio user add``, ``newaliases``,
``reload``) is in force in every server process by the time the writer returns, without
any server re-reading or even stat-ing a file on each lookup.

Theory of operation
-------------------
``<data_dir>/generations`` is a tiny file (`SIZE` octets: a magic number, then one
unsigned 64-bit counter per `Counter` and room for more, native byte order since it
never leaves the machine) that every server process maps into memory (``mmap``, ``MAP_SHARED``). All
mappings of a file share the kernel's page cache, so a counter written through one
mapping is seen by every other at once.

- A **writer** first makes its change durable (the users file replaced and fsync'd, the
  aliases file checked), then increments the counter of what it changed (`bump`).
  Writers serialise on an ``flock`` of the file, so no increment is lost.
- A **reader** (`UserStore`, `AliasSource`) remembers the counter's value it saw *before*
  it last read its file. Each lookup compares that with the counter in memory: one load
  from a mapped page, no system call. When they differ it re-reads the file, which is
  at least as new as the counter it just saw, since the writer bumped only after
  writing. A write that lands during the re-read bumps the counter again, so the next
  lookup reads once more; nothing is ever missed, at worst read twice.
- The counter is a change notice, not data: its value means nothing across files, it is
  never fsync'd (after a crash every server restarts and reads everything anyway), and
  readers only compare it for equality.

Who creates the file: the server, at start, *before* it first reads the users and aliases
files (`Generations.open`). A writer bumps only a file that exists (`bump`); when there
is none, no server has started on this data_dir since, and the next one to start reads
the files after creating the counters, so it sees the change. That keeps one-shot
commands (``user list``, ``check-config``) from writing anything.

A file replaced under a running server (a restored backup of data_dir) would leave the
server watching the old one; the server's once-a-second housekeeping calls
`Generations.reopen_if_replaced` (one ``stat``) to map the new one. A damaged file (wrong
size or magic number) is rewritten with every counter at zero, which readers see as a
change, and a warning says so (``sansmail.repair``). Only truncating the file in place
while servers map it is fatal to them (a mapped page past the end of a file raises
SIGBUS): leave the file alone, or delete it.

Blocking, loop-agnostic: `open`, `bump` and `reopen_if_replaced` do file I/O; reading a
counter (``generations[Counter.USERS]``) does none and may be called from any thread.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import logging
import mmap
import os
import pathlib
from collections.abc import Iterator
from typing import Final

__all__ = ["FILE_NAME", "SIZE", "Counter", "Generations", "bump"]

#: The file's name in data_dir.
FILE_NAME: Final = "generations"
_MAGIC: Final = b"sansgen1"
_SLOT: Final = 8  # octets per counter
#: The file's size: the magic number, then room for eight counters.
SIZE: Final = len(_MAGIC) + 8 * _SLOT
_FILE_MODE: Final = 0o600
_log = logging.getLogger("sansmail.repair")


class Counter(enum.IntEnum):
    """What a counter announces; its value is the counter's slot in the file (slot 0
    holds the magic number)."""

    USERS = 1  # users.json (user add/passwd/del, reload)
    ALIASES = 2  # the aliases file and its include files (newaliases, reload)
    TLS = 3  # the certificate and key (reload)


class Generations:
    """The counters of one data_dir, mapped into memory; ``generations[counter]`` reads
    one without a system call."""

    def __init__(self, path: pathlib.Path) -> None:
        """Map the file at `path`; use `open`, which makes sure it is there and whole."""
        self.path = path
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            memory = mmap.mmap(fd, SIZE, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        finally:
            os.close(fd)  # the mapping keeps its own reference to the file
        # One assignment each: a reader on another thread sees the old cells or the new.
        self._cells = memoryview(memory).cast("Q")
        self._identity = (st.st_dev, st.st_ino)

    @classmethod
    def open(cls, data_dir: pathlib.Path) -> Generations:
        """Map ``<data_dir>/generations``, creating it (mode 0600) or repairing it if
        need be. Raises OSError."""
        path = pathlib.Path(data_dir) / FILE_NAME
        with _locked(path, create=True) as fd:
            _ensure_layout(fd, path)
        return cls(path)

    def __getitem__(self, counter: Counter) -> int:
        return self._cells[counter]

    def bump(self, *counters: Counter) -> None:
        """Announce a change of each of `counters` to every process. Call it after the
        change is durable."""
        bump(self.path.parent, *counters)

    def reopen_if_replaced(self) -> bool:
        """Map the file anew if the one at `path` is no longer the one mapped (it was
        deleted or replaced); True when it was. A missing file is created again."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) == self._identity:
            return False
        fresh = Generations.open(self.path.parent)
        self._cells, self._identity = fresh._cells, fresh._identity
        return True


def bump(data_dir: pathlib.Path, *counters: Counter) -> bool:
    """Announce a change of `counters` in `data_dir` to every server process; False
    when there is no generations file (no server has started on this data_dir, and the
    next to start reads everything afresh). Call it after the change is durable.
    Raises OSError."""
    path = pathlib.Path(data_dir) / FILE_NAME
    try:
        with _locked(path, create=False) as fd:
            _ensure_layout(fd, path)
            # Through a writable mapping, so that readers' aligned 8-octet loads see
            # the old value or the new, never a half-written one.
            memory = mmap.mmap(fd, SIZE, flags=mmap.MAP_SHARED)
            try:
                cells = memoryview(memory).cast("Q")
                for counter in counters:
                    cells[counter] = (cells[counter] + 1) % 2**64
                cells.release()
            finally:
                memory.close()
    except FileNotFoundError:
        return False
    return True


def _ensure_layout(fd: int, path: pathlib.Path) -> None:
    # Called under the lock. A new file (size 0: two servers starting at once, the
    # other one has not written yet) gets its header; a damaged one is rewritten, all
    # counters back to zero, which every reader sees as a change and reads afresh.
    st = os.fstat(fd)
    if st.st_size == SIZE and os.pread(fd, len(_MAGIC), 0) == _MAGIC:
        return
    if st.st_size:
        _log.warning(
            "%s was damaged (%d octets, %d expected, or not its magic number):"
            " rewritten with every counter at zero (users and aliases are read afresh)",
            path,
            st.st_size,
            SIZE,
        )
    os.ftruncate(fd, SIZE)
    os.pwrite(fd, _MAGIC.ljust(SIZE, b"\0"), 0)


@contextlib.contextmanager
def _locked(path: pathlib.Path, *, create: bool) -> Iterator[int]:
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    fd = os.open(path, flags, _FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # closing releases the lock
