"""QUOTA (RFC 9208) for an IMAP session: GETQUOTA, GETQUOTAROOT, SETQUOTA, and the
storage check before COPY.

One quota root per user, named "" as Dovecot names its default root, holding every
folder of the account, with one resource, STORAGE (RFC 9208 §5.1: units of 1024
octets, rounded up). Its limit is ``[quota] storage`` or the user's own (``sansmail-trio
user quota``); a user with no limit has no quota root: GETQUOTAROOT answers ``*
QUOTAROOT INBOX`` with none, and GETQUOTA "" is NO [NONEXISTENT].

SETQUOTA is refused (NO [NOPERM]): RFC 9208 §4.1.4 leaves it to administrators, and
here they set limits from the CLI. APPEND past the limit is refused by the store
(`OverQuotaError`, NO [OVERQUOTA]); COPY is checked here, with the sizes the view already
knows, before any file is made; MOVE leaves the account's usage as it was and is not.
"""

from __future__ import annotations

from sansmail.imap import (
    Copy,
    GetQuota,
    GetQuotaRoot,
    Response,
    ResponseCode,
    SetQuota,
    Tagged,
    Untagged,
)
from sansmail.sessions.imapd._folders import no, ok
from sansmail.sessions.imapd._messages import select_messages
from sansmail.storage.maildir import FolderView, ImapStoreError, MailAccount, NoSuchFolderError

__all__ = ["ROOT", "copy_refusal", "getquota", "getquotaroot", "setquota"]

#: The one quota root (Dovecot's default root is shown as "" too).
ROOT = ""


def _kib(octets: int) -> int:
    return -(-octets // 1024)


def _quota(root: str, storage: tuple[int, int]) -> Untagged:
    used, limit = storage
    return Untagged.quota(root=root, resources=[("STORAGE", _kib(used), limit // 1024)])


def getquotaroot(account: MailAccount, command: GetQuotaRoot) -> list[Response]:
    """GETQUOTAROOT mailbox (RFC 9208 §4.1.2): the root, then its QUOTA."""
    try:
        account.status(command.mailbox, ["MESSAGES"])  # NONEXISTENT for a missing folder
        storage = account.storage()
    except ImapStoreError as exc:
        return [no(command.tag, exc)]
    if storage is None:
        return [
            Untagged.quotaroot(mailbox=command.mailbox, roots=[]),
            ok(command.tag, "GETQUOTAROOT completed"),
        ]
    return [
        Untagged.quotaroot(mailbox=command.mailbox, roots=[ROOT]),
        _quota(ROOT, storage),
        ok(command.tag, "GETQUOTAROOT completed"),
    ]


def getquota(account: MailAccount, command: GetQuota) -> list[Response]:
    """GETQUOTA root (RFC 9208 §4.1.1)."""
    try:
        storage = account.storage() if command.root == ROOT else None
    except ImapStoreError as exc:
        return [no(command.tag, exc)]
    if storage is None:
        return [no(command.tag, NoSuchFolderError(f"no quota root {command.root!r}"))]
    return [_quota(ROOT, storage), ok(command.tag, "GETQUOTA completed")]


def setquota(command: SetQuota) -> list[Response]:
    """SETQUOTA (RFC 9208 §4.1.4): administrators only, and they use the CLI."""
    return [
        Tagged(
            tag=command.tag,
            status="NO",
            code=ResponseCode(name="NOPERM"),
            text="Quota limits are set by the administrator",
        )
    ]


def copy_refusal(account: MailAccount, view: FolderView, command: Copy) -> Tagged | None:
    """NO [OVERQUOTA] when the messages COPY names would take the account past its
    limit (RFC 9208 §4.3); None to go on."""
    targets = select_messages(view, command.sequence_set, uid=command.uid)
    try:
        account.check_quota(sum(message.size for _n, message in targets))
    except ImapStoreError as exc:
        return no(command.tag, exc)
    return None
