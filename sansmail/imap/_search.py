"""SEARCH criteria as a tree (RFC 9051 §6.4.4; RFC 3501 §6.4.4 for NEW, OLD, RECENT).

The search program "FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"" becomes

    SearchAnd(keys=(SearchSimple(name="FLAGGED"),
                    SearchDate(name="SINCE", date=date(1994, 2, 1)),
                    SearchNot(key=SearchText(name="FROM", value="Smith"))))

A program of one key is that key; several keys, and every parenthesised group, are a
`SearchAnd` (RFC 9051 §6.4.4: keys are ANDed). Strings are decoded with the command's
CHARSET before they get here, dates are `datetime.date`, and sequence sets stay
unresolved (`SequenceSet`) until the application knows the mailbox. Keys are matched
case-insensitively and held upper-case.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any, Final

import attrs

from sansmail.imap._fetch import FIELD_NAME
from sansmail.imap._grammar import ATOM_RE, check_no_nul
from sansmail.imap._lexer import Cursor, ParseError
from sansmail.imap._sequence import SequenceSet

__all__ = [
    "DATE_KEYS",
    "SIMPLE_KEYS",
    "SIZE_KEYS",
    "TEXT_KEYS",
    "SearchAnd",
    "SearchDate",
    "SearchHeader",
    "SearchKey",
    "SearchKeyword",
    "SearchModseq",
    "SearchNot",
    "SearchOr",
    "SearchSequence",
    "SearchSimple",
    "SearchSize",
    "SearchText",
    "SearchUid",
    "parse_search_keys",
]

#: Keys without arguments. NEW, OLD and RECENT are IMAP4rev1 only (RFC 3501 §6.4.4).
SIMPLE_KEYS: Final = frozenset(
    {
        "ALL",
        "ANSWERED",
        "DELETED",
        "DRAFT",
        "FLAGGED",
        "SEEN",
        "UNANSWERED",
        "UNDELETED",
        "UNDRAFT",
        "UNFLAGGED",
        "UNSEEN",
        "NEW",
        "OLD",
        "RECENT",
    }
)
#: Keys that search a header field or the text for a string.
TEXT_KEYS: Final = frozenset({"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"})
#: Keys comparing the internal date (BEFORE, ON, SINCE) or the Date: header (SENT*).
DATE_KEYS: Final = frozenset({"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"})
#: Keys comparing RFC822.SIZE.
SIZE_KEYS: Final = frozenset({"LARGER", "SMALLER"})

_MAX_SIZE = 2**63 - 1  # number64


class SearchKey:
    """Base class of the search criteria."""

    __slots__ = ()


def _keys(_inst: Any, attribute: attrs.Attribute[Any], value: tuple[SearchKey, ...]) -> None:
    if not isinstance(value, tuple) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty tuple of search keys")
    for key in value:
        if not isinstance(key, SearchKey):
            raise TypeError(f"{attribute.name}: not a search key: {key!r}")


def _key(_inst: Any, attribute: attrs.Attribute[Any], value: SearchKey) -> None:
    if not isinstance(value, SearchKey):
        raise TypeError(f"{attribute.name}: not a search key: {value!r}")


@attrs.frozen(kw_only=True)
class SearchSimple(SearchKey):
    """ALL, SEEN, UNSEEN, DELETED ... (keys without arguments)."""

    name: str = attrs.field(validator=attrs.validators.in_(SIMPLE_KEYS))


@attrs.frozen(kw_only=True)
class SearchText(SearchKey):
    """FROM, TO, CC, BCC, SUBJECT, BODY, TEXT with the string to look for."""

    name: str = attrs.field(validator=attrs.validators.in_(TEXT_KEYS))
    value: str = attrs.field(validator=check_no_nul)


def _field_name(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or not FIELD_NAME.fullmatch(value):
        raise ValueError(f"{attribute.name} is not a header field name: {value!r}")


@attrs.frozen(kw_only=True)
class SearchHeader(SearchKey):
    """HEADER field-name string: the field contains the string ("" matches presence)."""

    field: str = attrs.field(validator=_field_name)
    value: str = attrs.field(validator=check_no_nul)


def _keyword(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    # flag-keyword = atom: system flags ("\Seen") have keys of their own.
    if not isinstance(value, str) or not ATOM_RE.fullmatch(value):
        raise ValueError(f"{attribute.name} is not a keyword: {value!r}")


@attrs.frozen(kw_only=True)
class SearchKeyword(SearchKey):
    """KEYWORD flag (or UNKEYWORD flag when `negated`)."""

    keyword: str = attrs.field(validator=_keyword)
    negated: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))


def _date(_inst: Any, attribute: attrs.Attribute[Any], value: datetime.date) -> None:
    if type(value) is not datetime.date:
        raise TypeError(f"{attribute.name} must be a datetime.date")


@attrs.frozen(kw_only=True)
class SearchDate(SearchKey):
    """BEFORE, ON, SINCE, SENTBEFORE, SENTON, SENTSINCE with a date."""

    name: str = attrs.field(validator=attrs.validators.in_(DATE_KEYS))
    date: datetime.date = attrs.field(validator=_date)


def _size(_inst: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if type(value) is not int or not 0 <= value <= _MAX_SIZE:
        raise ValueError(f"{attribute.name} must be a number64, not {value!r}")


@attrs.frozen(kw_only=True)
class SearchSize(SearchKey):
    """LARGER n or SMALLER n (RFC822.SIZE)."""

    name: str = attrs.field(validator=attrs.validators.in_(SIZE_KEYS))
    size: int = attrs.field(validator=_size)


#: RFC 7162 §3.1.5: entry-type-req of a MODSEQ key's metadata entry.
MODSEQ_ENTRY_TYPES: Final = frozenset({"PRIV", "SHARED", "ALL"})
_MAX_MODSEQ = 2**63 - 1


def _modseq_entry(_inst: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    # entry-flag-name = DQUOTE "/flags/" attr-flag DQUOTE (kept without the quotes).
    if value is None:
        return
    flag = value[7:] if isinstance(value, str) and value.startswith("/flags/") else ""
    name = flag[1:] if flag.startswith("\\") else flag
    if not name or not ATOM_RE.fullmatch(name):
        raise ValueError(f"{attribute.name} must be /flags/ and a flag: {value!r}")


@attrs.frozen(kw_only=True)
class SearchModseq(SearchKey):
    """MODSEQ ["/flags/<flag>" PRIV|SHARED|ALL] n (RFC 7162 §3.1.5): messages whose
    mod-sequence is at least `modseq`. A store that keeps one mod-sequence per message
    (not one per flag) answers the entry form from it too, as §3.1.5 allows."""

    modseq: int = attrs.field(validator=_size)
    entry: str | None = attrs.field(default=None, validator=_modseq_entry)
    entry_type: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.in_(MODSEQ_ENTRY_TYPES))
    )

    def __attrs_post_init__(self) -> None:
        if (self.entry is None) != (self.entry_type is None):
            raise ValueError("a MODSEQ entry name goes with its entry type")


@attrs.frozen(kw_only=True)
class SearchNot(SearchKey):
    key: SearchKey = attrs.field(validator=_key)


@attrs.frozen(kw_only=True)
class SearchOr(SearchKey):
    left: SearchKey = attrs.field(validator=_key)
    right: SearchKey = attrs.field(validator=_key)


@attrs.frozen(kw_only=True)
class SearchAnd(SearchKey):
    """All of `keys`: a parenthesised group, or a program of several keys."""

    keys: tuple[SearchKey, ...] = attrs.field(validator=_keys)


@attrs.frozen(kw_only=True)
class SearchUid(SearchKey):
    """UID sequence-set."""

    sequence_set: SequenceSet = attrs.field(validator=attrs.validators.instance_of(SequenceSet))


@attrs.frozen(kw_only=True)
class SearchSequence(SearchKey):
    """A bare sequence set: message sequence numbers (or "$")."""

    sequence_set: SequenceSet = attrs.field(validator=attrs.validators.instance_of(SequenceSet))


# --- parsing -----------------------------------------------------------------------------


def parse_search_keys(cursor: Cursor, decode: Callable[[bytes], str]) -> SearchKey:
    """search-key *(SP search-key), up to the end of the command. `decode` turns an
    astring's octets into text in the command's CHARSET (raising ParseError)."""
    keys = [_search_key(cursor, decode)]
    while not cursor.at_end():
        cursor.sp()
        keys.append(_search_key(cursor, decode))
    return keys[0] if len(keys) == 1 else SearchAnd(keys=tuple(keys))


def _search_key(cursor: Cursor, decode: Callable[[bytes], str]) -> SearchKey:
    first = cursor.peek()
    if first == 0x28:  # "("
        cursor.open()
        keys = [_search_key(cursor, decode)]
        while not cursor.take(b")"):
            cursor.sp()
            keys.append(_search_key(cursor, decode))
        cursor.unnest()
        return SearchAnd(keys=tuple(keys))
    if first is not None and (0x30 <= first <= 0x39 or first in (0x2A, 0x24)):  # digit * $
        return SearchSequence(sequence_set=_sequence_set(cursor))
    name = cursor.keyword("a search key")
    if name in SIMPLE_KEYS:
        return SearchSimple(name=name)
    if name == "NOT":
        cursor.sp()
        cursor.nest()
        key = _search_key(cursor, decode)
        cursor.unnest()
        return SearchNot(key=key)
    if name == "OR":
        cursor.nest()
        cursor.sp()
        left = _search_key(cursor, decode)
        cursor.sp()
        right = _search_key(cursor, decode)
        cursor.unnest()
        return SearchOr(left=left, right=right)
    cursor.sp()
    if name in TEXT_KEYS:
        return SearchText(name=name, value=decode(cursor.astring()))
    if name in DATE_KEYS:
        return SearchDate(name=name, date=cursor.date())
    if name in SIZE_KEYS:
        return SearchSize(name=name, size=cursor.number(limit=_MAX_SIZE))
    if name in ("KEYWORD", "UNKEYWORD"):
        keyword = cursor.atom("a keyword").decode("ascii")
        return SearchKeyword(keyword=keyword, negated=name == "UNKEYWORD")
    if name == "HEADER":
        field = cursor.astring().decode("ascii", "replace")
        if not FIELD_NAME.fullmatch(field):
            raise ParseError("bad header field name")
        cursor.sp()
        return SearchHeader(field=field, value=decode(cursor.astring()))
    if name == "UID":
        return SearchUid(sequence_set=_sequence_set(cursor))
    if name == "MODSEQ":
        return _modseq_key(cursor)
    raise ParseError("unknown search key")


def _modseq_key(cursor: Cursor) -> SearchModseq:
    """search-modsequence = "MODSEQ" [SP entry-name SP entry-type-req] SP
    mod-sequence-valzer (RFC 7162 §7), after "MODSEQ "."""
    entry = entry_type = None
    if cursor.peek() == 0x22:
        entry = cursor.string().decode("ascii", "replace")
        cursor.sp()
        entry_type = cursor.keyword("an entry type")
        if entry_type not in MODSEQ_ENTRY_TYPES:
            raise ParseError("the entry type is priv, shared or all")
        cursor.sp()
        try:
            _modseq_entry(None, attrs.fields(SearchModseq).entry, entry)
        except ValueError:
            raise ParseError('the entry name is "/flags/" and a flag') from None
    return SearchModseq(modseq=cursor.number(limit=_MAX_MODSEQ), entry=entry, entry_type=entry_type)


def _sequence_set(cursor: Cursor) -> SequenceSet:
    try:
        return SequenceSet.parse(cursor.sequence_text())
    except ValueError:
        raise ParseError("bad sequence set") from None
