"""The IMAP store interface: what the IMAP session reads and files mail through.

Three layers, each a Protocol so that another back end (PostgreSQL for the index, object
storage for the bodies) can replace the Maildir+SQLite one without touching protocol code:

- `ImapStore` hands out one `MailAccount` per user;
- `MailAccount` manages the user's folders (LIST data, CREATE, DELETE, RENAME,
  SUBSCRIBE, STATUS, APPEND) and opens a `FolderView` for SELECT/EXAMINE;
- `FolderView` is one session's view of one folder: the message list in sequence-number
  order as last reported to the client, and the operations on it.

Names are Unicode text with "/" as the hierarchy delimiter; "INBOX" is matched without
regard to case (RFC 9051 §5.1). Converting modified UTF-7 from IMAP4rev1 clients is the
session's job (`sansmail.storage.maildir` exports the codec). System flags are spelled
``\\Seen``, ``\\Answered``, ``\\Flagged``, ``\\Deleted``, ``\\Draft``; keywords are atoms.
``\\Recent`` is never a stored flag: a view reports its recent messages separately.

Message content is always returned in CRLF form, and sizes (RFC822.SIZE, STATUS SIZE) are
of that form. Every method blocks (file and database I/O): call them from a worker thread,
one thread at a time per object.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import BinaryIO, NamedTuple, Protocol

import attrs

from sansmail.mail.address import MailboxId

__all__ = [
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
    "FolderView",
    "ImapMessage",
    "ImapStore",
    "ImapStoreError",
    "InvalidFolderNameError",
    "MailAccount",
    "NoSuchFolderError",
    "NotAllowedError",
    "ReadOnlyError",
    "SearchData",
    "StoreResult",
    "StoreUnavailableError",
    "Structures",
    "SyncChanges",
    "TooManyKeywordsError",
]

#: The hierarchy delimiter clients see (RFC 9051 §6.3.9 LIST reply).
SEPARATOR = "/"
#: The system flags a message can carry (RFC 9051 §2.3.2), ``\\Recent`` excluded.
SYSTEM_FLAGS = frozenset({"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"})
#: What `MailAccount.status` can count (RFC 9051 §6.3.11, plus RECENT from RFC 3501 and
#: HIGHESTMODSEQ from RFC 7162).
STATUS_ITEMS = frozenset(
    {"MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE", "RECENT", "HIGHESTMODSEQ"}
)


# -- errors ----------------------------------------------------------------------------


class ImapStoreError(Exception):
    """A request the store refuses; the session answers NO with `code` (RFC 5530)."""

    #: The response code to send, e.g. ``NONEXISTENT``, or "" for none.
    code = ""


class NoSuchFolderError(ImapStoreError):
    """The folder does not exist (or is a \\Noselect parent, for SELECT/APPEND/COPY)."""

    code = "NONEXISTENT"


class FolderExistsError(ImapStoreError):
    """CREATE or RENAME onto a name that exists (RFC 9051 §6.3.4, §6.3.6)."""

    code = "ALREADYEXISTS"


class FolderHasChildrenError(ImapStoreError):
    """DELETE of a \\Noselect name that has inferiors (RFC 9051 §6.3.5)."""

    code = "HASCHILDREN"


class InvalidFolderNameError(ImapStoreError):
    """A name this store cannot hold: empty level, control character, wildcard, too long."""

    code = "CANNOT"


class NotAllowedError(ImapStoreError):
    """An operation the rules forbid, e.g. DELETE INBOX (RFC 9051 §6.3.5)."""

    code = "CANNOT"


class ReadOnlyError(ImapStoreError):
    """A change through a view opened read-only (EXAMINE, RFC 9051 §6.3.3)."""

    code = "READ-ONLY"


class ExpungeIssuedError(ImapStoreError):
    """Messages the view still lists were expunged by another session (RFC 5530)."""

    code = "EXPUNGEISSUED"

    def __init__(self, message: str, uids: Iterable[int] = ()) -> None:
        super().__init__(message)
        self.uids = tuple(uids)


class TooManyKeywordsError(ImapStoreError):
    """A folder holds at most 26 keywords (the letters a-z of the Maildir file names)."""

    code = "LIMIT"


class StoreUnavailableError(ImapStoreError):
    """The storage cannot be reached now (a database connection lost, a failover under
    way): the command may work when tried again (RFC 5530)."""

    code = "UNAVAILABLE"


class FolderGoneError(ImapStoreError):
    """The selected folder was deleted or renamed, or its index was rebuilt with a new
    UIDVALIDITY: the view's UIDs mean nothing any more. The session should end (BYE)."""

    code = "NONEXISTENT"


