"""Connection counts that all server processes see, for the connection caps and for
one user's sessions per client address (Dovecot's mail_max_userip_connections).

With ``processes = N`` every process accepts from the same listeners and the kernel,
not we, picks which one takes a connection, so a cap kept by each process alone is
either too strict (a share of the limit: one client's connections land unevenly and
some are refused early) or too lax (the whole limit in each process). Postfix asks a
central service (anvil), Dovecot too; we share a small table instead.

Theory of operation: the parent maps an anonymous shared memory block before it forks,
so every child sees the same pages. Each process owns one row. A row holds, for each
service family (`Family`: SMTP, POP3, IMAP ... are capped apart), a count of its open
connections and a count per hash bucket of client addresses; then a count per hash
bucket of (protocol, user, client address) for the logged-in sessions. A process writes
only its own row (one thread: no lock needed) and reads all rows to decide, so a count
is exact for its own connections and at most a few arrivals behind for the others'.
Two keys that share a bucket are counted together, which can only make a cap stricter,
and with 16,384 buckets rarely matters. The hash is Python's, whose seed the forked
children share with the parent.
"""

from __future__ import annotations

import enum
import mmap

__all__ = ["BUCKETS", "Family", "SharedCounts", "family_of"]

#: Hash buckets per process and family for client addresses, and for user sessions.
BUCKETS = 16384
_SLOT = 4  # octets per counter (unsigned 32 bits)


class Family(enum.IntEnum):
    """The services whose connections are capped together."""

    SMTP = 0  # smtp, submission, submissions: [smtp] max_connections(_per_ip)
    POP3 = 1  # pop3, pop3s: [limits] pop3_max_connections(_per_ip)
    IMAP = 2  # imap, imaps: [limits] imap_max_connections(_per_ip)
    MANAGESIEVE = 3  # managesieve: _managesieve_server.MAX_CONNECTIONS(_PER_IP)
    HTTP = 4  # http: _http.MAX_CONNECTIONS(_PER_IP)
    METRICS = 5  # metrics: apart from http, so clients at the caps cannot stop scrapes


_FAMILIES = {
    "smtp": Family.SMTP,
    "submission": Family.SMTP,
    "submissions": Family.SMTP,
    "pop3": Family.POP3,
    "pop3s": Family.POP3,
    "imap": Family.IMAP,
    "imaps": Family.IMAP,
    "managesieve": Family.MANAGESIEVE,
    "http": Family.HTTP,
    "metrics": Family.METRICS,
}


def family_of(service: str) -> Family:
    """The family a listener (``imaps``, ``submission`` ...) is counted in."""
    return _FAMILIES[service]


# A row: per family [total, bucket 0 .. BUCKETS-1], then the user-session buckets.
_FAMILY_WIDTH = BUCKETS + 1
_USERS = len(Family) * _FAMILY_WIDTH
_WIDTH = _USERS + BUCKETS


class SharedCounts:
    """The table for `rows` processes, seen from process `row`."""

    def __init__(self, memory: mmap.mmap, *, rows: int, row: int = 0) -> None:
        if not 0 <= row < rows:
            raise ValueError(f"row {row} outside 0..{rows - 1}")
        self._memory = memory
        self._cells = memoryview(memory).cast("I")
        self.rows = rows
        self.row = row
        self._base = row * _WIDTH

    @classmethod
    def create(cls, rows: int) -> SharedCounts:
        """A fresh table, zeroed, in memory shared with processes forked after this."""
        memory = mmap.mmap(-1, rows * _WIDTH * _SLOT, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        return cls(memory, rows=rows, row=0)

    def for_process(self, row: int) -> SharedCounts:
        """The same table seen from process `row` (call it in the forked child)."""
        return SharedCounts(self._memory, rows=self.rows, row=row)

    def clear(self) -> None:
        """Zero this process's row in every family, user sessions included: its
        connections are gone with it. A server process that replaces a dead one calls
        this first, so that the dead one's connections, which it could not close, no
        longer count against the caps."""
        base = self._base
        self._cells[base : base + _WIDTH] = memoryview(bytes(_WIDTH * _SLOT)).cast("I")

    # -- connections, per family ---------------------------------------------------------

    def _bucket(self, family: Family, ip: str) -> int:
        return family * _FAMILY_WIDTH + 1 + hash(ip) % BUCKETS

    def opened(self, family: Family, ip: str) -> None:
        base = self._base
        self._cells[base + family * _FAMILY_WIDTH] += 1
        self._cells[base + self._bucket(family, ip)] += 1

    def closed(self, family: Family, ip: str) -> None:
        base = self._base
        self._cells[base + family * _FAMILY_WIDTH] -= 1
        self._cells[base + self._bucket(family, ip)] -= 1

    def total(self, family: Family) -> int:
        """Open connections of `family` in all processes."""
        at = family * _FAMILY_WIDTH
        return sum(self._cells[r * _WIDTH + at] for r in range(self.rows))

    def from_ip(self, family: Family, ip: str) -> int:
        """Open connections of `family` from `ip` (and any address sharing its bucket)
        in all processes."""
        at = self._bucket(family, ip)
        return sum(self._cells[r * _WIDTH + at] for r in range(self.rows))

    # -- logged-in sessions per (protocol, user, address) ---------------------------------

    def _user_bucket(self, protocol: str, user: str, ip: str) -> int:
        return _USERS + hash((protocol, user, ip)) % BUCKETS

    def sessions(self, protocol: str, user: str, ip: str) -> int:
        """Logged-in sessions of `user` over `protocol` from `ip`, in all processes (and
        any key sharing their bucket)."""
        at = self._user_bucket(protocol, user, ip)
        return sum(self._cells[r * _WIDTH + at] for r in range(self.rows))

    def session_opened(self, protocol: str, user: str, ip: str) -> None:
        self._cells[self._base + self._user_bucket(protocol, user, ip)] += 1

    def session_closed(self, protocol: str, user: str, ip: str) -> None:
        self._cells[self._base + self._user_bucket(protocol, user, ip)] -= 1
