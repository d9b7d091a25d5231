"""`PgQueueStore`: the outbound queue in PostgreSQL, one table every node shares
(``queue_messages``, `_schema_queue`), delivered by a queue runner on every node.

Theory of operation
-------------------
Every operation is one SQL statement run as its own transaction (autocommit on the
pooled connection for its length): one round trip, where BEGIN, statement and COMMIT
would be three, and nothing that needs two statements to agree.

**Queueing** (`PgQueueWriter.commit`, before the ``250``): what the client sends is
buffered, and each `flush` moves it to a `tempfile.SpooledTemporaryFile` (memory up to
`SPOOL_MEMORY`, then an unlinked file: a big message is not held in memory once per
queue copy while it arrives, as `PgMailStore` does); at commit the row is written
whole with one statement, which also tells every node's idle runner
(``NOTIFY`` "queue", sent by PostgreSQL when the statement's transaction commits).
The commit returns once the row is durable, so ``250`` is never sent for mail a crash
could lose. An id another writer took meanwhile fails the insert (FileExistsError, as
the file store's ``O_EXCL``).

**Claiming** (`claim`): a runner takes up to n due messages with ``SELECT ... WHERE
next_attempt <= now ORDER BY next_attempt LIMIT n FOR UPDATE SKIP LOCKED`` and, in the
same statement, leases them: ``lease_holder`` is its node, and ``next_attempt`` the end
of the lease. Two runners claiming at once skip each other's locked rows; one that
reaches a row just after another's claim committed re-reads it (PostgreSQL rechecks the
``WHERE`` of a ``FOR UPDATE`` row that changed) and finds it no longer due. So a message
is held by one node at a time, and while the runner works on it, it renews the lease
(`renew`). Should the node die (SIGKILL, power), nothing renews it: the message falls
due at the lease's end, and any node's next claim takes it over. The claim hands back
the envelope and content too, so an attempt costs one round trip to open.

**The outcome** of an attempt is one transaction: `update` writes the new envelope,
the message's next due time, and lets go of the lease, only while this node still holds
it (a node whose lease ran out and was taken over must not overwrite the newer owner's
verdicts: `LeaseLostError`); `delete` removes the row, under the same condition for a
message this node claimed (the attempt renews the claim first, before the bounces it
queues: `sansmail.sessions.qmgr`), whoever holds it otherwise (``queue delete``);
`release` gives claims back unfinished (a runner that
stops, an attempt cut short by an internal error) with the time they are due again.

What a crash between the next hop's ``250`` and the outcome's commit does is the file
queue's: the message is sent again by whoever takes it over (RFC 5321 §6.1 accepts the
duplicate; a loss it does not).

Times are the runners' clocks (seconds since the epoch), as the envelopes' retry times
are: the nodes' clocks must agree to well within the lease (minutes), which NTP gives.

Damaged rows (an envelope that does not read: edited by hand, or written by a newer
release) are set aside (``damaged`` says why), never sent and never deleted.
``queue flush`` is an ``UPDATE`` making every unleased message due now, and a NOTIFY.

Blocking calls for worker threads. Database errors leave as `QueueUnavailableError`, a
`BackendUnavailableError` (an OSError), so every caller answers them as it answers a
failing disk: ``451`` at the SMTP side, "tried again later" at the runner's.
"""

from __future__ import annotations

import builtins
import errno
import itertools
import time
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Final, NamedTuple

import attrs

from sansmail.mail.envelope import (
    CorruptEnvelopeError,
    QueuedMessage,
    check_queue_id,
    decode_envelope,
    encode_envelope,
)
from sansmail.storage.maildir import BackendUnavailableError
from sansmail.storage.pg._db import Database, DatabaseError, reading
from sansmail.storage.pg._mailrows import CHANNEL
from sansmail.storage.pg._spool import Spool
from sansmail.storage.queue._base import Claimed, ClaimLostError
from sansmail.storage.queue._store import UnknownQueueIdError

__all__ = [
    "CLAIM_OCTETS",
    "DEFAULT_LEASE",
    "NOTIFY_KEY",
    "SPOOL_MEMORY",
    "LeaseLostError",
    "PgQueueStore",
    "PgQueueWriter",
    "QueueUnavailableError",
]