# -- values ----------------------------------------------------------------------------


class FlagMode(enum.Enum):
    """STORE's three forms (RFC 9051 §6.4.6): FLAGS, +FLAGS, -FLAGS."""

    REPLACE = "replace"
    ADD = "add"
    REMOVE = "remove"


@attrs.frozen(kw_only=True, slots=True)
class ImapMessage:
    """One message as a view last reported it."""

    uid: int
    #: System flags and keywords, ``\\Recent`` never included.
    flags: frozenset[str]
    #: INTERNALDATE (RFC 9051 §2.3.3), timezone-aware.
    internaldate: datetime.datetime
    #: RFC822.SIZE: octets of the CRLF form.
    size: int


@attrs.frozen(kw_only=True)
class FolderInfo:
    """One name for LIST/LSUB (RFC 9051 §6.3.9, RFC 5258, RFC 6154).

    `MailAccount.list_folders` returns every existing folder, every missing parent of one
    (``exists`` false, ``has_children`` true: a \\Noselect name) and every subscribed
    name that does not exist (``exists`` false).
    """

    name: str
    exists: bool
    has_children: bool
    subscribed: bool
    #: ``\\Sent``, ``\\Drafts``, ``\\Trash``, ``\\Junk``, ``\\Archive`` or None.
    special_use: str | None = None

    def attributes(self, *, rev2: bool = False) -> list[str]:
        """The name attributes for a LIST reply with CHILDREN and SPECIAL-USE returned
        and \\Subscribed included when subscribed (clients that did not ask for
        RETURN (SUBSCRIBED) can be given it: RFC 5258 §3.4 lets servers add it)."""
        out: list[str] = []
        if not self.exists:
            # RFC 9051 §7.3.1: \NonExistent implies \Noselect; rev1 clients (RFC 3501
            # §7.2.2) know only \Noselect.
            out.append("\\NonExistent" if rev2 else "\\Noselect")
        out.append("\\HasChildren" if self.has_children else "\\HasNoChildren")
        if self.subscribed:
            out.append("\\Subscribed")
        if self.special_use and self.exists:
            out.append(self.special_use)
        return out


@attrs.frozen(kw_only=True)
class SyncChanges:
    """What a view learnt since its last report, in the order to send it.

    Send ``* n EXPUNGE`` for each of `expunged` in order (each number is valid at the
    moment it is sent), then ``* n EXISTS`` if `added` is not empty, ``* n RECENT`` if
    `recent` is not None (rev1 only), a new FLAGS/PERMANENTFLAGS if `keywords` is not
    None, and ``* seq FETCH (FLAGS (...))`` for each of `flags`.
    """

    #: Message sequence numbers to report as EXPUNGE, in sending order.
    expunged: tuple[int, ...] = ()
    #: The same messages' UIDs (for VANISHED, RFC 7162), ascending.
    expunged_uids: tuple[int, ...] = ()
    #: Messages new to this view, ascending UID; they are at the end of `messages`.
    added: tuple[ImapMessage, ...] = ()
    #: The new count of messages (the EXISTS value).
    exists: int = 0
    #: The new number of \Recent messages, when it changed.
    recent: int | None = None
    #: (sequence number after the expunges, UID, flags) of messages whose flags changed.
    flags: tuple[tuple[int, int, frozenset[str]], ...] = ()
    #: UID -> mod-sequence of each message of `flags` (RFC 7162: their FETCH carries
    #: MODSEQ once the client enabled CONDSTORE); empty from a store without them.
    modseqs: Mapping[int, int] = attrs.field(factory=dict)
    #: The folder's keywords, when a new one was defined.
    keywords: tuple[str, ...] | None = None
    #: The index was rebuilt (new UIDVALIDITY) or the folder vanished: end the session.
    uidvalidity_changed: bool = False

    def __bool__(self) -> bool:
        return bool(
            self.expunged
            or self.added
            or self.recent is not None
            or self.flags
            or self.keywords is not None
            or self.uidvalidity_changed
        )


