"""The mailbox-level commands: LIST, LSUB, STATUS, CREATE, DELETE, RENAME, SUBSCRIBE,
UNSUBSCRIBE (RFC 9051 §6.3), over a `MailAccount`.

Each function takes the parsed command and returns the untagged responses and the
tagged completion; none depends on a selected folder, so `ImapSession` calls them in
the authenticated and selected states alike.

LIST (RFC 9051 §6.3.9, RFC 5258 LIST-EXTENDED, RFC 5819 LIST-STATUS, RFC 6154
SPECIAL-USE). The reference and each pattern are joined (§6.3.9: the reference is a
prefix unless the pattern starts with the delimiter), then matched with ``*`` (anything)
and ``%`` (anything but the delimiter). The store's `list_folders` already lists missing
parents (\\Noselect / \\NonExistent) and subscribed names that no longer exist, so the
selection options only filter it: SUBSCRIBED keeps subscribed names, RECURSIVEMATCH
adds CHILDINFO to a parent whose subscribed child matched only through it (RFC 5258
§3.5), SPECIAL-USE keeps folders with a special-use attribute. CHILDREN, SUBSCRIBED and
SPECIAL-USE return options are always honoured, so asking for them changes nothing
(RFC 5258 §3.4 lets a server send them unasked). RETURN (STATUS (...)) follows each
selectable name's LIST line with its STATUS (RFC 5819 §2).
"""

from __future__ import annotations

import contextlib
import errno
import re
import sqlite3
from collections.abc import Callable

from sansmail.imap import (
    Create,
    Delete,
    List,
    Lsub,
    Rename,
    Response,
    ResponseCode,
    Status,
    Subscribe,
    Tagged,
    Unsubscribe,
    Untagged,
    Value,
)
from sansmail.storage.maildir import (
    DEFAULT_SPECIAL_USE,
    SEPARATOR,
    STATUS_ITEMS,
    FolderInfo,
    ImapStoreError,
    MailAccount,
    NoSuchFolderError,
)

__all__ = [
    "create",
    "delete",
    "is_storage_failure",
    "list_mailboxes",
    "lsub",
    "match_pattern",
    "no",
    "ok",
    "rename",
    "status",
    "storage_failure",
    "subscribe",
    "unsubscribe",
]

_INBOX = "INBOX"

# A disk (or a file system quota) that is full, in errno's words and SQLite's.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_FULL_SQLITE = frozenset({"SQLITE_FULL"})
# A disk that fails: SQLite's words (SQLITE_IOERR_WRITE, _FSYNC ...; a read-only file
# system). Any OSError out of the store is one too.
_FAILING_SQLITE = ("SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN")


def storage_failure(tag: str, exc: BaseException) -> Tagged | None:
    """The tagged NO for a command the disk kept from being carried out, or None when
    `exc` is not a disk's error (a bug, which ends the session).

    RFC 5530 has no code for a full disk; Dovecot answers it with ``NO [OVERQUOTA] Not
    enough disk space``, and so do we: it is a temporary, storage-size refusal, which
    clients show the user rather than retry in a loop, and a file system quota (EDQUOT)
    is exactly what OVERQUOTA names. A disk that fails (EIO, a read-only file system) is
    ``NO [SERVERBUG]`` as Dovecot says it, the details going to the log. Either way it
    is a NO, not a BYE: the store undid the command (a message APPENDed, COPYed or
    MOVEd is in no folder but the one it was in), and reads go on being served."""
    full = _full(exc)
    if full is None:
        return None
    if full:
        return Tagged(
            tag=tag, status="NO", code=ResponseCode(name="OVERQUOTA"), text="Not enough disk space"
        )
    return Tagged(
        tag=tag,
        status="NO",
        code=ResponseCode(name="SERVERBUG"),
        text="Internal error occurred. Refer to server log for more information.",
    )


def is_storage_failure(exc: BaseException) -> bool:
    """Whether `exc` is a disk's refusal that `storage_failure` answers."""
    return _full(exc) is not None


def _full(exc: BaseException) -> bool | None:
    # True: a full disk; False: a failing one; None: not the disk's doing.
    if isinstance(exc, OSError):
        return exc.errno in _FULL_ERRNOS
    if isinstance(exc, sqlite3.OperationalError):
        name = getattr(exc, "sqlite_errorname", "")
        if name in _FULL_SQLITE:
            return True
        if name.startswith(_FAILING_SQLITE):
            return False
    return None


