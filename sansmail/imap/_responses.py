"""What the server says: the IMAP response events (RFC 9051 §7).

    Tagged(tag="a1", status="OK", text="done", code=None)     a1 OK done
    UntaggedStatus(status="BYE", text="bye")                   * BYE bye
    Untagged(number=3, keyword="EXISTS")                       * 3 EXISTS
    Untagged(keyword="FLAGS", data=([Atom("\\Seen")],))         * FLAGS (\\Seen)
    FetchResponse(number=12, items=(("UID", 7), ...))          * 12 FETCH (UID 7 ...)
    FetchBatch(names=("UID", "FLAGS"), rows=((12, e7, ef), ...))  many of those at once
    Continuation(text="go ahead") / Continuation(data=b"..")   + go ahead / + base64

`Untagged` is general: a keyword, an optional number before it, and the data after it
as value trees (`sansmail.imap._values`), one tree per space-separated item. Mailbox
names inside data are marked `MailboxName`, so the writer spells them in the session's
encoding (modified UTF-7 or UTF-8). The classmethods build the common responses.
`FetchResponse` carries (name, value) pairs whose names come from the FETCH items
(`item.response_name`), so "BODY[HEADER.FIELDS (FROM)]<0>" is written as one label.

Response codes (RFC 9051 §7.1) are `ResponseCode(name, data)`: `[UIDNEXT 4392]` is
ResponseCode(name="UIDNEXT", data=(4392,)); lists and atoms as in `Untagged`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, Final, Literal

import attrs

from sansmail.imap._grammar import ATOM_RE, check_tag, check_text
from sansmail.imap._sequence import SequenceSet
from sansmail.imap._values import Atom, Encoded, Value, check_value

__all__ = [
    "Continuation",
    "FetchBatch",
    "FetchResponse",
    "MailboxName",
    "Response",
    "ResponseCode",
    "Tagged",
    "Untagged",
    "UntaggedStatus",
]


class Response:
    """Base class of the events a server sends."""

    __slots__ = ()


class MailboxName(str):
    """Marks a mailbox name inside response data: written in the session's encoding."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"MailboxName({str.__repr__(self)})"


def _values(_inst: Any, attribute: attrs.Attribute[Any], value: tuple[Value, ...]) -> None:
    if not isinstance(value, tuple):
        raise TypeError(f"{attribute.name} must be a tuple of values")
    check_value(value)


