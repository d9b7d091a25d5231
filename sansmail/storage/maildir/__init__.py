"""Mailboxes on disk: Maildir delivery, the POP3 maildrop, and the IMAP store with its
per-folder index. Blocking file I/O for worker threads; it decides nothing about mail.

`MailStore` is the interface the sessions write through, and `MaildirStore` delivers into
Maildirs under ``<data_dir>/mail/``.

The store does blocking file I/O (and stamps file names with the clock); the adapter calls
`Delivery.flush`, `Delivery.commit` and `Delivery.abort` from worker threads.

`Maildrop` is the other side of a Maildir INBOX: the snapshot, reading and deleting that a
POP3 session does, with its exclusive lock (the `Pop3Maildrop` protocol, opened through a
`MaildropSource`: `MaildirMaildrops`); it blocks too (worker threads).

`QuotaLimits`, `peek_usage` and `recalculate_usage` are the storage quota: each
Maildir's usage, kept current by every writer in its ``maildirsize`` file (`_quota`).

`ImapStore` / `MailAccount` / `FolderView` are what IMAP sessions work through: folders,
UIDs, flags and a per-folder index. `MaildirImapStore` implements them on the same
Maildirs (Maildir++ folders, a SQLite index per folder); another back end would
implement the same protocols. `MaildirAccount.folder_status`, `resync` and
`expunge_before` are what ``sansmail-trio mailbox`` does beside the sessions
(`FolderStatus`, `Resynced`).
"""

from sansmail.storage.maildir._base import BackendUnavailableError, Delivery, MailStore
from sansmail.storage.maildir._imapaccount import (
    DEFAULT_SPECIAL_USE,
    MaildirAccount,
    MaildirImapStore,
)
from sansmail.storage.maildir._imapadmin import FolderStatus, Resynced
from sansmail.storage.maildir._imapbase import (
    SEPARATOR,
    STATUS_ITEMS,
    SYSTEM_FLAGS,
    AppendResult,
    CopyResult,
    ExpungeIssuedError,
    FlagMode,
    FolderExistsError,
    FolderGoneError,
    FolderHasChildrenError,
    FolderInfo,
    FolderView,
    ImapMessage,
    ImapStore,
    ImapStoreError,
    InvalidFolderNameError,
    MailAccount,
    NoSuchFolderError,
    NotAllowedError,
    ReadOnlyError,
    SearchData,
    StoreResult,
    StoreUnavailableError,
    Structures,
    SyncChanges,
    TooManyKeywordsError,
)
from sansmail.storage.maildir._imapnames import decode_mutf7, encode_mutf7, folder_dir
from sansmail.storage.maildir._imapview import MaildirFolderView
from sansmail.storage.maildir._mailbox import (
    Expunged,
    MaildirMaildrops,
    Maildrop,
    MaildropInUseError,
    MaildropSource,
    MessageGoneError,
    MessageInfo,
    MessageReader,
    Pop3Maildrop,
)
from sansmail.storage.maildir._maildir import MaildirStore
from sansmail.storage.maildir._quota import OverQuotaError, QuotaLimits, Usage
from sansmail.storage.maildir._quota import peek as peek_usage
from sansmail.storage.maildir._quota import recalculate as recalculate_usage

__all__ = ["BackendUnavailableError", "Delivery", "MailStore", "MaildirStore"]
__all__ += [
    "Expunged",
    "MaildirMaildrops",
    "Maildrop",
    "MaildropInUseError",
    "MaildropSource",
    "MessageGoneError",
    "MessageInfo",
    "MessageReader",
    "Pop3Maildrop",
]
__all__ += [
    "DEFAULT_SPECIAL_USE",
    "SEPARATOR",
    "STATUS_ITEMS",
    "SYSTEM_FLAGS",
    "AppendResult",
    "CopyResult",
    "ExpungeIssuedError",
    "FlagMode",
    "FolderExistsError",
    "FolderGoneError",
    "FolderHasChildrenError",
    "FolderInfo",
    "FolderStatus",
    "FolderView",
    "ImapMessage",
    "ImapStore",
    "ImapStoreError",
    "InvalidFolderNameError",
    "MailAccount",
    "MaildirAccount",
    "MaildirFolderView",
    "MaildirImapStore",
    "NoSuchFolderError",
    "NotAllowedError",
    "OverQuotaError",
    "QuotaLimits",
    "ReadOnlyError",
    "Resynced",
    "SearchData",
    "StoreResult",
    "StoreUnavailableError",
    "Structures",
    "SyncChanges",
    "TooManyKeywordsError",
    "Usage",
    "decode_mutf7",
    "encode_mutf7",
    "folder_dir",
    "peek_usage",
    "recalculate_usage",
]