def no(tag: str, error: ImapStoreError, *, code: str | None = None) -> Tagged:
    """The tagged NO for a store error, with its RFC 5530 code."""
    name = code or error.code
    text = str(error) or "refused"
    return Tagged(
        tag=tag, status="NO", code=ResponseCode(name=name) if name else None, text=_safe(text)
    )


def _safe(text: str) -> str:
    # Response text is one line of printable text, and "[" would open a code.
    cleaned = "".join(c if c.isprintable() else "?" for c in text)
    return cleaned.lstrip("[") or "refused"


def ok(tag: str, text: str) -> Tagged:
    """A tagged OK."""
    return Tagged(tag=tag, status="OK", text=text)


def _normalize_inbox(name: str) -> str:
    # RFC 9051 §5.1: "INBOX" is case-insensitive, also as the first level of a pattern.
    if name[:5].upper() == _INBOX and (len(name) == 5 or name[5] == SEPARATOR):
        return _INBOX + name[5:]
    return name


def match_pattern(reference: str, pattern: str) -> Callable[[str], bool]:
    """A predicate for the names LIST `reference` `pattern` matches (RFC 9051 §6.3.9)."""
    if pattern.startswith(SEPARATOR) or not reference:
        full = pattern
    elif reference.endswith(SEPARATOR):
        full = reference + pattern
    else:
        full = reference + SEPARATOR + pattern if not pattern else reference + pattern
    full = _normalize_inbox(full)
    regex = "".join(
        ".*" if c == "*" else f"[^{re.escape(SEPARATOR)}]*" if c == "%" else re.escape(c)
        for c in full
    )
    compiled = re.compile(regex, re.DOTALL)
    return lambda name: compiled.fullmatch(name) is not None


def list_mailboxes(account: MailAccount, command: List, *, rev2: bool) -> list[Response]:
    """LIST in all its forms; see the module docstring."""
    if command.patterns == ("",):
        # RFC 9051 §6.3.9: an empty pattern asks for the delimiter and the root name.
        root = command.reference.split(SEPARATOR, 1)[0] if command.reference else ""
        return [
            Untagged.mailbox_list(attributes=["\\Noselect"], delimiter=SEPARATOR, mailbox=root),
            ok(command.tag, "LIST completed"),
        ]
    matchers = [match_pattern(command.reference, p) for p in command.patterns if p]
    folders = account.list_folders()
    subscribed_only = "SUBSCRIBED" in command.selection
    special_only = "SPECIAL-USE" in command.selection
    recursive = "RECURSIVEMATCH" in command.selection
    out: list[Response] = []
    shown: set[str] = set()
    for info in folders:
        if not any(match(info.name) for match in matchers):
            continue
        extended: list[Value] = []
        if subscribed_only and not info.subscribed:
            if not (recursive and _has_subscribed_child(info.name, folders)):
                continue
            extended = [b"CHILDINFO", [b"SUBSCRIBED"]]
        if special_only and not (info.special_use and info.exists):
            continue
        shown.add(info.name)
        out.append(
            Untagged.mailbox_list(
                attributes=_attributes(info, rev2=rev2, extended=bool(command.selection)),
                delimiter=SEPARATOR,
                mailbox=info.name,
                extended=extended,
            )
        )
        if command.status_items and info.exists:
            # RFC 5819 §2: a mailbox that cannot be STATUSed just has no STATUS line.
            with contextlib.suppress(ImapStoreError):
                out.append(_status_response(account, info.name, command.status_items))
    out.append(ok(command.tag, "LIST completed"))
    return out


def _attributes(info: FolderInfo, *, rev2: bool, extended: bool) -> list[str]:
    attributes = info.attributes(rev2=rev2)
    if not rev2 and not extended and info.exists:
        # A rev1 client that asked a plain LIST gets no \Subscribed (RFC 3501 knows
        # only LSUB for that), though RFC 5258 would allow it.
        attributes = [a for a in attributes if a != "\\Subscribed"]
    return attributes


def _has_subscribed_child(name: str, folders: list[FolderInfo]) -> bool:
    prefix = name + SEPARATOR
    return any(f.subscribed and f.name.startswith(prefix) for f in folders)