#: Seconds a claim holds without renewal; the runner renews it well before its end.
DEFAULT_LEASE: Final = 300.0
#: The NOTIFY payload of a change in the queue (a message queued, released, flushed).
NOTIFY_KEY: Final = "queue"
#: Octets of a message kept in memory while it arrives; the rest goes to a file.
SPOOL_MEMORY: Final = 1024 * 1024
#: Octets of content one claim hands over at most (and always its first message,
#: whatever its size): a batch of big messages is not held in memory whole at once.
CLAIM_OCTETS: Final = 64 * 1024 * 1024


class QueueUnavailableError(BackendUnavailableError):
    """The database failed or could not be reached: a temporary failure."""


class LeaseLostError(ClaimLostError):
    """Another node holds the message now: this node's lease ran out and it took the
    message over, so this node's verdicts are not written."""


class _Result(NamedTuple):
    rows: builtins.list[tuple[Any, ...]]
    rowcount: int


def _due(message: QueuedMessage) -> float:
    """When `message` is next due: its earliest pending recipient's next attempt."""
    return min((r.next_attempt for r in message.pending), default=0.0)


def _decode(queue_id: str, envelope: str) -> QueuedMessage:
    try:
        message = decode_envelope(envelope.encode("ascii"))
    except UnicodeEncodeError:
        raise CorruptEnvelopeError(f"{queue_id}: the envelope is not ASCII JSON") from None
    if message.queue_id != queue_id:
        raise CorruptEnvelopeError(f"envelope of {queue_id} names {message.queue_id}")
    return message