def _keyword(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or not ATOM_RE.fullmatch(value) or value != value.upper():
        raise ValueError(f"{attribute.name} must be an upper-case atom: {value!r}")


def _optional_number(_inst: Any, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and (type(value) is not int or value < 0):
        raise ValueError(f"{attribute.name} must be a non-negative integer or None")


@attrs.frozen(kw_only=True)
class ResponseCode:
    """A response code, the "[...]" after the status (RFC 9051 §7.1)."""

    name: str = attrs.field(validator=_keyword)
    data: tuple[Value, ...] = attrs.field(default=(), validator=_values)

    @classmethod
    def capability(cls, capabilities: Iterable[str]) -> ResponseCode:
        return cls(name="CAPABILITY", data=tuple(Atom(c) for c in capabilities))

    @classmethod
    def permanentflags(cls, flags: Iterable[str]) -> ResponseCode:
        """[PERMANENTFLAGS (...)]; include "\\*" if new keywords may be created."""
        return cls(name="PERMANENTFLAGS", data=([Atom(f) for f in flags],))

    @classmethod
    def appenduid(cls, uidvalidity: int, uid: int) -> ResponseCode:
        """[APPENDUID uidvalidity uid] (RFC 4315 §3)."""
        return cls(name="APPENDUID", data=(uidvalidity, uid))

    @classmethod
    def copyuid(
        cls, uidvalidity: int, source: SequenceSet, destination: SequenceSet
    ) -> ResponseCode:
        """[COPYUID uidvalidity source-uids destination-uids] (RFC 4315 §3)."""
        return cls(name="COPYUID", data=(uidvalidity, Atom(str(source)), Atom(str(destination))))


def _code(_inst: Any, attribute: attrs.Attribute[Any], value: ResponseCode | None) -> None:
    if value is not None and not isinstance(value, ResponseCode):
        raise TypeError(f"{attribute.name} must be a ResponseCode or None")


def _status_text(inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    check_text(inst, attribute, value)
    if not value:
        # RFC 3501 requires text, and rev1 clients (imaplib among them) rely on it.
        raise ValueError(f"{attribute.name} must not be empty")
    if inst.code is None and value.startswith("["):
        raise ValueError("text starting with '[' would be read as a response code")


@attrs.frozen(kw_only=True)
class Tagged(Response):
    """The tagged status that completes a command: OK, NO or BAD (RFC 9051 §7.1)."""

    tag: str = attrs.field(validator=check_tag)
    status: Literal["OK", "NO", "BAD"] = attrs.field(
        validator=attrs.validators.in_(("OK", "NO", "BAD"))
    )
    code: ResponseCode | None = attrs.field(default=None, validator=_code)
    text: str = attrs.field(validator=_status_text)


@attrs.frozen(kw_only=True)
class UntaggedStatus(Response):
    """* OK / NO / BAD / BYE / PREAUTH with optional code (RFC 9051 §7.1)."""

    status: Literal["OK", "NO", "BAD", "BYE", "PREAUTH"] = attrs.field(
        validator=attrs.validators.in_(("OK", "NO", "BAD", "BYE", "PREAUTH"))
    )
    code: ResponseCode | None = attrs.field(default=None, validator=_code)
    text: str = attrs.field(validator=_status_text)


_ESEARCH_NAMES: Final = re.compile(r"[A-Z][A-Z0-9-]*")


@attrs.frozen(kw_only=True)
class Untagged(Response):
    """ "* [number] KEYWORD data..." : mailbox data, message data, CAPABILITY, ENABLED ..."""

    keyword: str = attrs.field(validator=_keyword)
    data: tuple[Value, ...] = attrs.field(default=(), validator=_values)
    number: int | None = attrs.field(default=None, validator=_optional_number)

    # --- the common responses -----------------------------------------------------------

    @classmethod
    def exists(cls, count: int) -> Untagged:
        return cls(keyword="EXISTS", number=count)

    @classmethod
    def recent(cls, count: int) -> Untagged:
        """IMAP4rev1 only (RFC 3501 §7.3.2)."""
        return cls(keyword="RECENT", number=count)

    @classmethod
    def expunge(cls, number: int) -> Untagged:
        return cls(keyword="EXPUNGE", number=number)

    @classmethod
    def flags(cls, flags: Iterable[str]) -> Untagged:
        return cls(keyword="FLAGS", data=([Atom(f) for f in flags],))

    @classmethod
    def capability(cls, capabilities: Iterable[str]) -> Untagged:
        return cls(keyword="CAPABILITY", data=tuple(Atom(c) for c in capabilities))

    @classmethod
    def enabled(cls, capabilities: Iterable[str]) -> Untagged:
        """RFC 5161 §3.2: what an ENABLE switched on."""
        return cls(keyword="ENABLED", data=tuple(Atom(c) for c in capabilities))

    @classmethod
    def search(cls, numbers: Iterable[int]) -> Untagged:
        """IMAP4rev1 "* SEARCH 2 3 6" (RFC 3501 §7.2.5)."""
        return cls(keyword="SEARCH", data=tuple(numbers))

    @classmethod
    def esearch(
        cls,
        *,
        tag: str | None,
        uid: bool,
        results: Sequence[tuple[str, int | SequenceSet]],
    ) -> Untagged:
        """ "* ESEARCH (TAG "a1") UID COUNT 3 ALL 2:4" (RFC 9051 §7.3.4, RFC 4731)."""
        data: list[Value] = []
        if tag is not None:
            data.append([Atom("TAG"), tag.encode("ascii")])
        if uid:
            data.append(Atom("UID"))
        for name, value in results:
            if not _ESEARCH_NAMES.fullmatch(name):
                raise ValueError(f"not an ESEARCH result name: {name!r}")
            data.append(Atom(name))
            data.append(Atom(str(value)) if isinstance(value, SequenceSet) else value)
        return cls(keyword="ESEARCH", data=tuple(data))

    @classmethod
    def mailbox_list(
        cls,
        *,
        attributes: Iterable[str],
        delimiter: str | None,
        mailbox: str,
        extended: Sequence[Value] = (),
        lsub: bool = False,
    ) -> Untagged:
        """ "* LIST (\\HasNoChildren) "/" INBOX" (RFC 9051 §7.3.1), or LSUB when `lsub`.
        `extended` is RFC 5258's mbox-list-extended, e.g. [b"CHILDINFO", [b"SUBSCRIBED"]]."""
        data: list[Value] = [
            [Atom(a) for a in attributes],
            None if delimiter is None else delimiter,
            MailboxName(mailbox),
        ]
        if extended:
            data.append(list(extended))
        return cls(keyword="LSUB" if lsub else "LIST", data=tuple(data))

    @classmethod
    def status(cls, *, mailbox: str, items: Sequence[tuple[str, int]]) -> Untagged:
        """ "* STATUS blurdybloop (MESSAGES 231 UIDNEXT 44292)" (RFC 9051 §7.3.2)."""
        listing: list[Value] = []
        for name, number in items:
            listing += [Atom(name), number]
        return cls(keyword="STATUS", data=(MailboxName(mailbox), listing))

    @classmethod
    def id(cls, params: Sequence[tuple[str, str | None]] | None) -> Untagged:
        """ "* ID ("name" "sansmail")" or "* ID NIL" (RFC 2971 §3.2)."""
        if params is None:
            return cls(keyword="ID", data=(None,))
        listing: list[Value] = []
        for key, value in params:
            listing += [key, value]
        return cls(keyword="ID", data=(listing,))

    @classmethod
    def namespace(
        cls,
        *,
        personal: Sequence[tuple[str, str | None]] | None,
        other: Sequence[tuple[str, str | None]] | None = None,
        shared: Sequence[tuple[str, str | None]] | None = None,
    ) -> Untagged:
        """ "* NAMESPACE (("" "/")) NIL NIL" (RFC 9051 §7.3.5, RFC 2342)."""

        def describe(spaces: Sequence[tuple[str, str | None]] | None) -> Value:
            if spaces is None:
                return None
            return [[MailboxName(prefix), delimiter] for prefix, delimiter in spaces]

        return cls(
            keyword="NAMESPACE", data=(describe(personal), describe(other), describe(shared))
        )

    @classmethod
    def quotaroot(cls, *, mailbox: str, roots: Sequence[str]) -> Untagged:
        """``* QUOTAROOT INBOX ""`` (RFC 9208 §5.2); with no roots, no quota applies."""
        return cls(keyword="QUOTAROOT", data=(MailboxName(mailbox), *roots))

    @classmethod
    def quota(cls, *, root: str, resources: Sequence[tuple[str, int, int]]) -> Untagged:
        """ "* QUOTA "" (STORAGE 10 512)" (RFC 9208 §5.1): (name, usage, limit) each."""
        listing: list[Value] = []
        for name, used, limit in resources:
            listing += [Atom(name), used, limit]
        return cls(keyword="QUOTA", data=(root, listing))


_FETCH_NAME: Final = re.compile(r"[A-Z0-9.]+(?:\[[^\r\n]*\](?:<[0-9]+>)?)?")


def _fetch_items(
    _inst: Any, attribute: attrs.Attribute[Any], value: tuple[tuple[str, Value], ...]
) -> None:
    if not isinstance(value, tuple) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty tuple of (name, value)")
    for pair in value:
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)):
            raise ValueError(f"{attribute.name}: not a (name, value) pair: {pair!r}")
        if not _FETCH_NAME.fullmatch(pair[0]):
            raise ValueError(f"{attribute.name}: not a FETCH item name: {pair[0]!r}")
        check_value(pair[1])


def _message_number(_inst: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    # RFC 9051 §9: message-data = nz-number SP ("EXPUNGE" / ("FETCH" SP msg-att)).
    if type(value) is not int or value < 1:
        raise ValueError(f"{attribute.name} must be a message number >= 1, not {value!r}")


@attrs.frozen(kw_only=True)
class FetchResponse(Response):
    """ "* 12 FETCH (FLAGS (\\Seen) BODY[]<0> {42}...)" (RFC 9051 §7.5.2).

    `items` pairs a name ("FLAGS", or `item.response_name` of a requested FETCH item)
    with its value tree. A bytes value under BINARY[...] that holds NUL goes out as a
    literal8 (RFC 3516 §4.2); other strings as quoted or literal, whichever fits.
    """

    number: int = attrs.field(validator=_message_number)
    items: tuple[tuple[str, Value], ...] = attrs.field(validator=_fetch_items)


def _batch_names(_inst: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if not isinstance(value, tuple) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty tuple of item names")
    for name in value:
        if not isinstance(name, str) or not _FETCH_NAME.fullmatch(name):
            raise ValueError(f"{attribute.name}: not a FETCH item name: {name!r}")


_MAX_NUMBER64: Final = 2**63 - 1


def _batch_rows(
    inst: FetchBatch, attribute: attrs.Attribute[Any], value: tuple[tuple[Any, ...], ...]
) -> None:
    if not isinstance(value, tuple):
        raise TypeError(f"{attribute.name} must be a tuple of rows")
    width = len(inst.names) + 1
    kinds = tuple(type(item) for item in value[0]) if value else ()
    if kinds and any(kind is not int and kind is not Encoded for kind in kinds):
        raise TypeError(f"{attribute.name}: values are numbers or Encoded: {value[0]!r}")
    for row in value:
        # Exact types, the same in every row: (message number, then per name a number or
        # an Encoded as in the first row), so the writer joins them without looking again.
        if type(row) is not tuple or len(row) != width:
            raise ValueError(f"{attribute.name}: a row is (number, one value per name): {row!r}")
        number = row[0]
        if type(number) is not int or number < 1:
            raise ValueError(f"{attribute.name}: not a message number: {number!r}")
        for kind, item in zip(kinds, row, strict=True):
            if type(item) is not kind or (kind is int and not 0 <= item <= _MAX_NUMBER64):
                raise TypeError(f"{attribute.name}: not a {kind.__name__} value: {item!r}")


@attrs.frozen(kw_only=True)
class FetchBatch(Response):
    """Many FETCH responses with the same items, as one event: ``* n FETCH (name value
    ...)`` for each row, exactly as a `FetchResponse` per row would be written.

    Each row is (message number, one value per name), and a value is a number (a
    number64: UID, RFC822.SIZE) or an `Encoded`, the same kind in every row. It is how
    a FETCH of FLAGS and ENVELOPE over a folder of thousands of messages is answered:
    the values are stored fragments and numbers, checked when they became `Encoded`, so
    writing is joining octets, where an event per message (its validation, its trip
    through the core and the tree walk of the writer) cost more than the answer itself.
    An `Encoded` value holds no 8-bit octet outside literals, so a batch suits every
    session; a value that needs the session's UTF-8 form goes in a `FetchResponse`.
    """

    names: tuple[str, ...] = attrs.field(validator=_batch_names)
    rows: tuple[tuple[Any, ...], ...] = attrs.field(validator=_batch_rows)


def _continuation(inst: Continuation, attribute: attrs.Attribute[Any], value: str) -> None:
    check_text(inst, attribute, value)
    if inst.data is not None and value:
        raise ValueError("a continuation carries text or data, not both")


@attrs.frozen(kw_only=True)
class Continuation(Response):
    """ "+ text" or "+ base64(data)" (RFC 9051 §7.6).

    Sent to let a synchronizing literal come (after `LiteralRequested`), to carry an
    AUTHENTICATE challenge (`data`, base64-encoded by the writer), and to accept IDLE.
    """

    data: bytes | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(bytes))
    )
    text: str = attrs.field(default="", validator=_continuation)