class Structures(NamedTuple):
    """What FETCH keeps of a message so that it parses the message once: ENVELOPE,
    BODYSTRUCTURE and BODY already in IMAP wire form (`sansmail.imap.encode_value`), and
    the opaque blob of `FolderView.set_cache`. The store keeps the octets and never looks
    inside; None is "not kept (yet)"."""

    envelope: bytes | None = None
    bodystructure: bytes | None = None
    body: bytes | None = None
    cache: bytes | None = None


class SearchData(NamedTuple):
    """What SEARCH compares of a message (RFC 9051 §6.4.4), worked out by the session and
    kept by the store so that a SEARCH reads no file. Strings are case-folded
    (`str.casefold`), header values decoded (RFC 2047)."""

    #: The message's own header fields: (lower-case name, value), in order.
    fields: tuple[tuple[str, str], ...]
    #: The day written in its Date: field (`datetime.date.toordinal`), None if unreadable.
    sent: int | None
    #: What TEXT compares besides `bodies`: every header field of every part, as
    #: "name: value"; None when not worked out (only `fields` and `sent` are then kept).
    headers: tuple[str, ...] | None = None
    #: What BODY compares: the decoded body of each text part; None as for `headers`.
    bodies: tuple[str, ...] | None = None


class StoreResult(NamedTuple):
    """What a (conditional) STORE did (`FolderView.store`)."""

    #: UID -> the message's flags now, for every message stored to (or left as it was).
    flags: dict[int, frozenset[str]]
    #: UID -> its mod-sequence now (RFC 7162), for the same messages.
    modseqs: dict[int, int]
    #: UIDs left alone because their mod-sequence was above UNCHANGEDSINCE, ascending.
    modified: list[int]


class AppendResult(NamedTuple):
    """APPENDUID data (RFC 4315 §3)."""

    uidvalidity: int
    uid: int


class CopyResult(NamedTuple):
    """COPYUID data (RFC 4315 §3): (source UID, destination UID) pairs, source order."""

    uidvalidity: int
    uids: list[tuple[int, int]]


# -- the interface ---------------------------------------------------------------------


