"""What the SMTP sessions, the local delivery agent, the queue manager and the queue
runner need of the outbound queue, whatever keeps it: `Queue` (and the writer
`QueueEntryWriter` its `begin` hands out), which both `QueueStore` (the directory of one
machine) and `sansmail.storage.pg.PgQueueStore` (one table every node shares) are.

They differ in who delivers. The directory has one runner per machine: it takes the
queue's lock (`QueueStore.lock`), cleans up after a crash (`QueueStore.recover`) and keeps
the schedule in memory. A `SharedQueue` has a runner on every node, each of which
*claims* due messages (`SharedQueue.claim`): a claim is a lease, held by one node
(`SharedQueue.node`) until an attempt's outcome is written (`Queue.update` or
`Queue.delete`), given back unfinished (`SharedQueue.release`), or left to expire when
the node died, after which another node's claim takes the message over. The schedule is
the queue's own: `SharedQueue.soonest` says when the next message falls due.
"""

from __future__ import annotations

import builtins
from collections.abc import Collection, Mapping
from typing import Protocol, runtime_checkable

import attrs

from sansmail.mail.envelope import QueuedMessage
from sansmail.storage.queue._store import UnknownQueueIdError

__all__ = ["ClaimLostError", "Claimed", "Queue", "QueueEntryWriter", "SharedQueue"]


class ClaimLostError(UnknownQueueIdError):
    """A `SharedQueue`'s message another node holds now (this node's lease ran out, and
    it took the message over): this node's verdicts are not written."""


class QueueEntryWriter(Protocol):
    """One message being written into the queue (`Queue.begin`)."""

    @property
    def queue_id(self) -> str: ...

    @property
    def size(self) -> int:
        """Octets written so far, buffered or not."""
        ...

    @property
    def pending(self) -> int:
        """Octets buffered in memory, not yet handed to the store."""
        ...

    def write(self, data: bytes) -> None:
        """Append content (CRLF line ends, as it will be sent on)."""

    def flush(self) -> None:
        """BLOCKING. Hand the buffered content on (the store may keep it buffered)."""

    def commit(self, envelope: QueuedMessage, *, sync: bool = True) -> QueuedMessage:
        """BLOCKING. Make the message durable and return the envelope as stored; only
        then may ``250`` be sent (with `sync` false: after the queue's next `sync`).
        FileExistsError when the queue id is taken; OSError when it could not be
        stored."""
        ...

    def abort(self) -> None:
        """BLOCKING. Forget the message; safe at any time, more than once."""


class Queue(Protocol):
    """The outbound queue (see the module docstring). Every method may block.

    Reads raise `UnknownQueueIdError` for a message that is not queued (any more) and
    `CorruptEnvelopeError` for one that cannot be read; a store that cannot be reached
    raises OSError, which callers answer as they answer a failing disk (``451``, a later
    retry)."""

    def new_id(self) -> str: ...

    def begin(self, queue_id: str) -> QueueEntryWriter: ...

    def load(self, queue_id: str) -> QueuedMessage: ...

    def read(self, queue_id: str) -> tuple[QueuedMessage, bytes]: ...

    def read_message(self, queue_id: str) -> bytes: ...

    def update(self, message: QueuedMessage) -> None:
        """Record a new envelope after an attempt; UnknownQueueIdError when the message
        is gone (or, for a shared queue, claimed by another node meanwhile)."""

    def delete(self, queue_id: str, *, sync: bool = True) -> None: ...

    def sync(self) -> None:
        """Make the commits and removals made with ``sync=False`` durable."""

    def set_aside(self, queue_id: str) -> bool:
        """Take a damaged message out of delivery (kept for the administrator)."""
        ...

    def ids(self) -> set[str]: ...

    def list(self) -> builtins.list[QueuedMessage]:
        """Every readable message, oldest first (arrival, then id)."""
        ...

    def request_flush(self) -> None:
        """Have every deferred message retried now (``queue flush``)."""

    def take_flush_request(self) -> bool:
        """For the runner: whether a flush was requested since it last asked."""
        ...


@attrs.frozen
class Claimed:
    """What `SharedQueue.claim` took: each message's envelope and content, and the
    damaged ones it set aside, with why."""

    messages: tuple[tuple[QueuedMessage, bytes], ...]
    damaged: tuple[tuple[str, str], ...] = ()


@runtime_checkable
class SharedQueue(Queue, Protocol):
    """A queue every node's runner delivers from, by claims with a lease (see the
    module docstring). `now` is the runner's clock, in seconds since the epoch; the
    nodes' clocks must agree to well within `lease` (NTP does)."""

    @property
    def node(self) -> str:
        """Who holds this store's claims (e.g. "<hostname>:<pid>")."""
        ...

    @property
    def lease(self) -> float:
        """Seconds a claim holds without renewal."""
        ...

    def claim(self, limit: int, *, now: float) -> Claimed:
        """Up to `limit` messages due at `now` that no live lease holds, soonest first,
        each now leased to this node until ``now + lease``."""
        ...

    def renew(self, queue_ids: Collection[str], *, now: float) -> set[str]:
        """Extend the leases of `queue_ids` to ``now + lease``; returns those still
        held by this node (the others were finished, deleted or taken over)."""
        ...

    def release(self, due: Mapping[str, float]) -> None:
        """Give back claims without an outcome: each message is due again at its
        time in `due` (any node may take it then)."""

    def soonest(self) -> float | None:
        """When the next message falls due (or a lease runs out); None: empty."""
        ...