class PgQueueStore:
    """The queue in the database `db`, claimed for this node as `node` (see the module
    docstring); a `sansmail.storage.queue.SharedQueue`.

    `clock` (seconds since the epoch) is read by `new_id` and `request_flush`; the
    runner passes its own time to `claim` and `renew`. `lease`: seconds a claim holds.
    """

    def __init__(
        self,
        db: Database,
        *,
        node: str,
        lease: float = DEFAULT_LEASE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not node:
            raise ValueError("a queue store needs a node name")
        if not lease > 0:
            raise ValueError(f"a lease must be positive, not {lease!r}")
        self.db = db
        self._node = node
        self._lease = float(lease)
        self._clock = clock
        self._counter = itertools.count(1)
        # In place of the file store's pid: ids made on two machines (whose server
        # processes may well have the same pid, in containers) differ here.
        self._tag = zlib.crc32(node.encode("utf-8", "surrogatepass")) & 0xFFFFF
        # The ids this store claimed and has not settled: their outcome is written only
        # while this node still holds them (`update`). A set's add and discard are
        # atomic, and each id is settled by one worker thread at a time.
        self._claimed: set[str] = set()

    @property
    def node(self) -> str:
        return self._node

    @property
    def lease(self) -> float:
        return self._lease

    def _run(
        self,
        sql: str,
        params: Sequence[object] | Mapping[str, object] = (),
        *,
        binary: bool = False,
    ) -> _Result:
        """One statement, which is its own transaction: committed (and durable, and its
        NOTIFY sent) when this returns. One round trip, where `Database.transaction`
        takes three (BEGIN, the statement, COMMIT): every change here is one statement,
        so none needs more. `binary`: the rows in binary format (contents as they are,
        not as hex text twice their size)."""
        try:
            with reading(self.db) as cur:
                cur.execute(sql, params, binary=binary)
                rows = cur.fetchall() if cur.description is not None else []
                return _Result(rows, cur.rowcount)
        except DatabaseError as exc:  # the statement failed, or could not connect
            raise QueueUnavailableError(str(exc)) from exc

    # -- writing and reading messages --------------------------------------------------

    def new_id(self) -> str:
        """A fresh queue id, of the file store's shape: microseconds since the epoch,
        this node's tag and a counter, in upper-case hex."""
        micros = int(self._clock() * 1_000_000)
        return f"{micros:X}{self._tag:05X}{next(self._counter) & 0xFFF:03X}"

    def begin(self, queue_id: str) -> PgQueueWriter:
        """Start writing a new message (nothing reaches the database before `commit`)."""
        check_queue_id(queue_id)
        return PgQueueWriter(self, queue_id)

    def load(self, queue_id: str) -> QueuedMessage:
        """The envelope of `queue_id`; UnknownQueueIdError if it is not queued (or set
        aside), CorruptEnvelopeError if it does not read."""
        check_queue_id(queue_id)
        rows = self._run(
            "SELECT envelope FROM queue_messages WHERE queue_id = %s AND damaged IS NULL",
            (queue_id,),
        ).rows
        if not rows:
            raise UnknownQueueIdError(queue_id)
        return _decode(queue_id, rows[0][0])

    def read(self, queue_id: str) -> tuple[QueuedMessage, bytes]:
        """The envelope and the content of `queue_id`, with one query."""
        check_queue_id(queue_id)
        rows = self._run(
            "SELECT envelope, content FROM queue_messages WHERE queue_id = %s AND damaged IS NULL",
            (queue_id,),
            binary=True,
        ).rows
        if not rows:
            raise UnknownQueueIdError(queue_id)
        return _decode(queue_id, rows[0][0]), bytes(rows[0][1])

    def read_message(self, queue_id: str) -> bytes:
        """The content of `queue_id`, CRLF line ends, as received."""
        return self.read(queue_id)[1]

    def update(self, message: QueuedMessage) -> None:
        """Record the envelope after an attempt and let go of this node's lease, in one
        transaction; UnknownQueueIdError if the message is gone, `LeaseLostError` if
        another node holds it now, or held it since this node's claim (its outcome
        stands: a stalled node must not write over it). A message this store did not
        claim is written if no node holds it (an administrator's change)."""
        queue_id = message.queue_id
        check_queue_id(queue_id)
        envelope = encode_envelope(message).decode("ascii")
        claimed = queue_id in self._claimed
        self._claimed.discard(queue_id)
        done = self._run(
            "UPDATE queue_messages SET envelope = %s, next_attempt = %s, lease_holder = NULL"
            " WHERE queue_id = %s AND damaged IS NULL"
            " AND (lease_holder = %s OR (lease_holder IS NULL AND NOT %s))",
            (envelope, _due(message), queue_id, self._node, claimed),
        )
        if done.rowcount == 1:
            return
        # Not written: say why (a second look, for the log's sake only).
        rows = self._run(
            "SELECT lease_holder FROM queue_messages WHERE queue_id = %s AND damaged IS NULL",
            (queue_id,),
        ).rows
        if not rows:
            raise UnknownQueueIdError(queue_id)
        raise LeaseLostError(f"{queue_id}: taken over by {rows[0][0] or 'another node'}")

    def delete(self, queue_id: str, *, sync: bool = True) -> None:
        """Remove a message: one this store claimed only while this node still holds it
        (`LeaseLostError` otherwise, as `update`), any other whoever holds it (``queue
        delete``). `sync` is for the file store's sake: the removal is durable when this
        returns."""
        check_queue_id(queue_id)
        claimed = queue_id in self._claimed
        self._claimed.discard(queue_id)
        done = self._run(
            "DELETE FROM queue_messages WHERE queue_id = %s AND (NOT %s OR lease_holder = %s)",
            (queue_id, claimed, self._node),
        )
        if done.rowcount == 1:
            return
        rows = self._run(
            "SELECT lease_holder FROM queue_messages WHERE queue_id = %s", (queue_id,)
        ).rows
        if not rows or not claimed:
            raise UnknownQueueIdError(queue_id)
        raise LeaseLostError(f"{queue_id}: taken over by {rows[0][0] or 'another node'}")

    def sync(self) -> None:
        """Nothing to do: every commit and removal was durable when it returned."""

    def set_aside(self, queue_id: str, why: str = "set aside") -> bool:
        """Take a damaged message out of delivery; it stays in the table, with `why`."""
        check_queue_id(queue_id)
        self._claimed.discard(queue_id)
        done = self._run(
            "UPDATE queue_messages SET damaged = %s, lease_holder = NULL"
            " WHERE queue_id = %s AND damaged IS NULL",
            (why, queue_id),
        )
        return done.rowcount == 1

    def ids(self) -> set[str]:
        """The ids of every message in the queue (not set aside)."""
        rows = self._run("SELECT queue_id FROM queue_messages WHERE damaged IS NULL").rows
        return {row[0] for row in rows}

    def list(self) -> builtins.list[QueuedMessage]:
        """Every readable message, oldest first (by arrival, then id)."""
        rows = self._run(
            "SELECT queue_id, envelope FROM queue_messages WHERE damaged IS NULL"
            " ORDER BY arrival, queue_id"
        ).rows
        found = []
        for queue_id, envelope in rows:
            try:
                found.append(_decode(queue_id, envelope))
            except ValueError:
                continue  # the runner's claim sets it aside and logs why
        # Python's order, as the file store's: the database's collation may differ.
        found.sort(key=lambda message: (message.arrival, message.queue_id))
        return found

    def request_flush(self) -> None:
        """Make every message that no node holds due now, and wake every runner."""
        now = self._clock()
        self._run(
            "WITH flushed AS (UPDATE queue_messages SET next_attempt = %s"
            " WHERE damaged IS NULL AND lease_holder IS NULL AND next_attempt > %s)"
            " SELECT pg_notify(%s, %s)",
            (now, now, CHANNEL, NOTIFY_KEY),
        )

    def take_flush_request(self) -> bool:
        """False: `request_flush` did the flush itself."""
        return False

    # -- claims -----------------------------------------------------------------------

    def claim(self, limit: int, *, now: float) -> Claimed:
        """Up to `limit` due messages that no live lease holds, leased to this node
        until ``now + lease`` (see the module docstring), and no more of them than
        `CLAIM_OCTETS` of content (the rows locked beyond it are left as they were)."""
        if limit <= 0:
            return Claimed(())
        rows = self._run(
            "WITH due AS (SELECT queue_id, size, next_attempt FROM queue_messages"
            "  WHERE next_attempt <= %(now)s AND damaged IS NULL"
            "  ORDER BY next_attempt LIMIT %(limit)s FOR UPDATE SKIP LOCKED),"
            " taken AS (SELECT queue_id FROM (SELECT queue_id, sum(size) OVER"
            "   (ORDER BY next_attempt, queue_id) - size AS before FROM due) AS d"
            "  WHERE before < %(octets)s)"
            " UPDATE queue_messages AS m SET lease_holder = %(node)s, next_attempt = %(until)s"
            " FROM taken WHERE m.queue_id = taken.queue_id"
            " RETURNING m.queue_id, m.envelope, m.content, m.arrival",
            {
                "now": now,
                "limit": limit,
                "octets": CLAIM_OCTETS,
                "node": self._node,
                "until": now + self._lease,
            },
            binary=True,
        ).rows
        rows.sort(key=lambda row: (row[3], row[0]))
        self._claimed.update(row[0] for row in rows)
        messages: list[tuple[QueuedMessage, bytes]] = []
        damaged: list[tuple[str, str]] = []
        for queue_id, envelope, content, _arrival in rows:
            try:
                messages.append((_decode(queue_id, envelope), bytes(content)))
            except ValueError as exc:
                why = str(exc).removeprefix(f"{queue_id}: ") or type(exc).__name__
                damaged.append((queue_id, why))
        self._claimed.difference_update(qid for qid, _why in damaged)
        if damaged:
            # Claimed by us meanwhile: should we die first, or this fail, the next claim
            # sets them aside once the lease ends. Not raised: the good messages are
            # leased to us now, and would wait out the lease unattempted.
            try:
                self._run(
                    "UPDATE queue_messages AS m SET damaged = u.why, lease_holder = NULL"
                    " FROM unnest(%s::text[], %s::text[]) AS u(queue_id, why)"
                    " WHERE m.queue_id = u.queue_id",
                    ([qid for qid, _ in damaged], [why for _, why in damaged]),
                )
            except QueueUnavailableError:
                damaged = []
        return Claimed(tuple(messages), tuple(damaged))

    def renew(self, queue_ids: Collection[str], *, now: float) -> set[str]:
        """Extend this node's leases on `queue_ids` to ``now + lease``; the ids it
        still holds."""
        if not queue_ids:
            return set()
        rows = self._run(
            "UPDATE queue_messages SET next_attempt = %s"
            " WHERE queue_id = ANY(%s) AND lease_holder = %s RETURNING queue_id",
            (now + self._lease, builtins.list(queue_ids), self._node),
        ).rows
        # The lost ones stay in `_claimed` until their attempt settles: forgetting them
        # here would let a stalled attempt's `update` pass as an administrator's change
        # and write over the verdicts of the node that took the message over.
        return {row[0] for row in rows}

    def release(self, due: Mapping[str, float]) -> None:
        """Give back this node's claims on the ids of `due`, each due again at its
        time, and wake the other nodes' runners."""
        if not due:
            return
        self._claimed.difference_update(due)
        self._run(
            "WITH released AS (UPDATE queue_messages AS m"
            "  SET next_attempt = u.due, lease_holder = NULL"
            "  FROM unnest(%s::text[], %s::float8[]) AS u(queue_id, due)"
            "  WHERE m.queue_id = u.queue_id AND m.lease_holder = %s)"
            " SELECT pg_notify(%s, %s)",
            (builtins.list(due), builtins.list(due.values()), self._node, CHANNEL, NOTIFY_KEY),
        )

    def soonest(self) -> float | None:
        """When the next message falls due (or a lease ends); None when none is queued."""
        rows = self._run("SELECT min(next_attempt) FROM queue_messages WHERE damaged IS NULL").rows
        return None if not rows or rows[0][0] is None else float(rows[0][0])


class PgQueueWriter:
    """One message being written into the queue; nothing reaches the database before
    `commit` writes the row (see the module docstring)."""

    def __init__(self, store: PgQueueStore, queue_id: str) -> None:
        self.queue_id = queue_id
        self._store = store
        self._spool = Spool(SPOOL_MEMORY)
        self._size = 0
        self._done = False

    @property
    def size(self) -> int:
        """Octets written so far."""
        return self._size

    @property
    def pending(self) -> int:
        """Octets buffered since the last `flush`."""
        return self._spool.pending

    def write(self, data: bytes) -> None:
        """Append content (CRLF line ends, as it will be sent on)."""
        if self._done:
            raise RuntimeError("write after commit or abort")
        if data:
            self._spool.add(bytes(data))
            self._size += len(data)

    def flush(self) -> None:
        """Move the buffered content to the spool (BLOCKING once it is a file). Not to
        the database: a row written in pieces would hold a connection, and its
        transaction, for as long as the client takes to send the message."""
        if self._done:
            raise RuntimeError("flush after commit or abort")
        self._spool.flush()

    def commit(self, envelope: QueuedMessage, *, sync: bool = True) -> QueuedMessage:
        """Write the message and wake every node's runner, in one transaction; return
        the envelope as stored, with `size` set. Durable when this returns, whatever
        `sync` (there is no later sync to share)."""
        if self._done:
            raise RuntimeError("commit after commit or abort")
        if envelope.queue_id != self.queue_id:
            raise ValueError(f"envelope for {envelope.queue_id} given to {self.queue_id}")
        stored = attrs.evolve(envelope, size=self._size)
        content = self._spool.read()
        self.abort()
        # One statement, one transaction: the row, and the word to the runners (sent at
        # its commit), once per row added: none for an id another writer took.
        rows = self._store._run(
            "WITH added AS (INSERT INTO queue_messages"
            " (queue_id, arrival, size, envelope, content, next_attempt)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (queue_id) DO NOTHING"
            " RETURNING 1)"
            " SELECT pg_notify(%s, %s) FROM added",
            (
                self.queue_id,
                stored.arrival,
                stored.size,
                encode_envelope(stored).decode("ascii"),
                content,
                _due(stored),
                CHANNEL,
                NOTIFY_KEY,
            ),
        ).rows
        if not rows:
            raise FileExistsError(errno.EEXIST, f"queue id {self.queue_id} is in use")
        return stored

    def abort(self) -> None:
        """Forget the message; safe at any time, more than once."""
        self._done = True
        self._spool.close()