class FolderView(Protocol):
    """One session's view of one selected folder.

    The view remembers the message list it last reported; `messages[i]` is sequence
    number ``i + 1``. Changes made through the view (expunge, move, other sessions'
    work) reach that list only through `sync`, which the session calls where RFC 9051
    §7.5.1 lets it send EXPUNGE. `store_flags` is the exception: its result is what the
    session reports in its FETCH replies, so the view takes it as reported.
    """

    @property
    def name(self) -> str: ...

    @property
    def readonly(self) -> bool: ...

    @property
    def uidvalidity(self) -> int: ...

    @property
    def uidnext(self) -> int:
        """UIDNEXT as of the last sync."""
        ...

    @property
    def messages(self) -> Sequence[ImapMessage]: ...

    @property
    def uids(self) -> Sequence[int]:
        """The UIDs of `messages`, in order (ascending), without making the messages."""
        ...

    @property
    def highestmodseq(self) -> int:
        """HIGHESTMODSEQ (RFC 7162 §3.1.2) as of the last sync: every change the view
        has reported is at or below it, none it has not reported is. 0: this store
        keeps no mod-sequences (SELECT says NOMODSEQ)."""
        ...

    def flag_states(self, uids: Iterable[int]) -> dict[int, tuple[int, frozenset[str]]]:
        """UID -> (mod-sequence, flags) as the store holds them now, for those of
        `uids` that still exist: a pair FETCH MODSEQ can report together (the view's
        list may hold older flags, which its next sync reports)."""
        ...

    def changed_since(self, modseq: int) -> dict[int, tuple[int, frozenset[str]]]:
        """`flag_states` of the view's messages whose mod-sequence is above `modseq`
        (FETCH CHANGEDSINCE, SELECT QRESYNC)."""
        ...

    def vanished_since(self, modseq: int, uids: Sequence[range]) -> list[int]:
        """The UIDs in `uids` expunged after mod-sequence `modseq` and reported by
        this view already (they are not in its list), ascending (VANISHED (EARLIER),
        RFC 7162 §3.2.5, §3.2.6). Where the store no longer knows when a UID went, every
        UID in `uids` below UIDNEXT that the view does not list is in it (§3.2.5.2
        lets the server answer so)."""
        ...

    @property
    def recent(self) -> frozenset[int]:
        """UIDs of the messages this session is the first to see (rev1 \\Recent)."""
        ...

    @property
    def keywords(self) -> tuple[str, ...]:
        """Keywords defined in this folder (for FLAGS)."""
        ...

    @property
    def can_create_keywords(self) -> bool:
        """Whether PERMANENTFLAGS should include ``\\*``."""
        ...

    @property
    def index_rebuilt(self) -> bool:
        """The index was found corrupt and rebuilt when the view opened (log it)."""
        ...

    @property
    def watch_paths(self) -> tuple[str, ...]:
        """The directories whose changes (entries created, renamed, removed) are the
        changes `sync` could report: an IDLE adapter watches them (inotify) and syncs
        when they change, rather than polling. Empty: nothing to watch, poll."""
        return ()

    @property
    def watch_keys(self) -> tuple[str, ...]:
        """The notification keys (PostgreSQL NOTIFY payloads on the store's channel)
        that announce the changes `sync` could report, for an IDLE adapter that listens
        rather than watching directories. Empty: none (watch `watch_paths`, or poll)."""
        return ()

    def sync(self, *, listed_since: int | None = None) -> SyncChanges:
        """Bring the view up to date with the folder and say what changed.
        `listed_since`: the changes looked for happened before this time (the store's
        clock, nanoseconds), so a look at the folder taken since is recent enough."""
        ...

    def read(self, uid: int) -> bytes | None:
        """The message in CRLF form, or None if it was expunged."""
        ...

    def open_content(self, uid: int) -> BinaryIO | None:
        """A stream of the message in CRLF form (for big ones), or None if expunged."""
        ...

    def get_cache(self, uid: int) -> bytes | None:
        """The blob last given to `set_cache` for `uid`, or None."""
        ...

    def set_cache(self, uid: int, blob: bytes) -> None:
        """Keep an opaque blob (the cached structures) with the message."""
        ...

    def structures(self, uids: Iterable[int], *, cache: bool = False) -> dict[int, Structures]:
        """The kept `Structures` of each message of `uids` that still exists, in one
        read (the blob only when `cache`: it is the bulky part, needed only where the
        rest is missing)."""
        ...

    def set_structures(self, values: Mapping[int, Structures]) -> None:
        """Keep `values` in one write; a None member leaves what was kept, and a message
        expunged meanwhile is skipped."""
        ...

    def search_missing(self, uids: Iterable[int], *, texts: bool) -> list[int]:
        """Which of `uids` (ascending, those that still exist) have no `SearchData` kept,
        or, with `texts`, none with its texts."""
        ...

    def keep_search_data(self, values: Mapping[int, SearchData]) -> None:
        """Keep `values` in one write (a message expunged meanwhile is skipped)."""
        ...

    def find_in_header(self, name: str, needle: str) -> set[int]:
        """UIDs of the messages whose kept header field `name` (lower case) holds
        `needle` (case-folded), among those with `SearchData` kept."""
        ...

    def search_fields(self, names: Iterable[str]) -> dict[int, dict[str, str]]:
        """UID -> {name: kept value of the first field so named} for the header fields
        `names` (lower case), among the messages with `SearchData` kept (SORT, THREAD)."""
        ...

    def find_in_texts(self, needle: str, *, bodies_only: bool) -> set[int] | None:
        """UIDs of the messages whose kept texts (`SearchData.headers` and `bodies`, or
        `bodies` alone) hold `needle` (case-folded) in one of their entries; None when
        the store cannot answer for this needle (the session then reads the files)."""
        ...

    def sent_days(self) -> dict[int, int]:
        """UID -> `SearchData.sent` of the messages kept with a readable Date:."""
        ...

    def contents(self, uids: Iterable[int]) -> Iterator[tuple[int, bytes | None]]:
        """(UID, content in CRLF form or None if expunged) for each of `uids` in order,
        read one file at a time with one index read for them all."""
        ...

    def store_flags(
        self, uids: Iterable[int], flags: Collection[str], mode: FlagMode
    ) -> dict[int, frozenset[str]]:
        """Change flags; returns the new flags of every message of `uids` still there."""
        ...

    def store(
        self,
        uids: Iterable[int],
        flags: Collection[str],
        mode: FlagMode,
        *,
        unchangedsince: int | None = None,
    ) -> StoreResult:
        """`store_flags` with the mod-sequences, and conditional (RFC 7162 §3.1.3): a
        message whose mod-sequence is above `unchangedsince` is left alone, decided in
        the same transaction as the change."""
        ...

    def append(
        self,
        content: bytes,
        flags: Collection[str] = (),
        internaldate: datetime.datetime | None = None,
    ) -> AppendResult:
        """APPEND to this view's folder; see `MailAccount.append`."""
        ...

    def copy(self, uids: Iterable[int], dest: str) -> CopyResult:
        """COPY (RFC 9051 §6.4.7): all or nothing; `ExpungeIssuedError` if one of
        `uids` (still listed by the view) has been expunged meanwhile."""
        ...

    def move(self, uids: Iterable[int], dest: str) -> CopyResult:
        """MOVE (RFC 6851): as `copy`, and the sources leave this folder (their EXPUNGE
        comes with the next `sync`)."""
        ...

    def expunge(self, uids: Iterable[int] | None = None) -> list[int]:
        """Remove the messages flagged \\Deleted (of `uids` only, for UID EXPUNGE);
        returns their UIDs. The EXPUNGE responses come with the next `sync`."""
        ...

    def close(self) -> None: ...


