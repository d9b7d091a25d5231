"""Local mail storage: the `MailStore` interface the adapter writes through, and
`MaildirStore`, which delivers into Maildirs under ``<data_dir>/mail/``.

The store does blocking file I/O (and stamps file names with the clock); the adapter calls
`Delivery.flush`, `Delivery.commit` and `Delivery.abort` from worker threads.

`Maildrop` is the other side of a Maildir INBOX: the snapshot, reading and deleting that a
POP3 session does, with its exclusive lock; it blocks too (worker threads).
"""

from sansmail.store._base import Delivery, MailboxId, MailStore
from sansmail.store._mailbox import (
    Expunged,
    Maildrop,
    MaildropInUseError,
    MessageGoneError,
    MessageInfo,
    MessageReader,
)
from sansmail.store._maildir import MaildirStore

__all__ = ["Delivery", "MailStore", "MailboxId", "MaildirStore"]
__all__ += [
    "Expunged",
    "Maildrop",
    "MaildropInUseError",
    "MessageGoneError",
    "MessageInfo",
    "MessageReader",
]
