"""SEARCH evaluation: which messages of a view match a criteria tree (RFC 9051 §6.4.4).

Pure: the view's messages come as `ImapMessage`s in sequence order, and content through
`SearchContext.load`, which the session binds to the store (it blocks).

Theory of operation
-------------------
The key tree (`sansmail.imap.SearchKey`) is compiled once into predicates, and what
does not depend on the message is settled then: sequence and UID sets are resolved
against the view ("*" is the count, or the largest UID), needles are case-folded. Each
predicate carries a cost: 0 for what the `ImapMessage` answers (flags, sizes, internal
dates, numbers), 1 for the header (FROM ... HEADER, SENT*), 2 for the body (BODY, TEXT).
An AND tries its cheap keys first and an OR its cheap side first, so "UNSEEN BODY x"
opens only unseen messages, and a search over flags alone never reads a file.

A message's content is loaded at most once per search, and only when a predicate asks;
the header is read without walking the body; the MIME tree is parsed only for BODY and
TEXT. A message expunged meanwhile (`load` returns None) matches no content key.

Matching (RFC 9051 §6.4.4): strings match as case-insensitive substrings (Unicode case
folding) of the RFC 2047-decoded header values (`sansmail.mime.decoded_header`) or of
the text parts' bodies, with the transfer encoding (base64, quoted-printable) undone and
the charset applied. An empty string matches any message that has the field. Dates
ignore the time and the zone: an internal date counts on its day in its own zone, and
SENT* use the day written in the Date: header; a message without a readable Date:
matches no SENT* key. Sequence numbers past the end simply match nothing (the session
checks sets where RFC 9051 wants an error).

With an index (`SearchContext.index`, the store's kept `SearchData`), the header keys,
BODY, TEXT and SENT* are each one question to it at compile time, answered with the set
of UIDs that match, and then cost nothing per message. What the store keeps is made by
`search_data` from the very functions that answer without it, and it answers with
exact substrings (`sansmail.storage.maildir._imapsearch`), so both ways give the same
answer; where the index cannot answer (it says None) the key reads the files as above.
"""

from __future__ import annotations

import datetime
import email.utils
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Final, Protocol

import attrs

from sansmail import mime
from sansmail.imap import (
    SearchAnd,
    SearchDate,
    SearchHeader,
    SearchKey,
    SearchKeyword,
    SearchNot,
    SearchOr,
    SearchSequence,
    SearchSimple,
    SearchSize,
    SearchText,
    SearchUid,
    SequenceSet,
)
from sansmail.imap._search import SearchModseq
from sansmail.storage.maildir import ImapMessage, SearchData

__all__ = ["SearchContext", "SearchIndex", "modseq_keys", "search", "search_data"]


class SearchIndex(Protocol):
    """What a store keeps to answer content keys without reading files. Needles come
    case-folded; each answer is the set of UIDs that match, or None when it cannot tell
    (the key then reads the files)."""

    def header(self, name: bytes, needle: str) -> Collection[int] | None:
        """Messages whose header field `name` (lower case) holds `needle`."""
        ...

    def text(self, needle: str, *, bodies_only: bool) -> Collection[int] | None:
        """Messages whose texts (what TEXT compares, or BODY with `bodies_only`) hold
        `needle`."""
        ...

    def sent(self) -> Mapping[int, datetime.date] | None:
        """The day written in each message's Date: field, where it can be read."""
        ...


@attrs.frozen
class SearchContext:
    """The view a SEARCH runs over."""

    #: The session's view, in sequence order: sequence number = index + 1.
    messages: Sequence[ImapMessage]
    #: UID -> the content in CRLF form (None if expunged); called only for content keys.
    load: Callable[[int], bytes | None]
    #: UIDs that are \\Recent for this session (RECENT, NEW, OLD: IMAP4rev1 only).
    recent: frozenset[int] = frozenset()
    #: UIDs of the result saved by SEARCH RETURN (SAVE), which "$" names (RFC 5182 §2.1);
    #: None when the session keeps none, and then "$" raises ValueError.
    saved: frozenset[int] | None = None
    #: The store's index of what messages say; None: content keys read the files.
    index: SearchIndex | None = None
    #: The UIDs of `messages` in order, when the caller has them without making the
    #: messages (a key the index answers then needs no message at all).
    uids: Sequence[int] | None = None
    #: UID -> mod-sequence (RFC 7162), for MODSEQ keys; a message without one has 0.
    modseqs: Mapping[int, int] | None = None


