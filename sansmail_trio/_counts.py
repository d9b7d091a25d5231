"""Connection counts that all server processes see, for the connection caps.

With ``processes = N`` every process accepts from the same listeners and the kernel,
not we, picks which one takes a connection, so a cap kept by each process alone is
either too strict (a share of the limit: one client's connections land unevenly and
some are refused early) or too lax (the whole limit in each process). Postfix asks a
central service (anvil); we share a small table instead.

Theory of operation: the parent maps an anonymous shared memory block before it forks,
so every child sees the same pages. Each process owns one row: a count of its open
connections and a count per hash bucket of client addresses. A process writes only its
own row (one thread: no lock needed) and reads all rows to decide, so a count is exact
for its own connections and at most a few arrivals behind for the others'. Two
addresses that share a bucket are counted together, which can only make the cap
stricter, and with 16,384 buckets rarely matters. The hash is Python's, whose seed the
forked children share with the parent.
"""

from __future__ import annotations

import mmap

__all__ = ["BUCKETS", "SharedCounts"]

#: Hash buckets per process for client addresses.
BUCKETS = 16384
_SLOT = 4  # octets per counter (unsigned 32 bits)


class SharedCounts:
    """The table for `rows` processes, seen from process `row`."""

    def __init__(self, memory: mmap.mmap, *, rows: int, row: int = 0) -> None:
        if not 0 <= row < rows:
            raise ValueError(f"row {row} outside 0..{rows - 1}")
        self._memory = memory
        self._cells = memoryview(memory).cast("I")
        self.rows = rows
        self.row = row
        self._width = BUCKETS + 1  # [0] is the process's total

    @classmethod
    def create(cls, rows: int) -> SharedCounts:
        """A fresh table, zeroed, in memory shared with processes forked after this."""
        size = rows * (BUCKETS + 1) * _SLOT
        memory = mmap.mmap(-1, size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        return cls(memory, rows=rows, row=0)

    def for_process(self, row: int) -> SharedCounts:
        """The same table seen from process `row` (call it in the forked child)."""
        return SharedCounts(self._memory, rows=self.rows, row=row)

    def _bucket(self, ip: str) -> int:
        return 1 + hash(ip) % BUCKETS

    def clear(self) -> None:
        """Zero this process's row: its connections are gone with it. A server process
        that replaces a dead one calls this first, so that the dead one's connections,
        which it could not close, no longer count against the caps."""
        base = self.row * self._width
        self._cells[base : base + self._width] = memoryview(bytes(self._width * _SLOT)).cast("I")

    def opened(self, ip: str) -> None:
        base = self.row * self._width
        self._cells[base] += 1
        self._cells[base + self._bucket(ip)] += 1

    def closed(self, ip: str) -> None:
        base = self.row * self._width
        self._cells[base] -= 1
        self._cells[base + self._bucket(ip)] -= 1

    def total(self) -> int:
        """Open connections in all processes."""
        return sum(self._cells[r * self._width] for r in range(self.rows))

    def from_ip(self, ip: str) -> int:
        """Open connections from `ip` (and any address sharing its bucket) in all
        processes."""
        bucket = self._bucket(ip)
        return sum(self._cells[r * self._width + bucket] for r in range(self.rows))
