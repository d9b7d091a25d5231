"""The store interface: what the SMTP adapter writes messages through.

A `MailStore` hands out one `Delivery` per message. The adapter feeds it content as the
message arrives (`write`, never blocking), spills it to disk now and then from a worker
thread (`flush`), and finally makes it durable before it answers 250, or calls `abort`
when the transaction dies. Making it durable is either `Delivery.commit` (one message)
or `MailStore.commit_many` (group commit: several messages that ended at about the same
time share their directory syncs). `MaildirStore` is the one implementation; tests and
other back ends can provide their own.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Protocol

from sansmail.mail.address import MailboxId

__all__ = ["Delivery", "MailStore"]


class Delivery(Protocol):
    """One message being written for one or more mailboxes.

    Not safe for concurrent use: one task drives it, calling `flush`/`commit`/`abort`
    from one worker thread at a time. Exactly one of `commit` (or a successful
    `MailStore.commit_many`) or `abort` ends it.
    """

    @property
    def size(self) -> int:
        """Content octets written so far, counted as stored (LF line ends), without the
        trace prefix."""
        ...

    @property
    def pending(self) -> int:
        """Octets buffered in memory and not yet on disk."""
        ...

    def write(self, data: bytes) -> None:
        """Append message content in wire form (CRLF line ends, dot-unstuffed). Never does
        I/O, so the event loop may call it directly."""
        ...

    def flush(self) -> None:
        """Blocking: move the buffered octets into the temporary file."""
        ...

    def commit(self) -> list[str]:
        """Blocking: make the message durable in every mailbox and return the stored file
        name per mailbox, in the order given to `MailStore.begin`. When this returns, the
        message survives a crash; when it raises, the caller must `abort`."""
        ...

    def abort(self) -> None:
        """Blocking but cheap: drop the temporary file. A no-op after `commit`."""
        ...


class MailStore(Protocol):
    """Where local mail goes."""

    def begin(
        self, mailboxes: Sequence[MailboxId], *, prefix: bytes, folder: str | None = None
    ) -> Delivery:
        """Start one message for `mailboxes`; `prefix` (trace header lines in CRLF form)
        is stored before the content. `folder` (an IMAP folder name such as "Junk")
        files it in that folder of each mailbox instead of its INBOX, the folder made on
        first use. Does no I/O; ValueError for a folder name the store cannot hold."""
        ...

    def commit_many(self, deliveries: Sequence[Delivery]) -> list[list[str] | OSError]:
        """Blocking: `commit` each of `deliveries` (begun by this store), together: what
        they share (a directory to sync) is done once. Per delivery, in order, the names
        `commit` would return, or the OSError that stopped it (the caller must then
        `abort` it). Every name returned is durable; a failure of one delivery does not
        fail the others, unless it is the sync of a directory they share."""
        ...

    def maildir(self, mailbox: MailboxId) -> pathlib.Path:
        """The directory that holds `mailbox` (it may not exist yet)."""
        ...

    def full(self, mailbox: MailboxId) -> bool:
        """Whether `mailbox` is at or over its storage limit, as far as one small read
        tells (never a walk of the mailbox: fit for an event loop); False when it has
        no limit or its usage is not known yet."""
        ...