def modseq_keys(key: SearchKey) -> bool:
    """Whether `key` holds a MODSEQ key (RFC 7162 §3.1.5: the answer then carries the
    highest mod-sequence of what matched)."""
    if isinstance(key, SearchModseq):
        return True
    if isinstance(key, SearchAnd):
        return any(modseq_keys(k) for k in key.keys)
    if isinstance(key, SearchOr):
        return modseq_keys(key.left) or modseq_keys(key.right)
    if isinstance(key, SearchNot):
        return modseq_keys(key.key)
    return False


def search(criteria: SearchKey, ctx: SearchContext) -> list[int]:
    """The sequence numbers of the messages matching `criteria`, ascending. Raises
    ValueError for "$" when `ctx.saved` is None."""
    uids = ctx.uids if ctx.uids is not None else [message.uid for message in ctx.messages]
    scope = _Scope(ctx, uids)
    node = _compile(criteria, scope)
    if node.uids is not None:
        # Answered as a set (index answers and ALL, under AND, OR and NOT): no message
        # is made or tested.
        members = node.uids
        return [seq for seq, uid in enumerate(uids, start=1) if uid in members]
    return [
        seq
        for seq, message in enumerate(ctx.messages, start=1)
        if node.test(_Candidate(seq, message, ctx.load))
    ]


class _Scope:
    """What compiling needs besides the key: the context and the view's UIDs."""

    def __init__(self, ctx: SearchContext, uids: Sequence[int]) -> None:
        self.ctx = ctx
        self.uids = uids
        self.count = len(uids)
        self.largest_uid = max(uids, default=0)
        self._universe: frozenset[int] | None = None

    @property
    def universe(self) -> frozenset[int]:
        if self._universe is None:
            self._universe = frozenset(self.uids)
        return self._universe


# -- one message under test ------------------------------------------------------------


class _Candidate:
    """A message and its content, loaded and taken apart only as far as keys need."""

    def __init__(self, seq: int, message: ImapMessage, load: Callable[[int], bytes | None]) -> None:
        self.seq = seq
        self.message = message
        self._load = load
        self._loaded = False
        self._raw: bytes | None = None
        self._root: mime.MessagePart | None = None
        self._headers: list[tuple[bytes, str]] | None = None
        self._texts: list[str] | None = None

    def raw(self) -> bytes | None:
        if not self._loaded:
            self._loaded = True
            self._raw = self._load(self.message.uid)
        return self._raw

    def root(self) -> mime.MessagePart | None:
        raw = self.raw()
        if raw is not None and self._root is None:
            self._root = mime.parse(raw)
        return self._root

    def headers(self) -> list[tuple[bytes, str]]:
        """The message header's fields as (lower-case name, decoded value)."""
        if self._headers is None:
            raw = self.raw()
            if raw is None:
                self._headers = []
            else:
                # Without a parse, a part spanning the message stands for the header:
                # the header scan stops at the first empty line, the body is never read.
                top = self._root or mime.MessagePart(raw, 0, len(raw))
                self._headers = _decoded_fields(raw, top)
        return self._headers

    def texts(self) -> list[str]:
        """Everything TEXT searches, case-folded: every header (the message's, the
        parts', the encapsulated messages') and every text part's decoded body."""
        if self._texts is None:
            raw, root = self.raw(), self.root()
            self._texts = [] if raw is None or root is None else list(_texts(raw, root))
        return self._texts

    def bodies(self) -> list[str]:
        """The decoded, case-folded bodies of the text parts (BODY)."""
        raw, root = self.raw(), self.root()
        if raw is None or root is None:
            return []
        return [text for is_body, text in _entities(raw, root) if is_body]


def search_data(raw: bytes, *, texts: bool) -> SearchData:
    """What the keys of this module compare of the message `raw`, for a store to keep:
    its header fields and Date: day always, its texts only with `texts` (they cost a
    parse and the decoding of every text part)."""
    fields = _decoded_fields(raw, mime.MessagePart(raw, 0, len(raw)))
    sent = _sent_date(fields)
    data = SearchData(
        fields=tuple((name.decode("latin-1"), value.casefold()) for name, value in fields),
        sent=None if sent is None else sent.toordinal(),
    )
    if not texts:
        return data
    entities = list(_entities(raw, mime.parse(raw)))
    return data._replace(
        headers=tuple(text for is_body, text in entities if not is_body),
        bodies=tuple(text for is_body, text in entities if is_body),
    )