def lsub(account: MailAccount, command: Lsub) -> list[Response]:
    """LSUB (RFC 3501 §6.3.9): the subscribed names that match."""
    if not command.pattern:
        return [
            Untagged.mailbox_list(
                attributes=["\\Noselect"], delimiter=SEPARATOR, mailbox="", lsub=True
            ),
            ok(command.tag, "LSUB completed"),
        ]
    match = match_pattern(command.reference, command.pattern)
    out: list[Response] = [
        Untagged.mailbox_list(
            attributes=[] if info.exists else ["\\Noselect"],
            delimiter=SEPARATOR,
            mailbox=info.name,
            lsub=True,
        )
        for info in account.list_folders()
        if info.subscribed and match(info.name)
    ]
    out.append(ok(command.tag, "LSUB completed"))
    return out


def _status_response(account: MailAccount, name: str, items: tuple[str, ...]) -> Untagged:
    asked = [item for item in dict.fromkeys(items) if item in STATUS_ITEMS]
    values = account.status(name, asked) if asked else {}
    return Untagged.status(
        mailbox=name, items=[(item, values[item]) for item in asked if item in values]
    )


def status(account: MailAccount, command: Status, *, append_limit: int) -> list[Response]:
    """STATUS (RFC 9051 §6.3.11); APPENDLIMIT is the server's (RFC 7889 §4),
    HIGHESTMODSEQ the folder's (RFC 7162 §3.1.6), MAILBOXID left out (OBJECTID is not
    offered)."""
    try:
        asked = [i for i in dict.fromkeys(command.items) if i in STATUS_ITEMS]
        values = account.status(command.mailbox, asked) if asked else {}
    except ImapStoreError as exc:
        return [no(command.tag, exc)]
    pairs: list[tuple[str, int]] = []
    for item in dict.fromkeys(command.items):
        if item == "APPENDLIMIT":
            pairs.append((item, append_limit))
        elif item in values:
            pairs.append((item, values[item]))
    return [
        Untagged.status(mailbox=command.mailbox, items=pairs),
        ok(command.tag, "STATUS completed"),
    ]


def create(account: MailAccount, command: Create) -> list[Response]:
    """CREATE (RFC 9051 §6.3.4). CREATE ... (USE (...)) (RFC 6154 §3) is honoured only
    where it asks for the attribute the name already carries (Sent, Drafts ...):
    special-use attributes come with the name here, they cannot be assigned."""
    name = command.mailbox.rstrip(SEPARATOR) or command.mailbox
    if command.special_use:
        wanted = set(command.special_use)
        if wanted != {DEFAULT_SPECIAL_USE.get(name)}:
            return [
                Tagged(
                    tag=command.tag,
                    status="NO",
                    code=ResponseCode(name="USEATTR"),
                    text="Special-use attributes follow the folder name here",
                )
            ]
    try:
        account.create(command.mailbox)
    except ImapStoreError as exc:
        return [no(command.tag, exc)]
    return [ok(command.tag, "CREATE completed")]


def delete(account: MailAccount, command: Delete) -> list[Response]:
    """DELETE (RFC 9051 §6.3.5)."""
    try:
        account.delete(command.mailbox)
    except ImapStoreError as exc:
        return [no(command.tag, exc)]
    return [ok(command.tag, "DELETE completed")]


def rename(account: MailAccount, command: Rename) -> list[Response]:
    """RENAME (RFC 9051 §6.3.6); RENAME INBOX moves its messages (the store's work)."""
    try:
        account.rename(command.mailbox, command.new_mailbox)
    except ImapStoreError as exc:
        return [no(command.tag, exc)]
    return [ok(command.tag, "RENAME completed")]


def subscribe(account: MailAccount, command: Subscribe) -> list[Response]:
    """SUBSCRIBE (RFC 9051 §6.3.7): only an existing name can be subscribed to."""
    try:
        if not any(f.name == command.mailbox and f.exists for f in account.list_folders()):
            raise NoSuchFolderError(f"no folder {command.mailbox}")
        account.subscribe(command.mailbox)
    except ImapStoreError as exc:
        return [no(command.tag, exc)]
    return [ok(command.tag, "SUBSCRIBE completed")]


def unsubscribe(account: MailAccount, command: Unsubscribe) -> list[Response]:
    """UNSUBSCRIBE (RFC 9051 §6.3.8): also of a name that no longer exists."""
    try:
        account.unsubscribe(command.mailbox)
    except ImapStoreError as exc:
        return [no(command.tag, exc)]
    return [ok(command.tag, "UNSUBSCRIBE completed")]
