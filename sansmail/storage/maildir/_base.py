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

import errno
from collections.abc import Sequence
from typing import Protocol

from sansmail.mail.address import MailboxId

__all__ = ["BackendUnavailableError", "Delivery", "MailStore"]


class BackendUnavailableError(OSError):
    """The service under a store (a database) failed or could not be reached: a
    temporary failure, answered as a failing disk is (451 4.3.0, -ERR [SYS/TEMP])."""

    def __init__(self, text: str) -> None:
        super().__init__(errno.EIO, text)

    def __str__(self) -> str:
        return str(self.strerror)


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

    def full(self, mailbox: MailboxId) -> bool:
        """Whether `mailbox` is at or over its storage limit, as far as one small read
        tells (never a walk of the mailbox: fit for an event loop); False when it has
        no limit or its usage is not known yet."""
        ...

    def storage(self, mailbox: MailboxId) -> tuple[int, int] | None:
        """Blocking: `mailbox`'s usage in octets and its limit, measured when due (a
        walk for a Maildir whose quota file is stale); None when it has no limit."""
        ...

    def folder_exists(self, mailbox: MailboxId, folder: str) -> bool:
        """Blocking, cheap: whether `folder` (not INBOX) of `mailbox` exists, as
        `begin(..., folder=)` would find it; InvalidFolderNameError for a name no
        folder can have."""
        ...