def _decoded_fields(raw: bytes, part: mime.MessagePart) -> list[tuple[bytes, str]]:
    return [
        (name.lower(), mime.decoded_header(value)) for name, value in mime.header_fields(raw, part)
    ]


def _texts(raw: bytes, root: mime.MessagePart) -> Iterator[str]:
    for _, text in _entities(raw, root):
        yield text


def _entities(raw: bytes, part: mime.MessagePart) -> Iterator[tuple[bool, str]]:
    """(is a body, case-folded text) for every header block and text body of the tree,
    encapsulated messages included, in message order."""
    for name, value in _decoded_fields(raw, part):
        yield False, f"{name.decode('latin-1')}: {value}".casefold()
    if part.multipart:
        for child in part.children:
            yield from _entities(raw, child)
    elif part.encapsulated is not None:
        yield from _entities(raw, part.encapsulated)
    elif part.is_text:
        # Part number 1 of a part that is not multipart is the part itself (RFC 9051
        # §6.4.5), so this undoes the part's own transfer encoding.
        body = mime.binary(raw, part, (1,))
        if isinstance(body, mime.UnknownEncoding):
            body = raw[part.body_start : part.body_end]
        yield True, _decode_text(body or b"", part.params).casefold()


def _decode_text(data: bytes, params: tuple[tuple[bytes, bytes], ...]) -> str:
    charset = next((value for name, value in params if name.lower() == b"charset"), b"")
    try:
        # LookupError: unknown, or no text encoding (base64, rot13); ValueError: a NUL in
        # the name, or a codec that refuses "replace" (idna, undefined). See mime._fields.
        return data.decode(charset.decode("ascii").strip('"'), errors="replace")
    except (LookupError, ValueError):
        pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


# -- compiling the tree ----------------------------------------------------------------


@attrs.frozen
class _Node:
    """A compiled key: `test` answers for one message; `cost` orders AND and OR; `uids`
    is the set of UIDs that match when it is known without testing each message."""

    cost: int
    test: Callable[[_Candidate], bool]
    uids: frozenset[int] | None = None

    @classmethod
    def of(cls, uids: frozenset[int]) -> _Node:
        return cls(0, lambda m: m.message.uid in uids, uids)


