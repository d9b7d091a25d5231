"""What ``sansmail-trio mailbox`` does to a user's folders on the PostgreSQL backend,
beside the sessions of every node: the counterpart of `sansmail.storage.maildir._imapadmin`.

- status is IMAP STATUS (`_imapadmin.folder_status` works on any `MailAccount`);
- resync has nothing to rebuild: the rows are the index, and the database keeps them
  consistent; it reports the folder as checked, with its counts, so scripts written for
  the Maildir backend (or ``doveadm force-resync``) keep working;
- expunge by date is one transaction (`_mailrows.remove_messages`: rows, tombstones, a
  new mod-sequence, the usage and a NOTIFY), so every node's sessions hear of it as of
  another client's EXPUNGE, and an IDLE session at once.

Blocking (worker threads, or the CLI).
"""

from __future__ import annotations

import datetime

from sansmail.storage.maildir._imapadmin import FolderStatus, Resynced, folder_status
from sansmail.storage.maildir._imapbase import FolderInfo, NoSuchFolderError
from sansmail.storage.pg import _mailrows
from sansmail.storage.pg._imapstore import PgMailAccount

__all__ = ["PgAccountAdmin", "expunge_before", "resync"]


class PgAccountAdmin:
    """One account as the ``mailbox`` commands see it: the methods of
    `MaildirAccount` they use, on `account`."""

    def __init__(self, account: PgMailAccount) -> None:
        self.account = account

    def list_folders(self) -> list[FolderInfo]:
        return self.account.list_folders()

    def folder_status(self, name: str) -> FolderStatus:
        return folder_status(self.account, name)

    def resync(self, name: str) -> Resynced:
        return resync(self.account, name)

    def expunge_before(self, name: str, before: int) -> list[int]:
        return expunge_before(self.account, name, before)


def resync(account: PgMailAccount, name: str) -> Resynced:
    """Folder `name` as it stands: "checked" (see the module docstring)."""
    status = folder_status(account, name)
    return Resynced(
        name=name,
        outcome="checked",
        uidvalidity_before=status.uidvalidity,
        uidvalidity=status.uidvalidity,
        messages=status.messages,
        added=0,
        expunged=0,
    )


def expunge_before(account: PgMailAccount, name: str, before: int) -> list[int]:
    """Expunge every message of folder `name` whose INTERNALDATE is before `before`
    (seconds since the epoch), in one transaction; their UIDs, ascending."""
    cutoff = datetime.datetime.fromtimestamp(before, datetime.UTC)
    with account.db.transaction() as cur:
        folder_id = _mailrows.find_folder(cur, account.mailbox, name)
        if folder_id is None:
            raise NoSuchFolderError(f"no folder {name!r}")
        # The folder row first, as every writer locks it, then the messages.
        cur.execute("SELECT 1 FROM mail_folders WHERE id = %s FOR UPDATE", (folder_id,))
        cur.execute(
            "SELECT uid FROM mail_messages WHERE folder_id = %s AND internaldate < %s",
            (folder_id, cutoff),
        )
        uids = [int(uid) for (uid,) in cur.fetchall()]
        return _mailrows.remove_messages(cur, folder_id, account.mailbox, uids)
