"""The queue's table (schema version 1; see `_schema`).

``queue_messages``: one row per queued message, shared by every node (`_queue`):

- ``envelope``: the envelope in force, as `sansmail.mail.envelope.encode_envelope`
  writes it (ASCII JSON, the file queue's envelope record): sender, DSN parameters and
  every recipient with its state, attempts, next attempt and last reason. One text
  rather than a column per field, because an envelope may carry what a text column
  cannot (a NUL in a remote reply, a lone surrogate from a header decoded with
  surrogateescape): the JSON escapes them, the one codec both stores share checks them.
  ``arrival`` and ``size`` are copied out for ``queue list`` order and for SQL users.
- ``content``: the message, CRLF line ends, compressed by TOAST (``STORAGE
  EXTENDED``, bytea's default, said on purpose).
- ``next_attempt``: when a runner may claim it (seconds since the epoch): while no node
  holds it, its earliest pending recipient's next attempt; while ``lease_holder`` holds
  it, the end of the lease. So a claim is one index range (``next_attempt <= now``),
  and a node that died leaves its messages due again when their leases end.
- ``damaged``: why a row that does not read was taken out of delivery (NULL: fine).
"""

from __future__ import annotations

from typing import Final

__all__ = ["QUEUE_TABLES"]

QUEUE_TABLES: Final[tuple[str, ...]] = (
    """CREATE TABLE queue_messages (
        queue_id text PRIMARY KEY,
        arrival double precision NOT NULL,
        size bigint NOT NULL,
        envelope text NOT NULL,
        content bytea NOT NULL,
        next_attempt double precision NOT NULL,
        lease_holder text,
        damaged text,
        queued_at timestamptz NOT NULL DEFAULT now())""",
    "ALTER TABLE queue_messages ALTER COLUMN content SET STORAGE EXTENDED",
    """CREATE INDEX queue_messages_due ON queue_messages (next_attempt)
        WHERE damaged IS NULL""",
)