_FLAG_KEYS: Final = {
    "ANSWERED": ("\\Answered", True),
    "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True),
    "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}
_HEADER_OF_KEY: Final = {
    "FROM": b"from",
    "TO": b"to",
    "CC": b"cc",
    "BCC": b"bcc",
    "SUBJECT": b"subject",
}


def _compile(key: SearchKey, scope: _Scope) -> _Node:
    ctx = scope.ctx
    if isinstance(key, SearchAnd):
        parts = sorted((_compile(k, scope) for k in key.keys), key=lambda n: n.cost)
        sets = [n.uids for n in parts if n.uids is not None]
        if len(sets) == len(parts):
            return _Node.of(frozenset.intersection(*sets))
        return _Node(max(n.cost for n in parts), lambda m: all(n.test(m) for n in parts))
    if isinstance(key, SearchOr):
        left = _compile(key.left, scope)
        right = _compile(key.right, scope)
        if left.uids is not None and right.uids is not None:
            return _Node.of(left.uids | right.uids)
        first, second = (left, right) if left.cost <= right.cost else (right, left)
        return _Node(max(left.cost, right.cost), lambda m: first.test(m) or second.test(m))
    if isinstance(key, SearchNot):
        inner = _compile(key.key, scope)
        if inner.uids is not None:
            return _Node.of(scope.universe - inner.uids)
        return _Node(inner.cost, lambda m: not inner.test(m))
    if isinstance(key, SearchSimple):
        if key.name == "ALL":
            return _Node.of(scope.universe)
        return _Node(0, _simple(key.name, ctx.recent))
    if isinstance(key, SearchKeyword):
        return _Node(0, _keyword(key.keyword, key.negated))
    if isinstance(key, SearchSize):
        size = key.size
        if key.name == "LARGER":
            return _Node(0, lambda m: m.message.size > size)
        return _Node(0, lambda m: m.message.size < size)
    if isinstance(key, SearchDate):
        return _date(key.name, key.date, ctx.index)
    if isinstance(key, SearchModseq):
        # One mod-sequence per message here, so the per-flag entry form (RFC 7162
        # §3.1.5) compares it too: a flag changed no later than its message did.
        modseqs = ctx.modseqs or {}
        least = key.modseq
        return _Node.of(frozenset(uid for uid in scope.uids if modseqs.get(uid, 0) >= least))
    if isinstance(key, SearchSequence):
        return _Node(0, _number_set(key.sequence_set, scope.count, ctx.saved, uid=False))
    if isinstance(key, SearchUid):
        return _Node(0, _number_set(key.sequence_set, scope.largest_uid, ctx.saved, uid=True))
    if isinstance(key, SearchHeader) or (
        isinstance(key, SearchText) and key.name in _HEADER_OF_KEY
    ):
        if isinstance(key, SearchHeader):
            name = key.field.lower().encode("ascii")
        else:
            name = _HEADER_OF_KEY[key.name]
        if ctx.index is not None:
            found = _found(ctx.index.header(name, key.value.casefold()))
            if found is not None:
                return found
        return _Node(1, _header(name, key.value))
    if isinstance(key, SearchText):
        needle = key.value.casefold()
        bodies_only = key.name == "BODY"
        if ctx.index is not None:
            found = _found(ctx.index.text(needle, bodies_only=bodies_only))
            if found is not None:
                return found
        if bodies_only:
            return _Node(2, lambda m: any(needle in text for text in m.bodies()))
        return _Node(2, lambda m: any(needle in text for text in m.texts()))
    raise TypeError(f"not a search key: {key!r}")


def _found(uids: Collection[int] | None) -> _Node | None:
    """The node of a key the index answered: membership, at no cost per message."""
    return None if uids is None else _Node.of(frozenset(uids))


def _simple(name: str, recent: frozenset[int]) -> Callable[[_Candidate], bool]:
    if name in _FLAG_KEYS:
        flag, wanted = _FLAG_KEYS[name]
        return lambda m: (flag in m.message.flags) == wanted
    if name == "ALL":
        return lambda m: True
    if name == "RECENT":
        return lambda m: m.message.uid in recent
    if name == "OLD":
        return lambda m: m.message.uid not in recent
    if name == "NEW":  # RFC 3501 §6.4.4: RECENT UNSEEN
        return lambda m: m.message.uid in recent and "\\Seen" not in m.message.flags
    raise ValueError(f"unknown search key: {name}")


def _keyword(keyword: str, negated: bool) -> Callable[[_Candidate], bool]:
    # Flags are matched without regard to case, as clients and other servers do.
    wanted = keyword.casefold()

    def test(m: _Candidate) -> bool:
        return any(flag.casefold() == wanted for flag in m.message.flags) != negated

    return test


def _date(name: str, day: datetime.date, index: SearchIndex | None) -> _Node:
    compare: Callable[[datetime.date], bool]
    kind = name.removeprefix("SENT")
    if kind == "BEFORE":
        compare = day.__gt__
    elif kind == "ON":
        compare = day.__eq__
    else:  # SINCE: on or after
        compare = day.__le__
    days = index.sent() if index is not None and name.startswith("SENT") else None
    if days is not None:

        def kept(m: _Candidate) -> bool:
            sent_day = days.get(m.message.uid)
            return sent_day is not None and compare(sent_day)

        return _Node(0, kept)
    if name.startswith("SENT"):

        def sent(m: _Candidate) -> bool:
            sent_day = _sent_date(m.headers())
            return sent_day is not None and compare(sent_day)

        return _Node(1, sent)
    return _Node(0, lambda m: compare(m.message.internaldate.date()))


def _sent_date(headers: list[tuple[bytes, str]]) -> datetime.date | None:
    """The day written in the first Date: field (RFC 5322 §3.3), time and zone ignored."""
    value = next((value for name, value in headers if name == b"date"), None)
    if value is None:
        return None
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    try:
        return datetime.date(parsed[0], parsed[1], parsed[2])
    except ValueError:
        return None


def _number_set(
    numbers: SequenceSet, largest: int, saved: frozenset[int] | None, *, uid: bool
) -> Callable[[_Candidate], bool]:
    if numbers.saved:  # "$": the saved result, kept as UIDs (RFC 5182 §2.1)
        if saved is None:
            raise ValueError('"$" without a saved search result')
        return lambda m: m.message.uid in saved
    spans = numbers.resolve(largest)
    if uid:
        return lambda m: any(m.message.uid in span for span in spans)
    return lambda m: any(m.seq in span for span in spans)


def _header(field: bytes, value: str) -> Callable[[_Candidate], bool]:
    needle = value.casefold()

    def test(m: _Candidate) -> bool:
        return any(name == field and needle in text.casefold() for name, text in m.headers())

    return test
