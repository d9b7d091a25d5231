"""The durable outbound queue under ``<data_dir>/queue/`` (CONTRACT.md). Blocking file
I/O for worker threads; what to do with a queued message is `sansmail.sessions.qmgr`'s.

`Queue` is what the sessions and the runner need of any queue (`QueueStore` here, or
`sansmail.storage.pg.PgQueueStore` shared by several nodes, a `SharedQueue`).
`QueueStore` keeps each message as a content file and a JSON envelope, and makes a
message durable before `QueueWriter.commit` returns, so ``250`` is never sent for mail a
crash could lose; `QueuedMessage` and `QueuedRecipient` are the envelope, with the
per-recipient delivery state the queue runner updates; `format_mailq` is the text of
``sansmail-trio queue list``.

Like `sansmail.storage.maildir`, this does blocking file I/O; the adapter calls it from worker
threads.
"""

from sansmail.mail.attempt import AttemptResult, Outcome, dsn_status, record_attempt
from sansmail.mail.envelope import (
    CorruptEnvelopeError,
    QueuedMessage,
    QueuedRecipient,
    RecipientState,
    check_queue_id,
)
from sansmail.storage.queue._base import (
    Claimed,
    ClaimLostError,
    Queue,
    QueueEntryWriter,
    SharedQueue,
)
from sansmail.storage.queue._mailq import format_mailq, mailq_json_lines
from sansmail.storage.queue._store import QueueStore, QueueWriter, UnknownQueueIdError

__all__ = [
    "AttemptResult",
    "ClaimLostError",
    "Claimed",
    "CorruptEnvelopeError",
    "Outcome",
    "Queue",
    "QueueEntryWriter",
    "QueueStore",
    "QueueWriter",
    "QueuedMessage",
    "QueuedRecipient",
    "RecipientState",
    "SharedQueue",
    "UnknownQueueIdError",
    "check_queue_id",
    "dsn_status",
    "format_mailq",
    "mailq_json_lines",
    "record_attempt",
]