class MailAccount(Protocol):
    """One user's folders."""

    def list_folders(self) -> list[FolderInfo]:
        """Every name LIST or LSUB could show, INBOX first, then in name order."""
        ...

    def create(self, name: str) -> None: ...

    def delete(self, name: str) -> None: ...

    def rename(self, old: str, new: str) -> None: ...

    def subscribe(self, name: str) -> None: ...

    def unsubscribe(self, name: str) -> None: ...

    def status(self, name: str, items: Collection[str]) -> dict[str, int]:
        """The `items` (of `STATUS_ITEMS`) of folder `name`."""
        ...

    def select(self, name: str, *, readonly: bool = False) -> FolderView: ...

    def append(
        self,
        name: str,
        content: bytes,
        flags: Collection[str] = (),
        internaldate: datetime.datetime | None = None,
    ) -> AppendResult:
        """Store `content` (CRLF form) durably in folder `name`; when this returns the
        message survives a crash and has its UID. `OverQuotaError` when it would take
        the account over its storage limit."""
        ...

    def storage(self) -> tuple[int, int] | None:
        """(octets used, limit) of the account's storage quota (RFC 9208 STORAGE, all
        folders together); None when it has no limit."""
        ...

    def check_quota(self, octets: int) -> None:
        """`OverQuotaError` unless `octets` more fit under the storage limit (COPY)."""
        ...

    def release(self) -> None:
        """The session is between commands: let go of what only an operation needs (its
        database connections); the next operation takes it again."""

    def close(self) -> None: ...


class ImapStore(Protocol):
    """Where IMAP finds each user's folders."""

    def account(self, mailbox: MailboxId) -> MailAccount: ...
