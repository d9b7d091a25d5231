"""The IMAP command events: what a client sends, as the server receives it.

One frozen, keyword-only, validated class per command (RFC 9051 §6; RFC 3501 §6 for
the rev1 extras), each with its `tag`. The parser builds them; a client would build the
same ones to send. UID FETCH/SEARCH/STORE/COPY/MOVE are the plain command with
`uid=True`; UID EXPUNGE, whose argument differs, is `UidExpunge`. EXAMINE is
`Select(readonly=True)`.

Arguments arrive decoded: mailbox names as `str` (modified UTF-7 or UTF-8 undone,
INBOX in any case spelled "INBOX"), sequence sets as `SequenceSet`, FETCH items and
SEARCH criteria as the typed trees of `_fetch` and `_search`, dates as `datetime`
values, flags with system flags in their usual spelling, and option names upper-case.

The other events are the connection's own: `LiteralRequested` asks the application
whether a synchronizing literal may come, `AuthResponse` / `AuthCancel` are the client's
lines in an AUTHENTICATE exchange, `IdleDone` ends IDLE, `InvalidCommand` is a command
the core refused (with the response to send), `ConnectionClosed` is EOF.
"""

from __future__ import annotations

import datetime
import re
from typing import Any, Final, Literal

import attrs

from sansmail.imap._fetch import FetchItem
from sansmail.imap._grammar import (
    FLAG_RE,
    check_atoms,
    check_flags,
    check_no_nul,
    check_nonneg,
    check_tag,
    normalize_flag,
)
from sansmail.imap._mailbox import normalize_inbox
from sansmail.imap._responses import Tagged, UntaggedStatus
from sansmail.imap._search import SearchKey
from sansmail.imap._sequence import SequenceSet
from sansmail.imap._values import Value, check_value

__all__ = [
    "COMPRESS_MECHANISMS",
    "LIST_RETURN_OPTIONS",
    "LIST_SELECTION_OPTIONS",
    "SEARCH_RETURN_OPTIONS",
    "SORT_KEYS",
    "STATUS_ITEMS",
    "THREAD_ALGORITHMS",
    "Append",
    "AppendMessage",
    "AuthCancel",
    "AuthResponse",
    "Authenticate",
    "Capability",
    "Check",
    "Close",
    "Command",
    "Compress",
    "ConnectionClosed",
    "Copy",
    "Create",
    "Delete",
    "Enable",
    "Event",
    "Expunge",
    "Fetch",
    "GetQuota",
    "GetQuotaRoot",
    "Id",
    "Idle",
    "IdleDone",
    "InvalidCommand",
    "List",
    "LiteralRequested",
    "Login",
    "Logout",
    "Lsub",
    "Move",
    "Namespace",
    "Noop",
    "Rename",
    "Search",
    "Select",
    "SetQuota",
    "Sort",
    "StartTLS",
    "Status",
    "Store",
    "Subscribe",
    "Thread",
    "Uid",
    "UidExpunge",
    "Unselect",
    "Unsubscribe",
]

#: STATUS items (RFC 9051 §6.3.11; RECENT is rev1; HIGHESTMODSEQ RFC 7162 §3.1.10;
#: APPENDLIMIT RFC 7889 §4; MAILBOXID RFC 8474 §4.2).
STATUS_ITEMS: Final = frozenset(
    {
        "MESSAGES",
        "UIDNEXT",
        "UIDVALIDITY",
        "UNSEEN",
        "DELETED",
        "SIZE",
        "RECENT",
        "HIGHESTMODSEQ",
        "APPENDLIMIT",
        "MAILBOXID",
    }
)
#: LIST selection options (RFC 5258 §3.1, RFC 6154 §5.3 SPECIAL-USE).
LIST_SELECTION_OPTIONS: Final = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
#: LIST return options besides STATUS (RFC 5258 §3.2, RFC 6154 §5.2, RFC 5819 §2).
LIST_RETURN_OPTIONS: Final = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE"})
#: SEARCH RETURN options (RFC 9051 §6.4.4, RFC 4731 §3.1; SAVE is RFC 5182).
SEARCH_RETURN_OPTIONS: Final = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE"})

# RFC 4422 §3.1: sasl-mech = 1*20mech-char; mech-char = UPPER-ALPHA / DIGIT / "-" / "_".
_SASL_MECHANISM: Final = re.compile(r"[A-Z0-9_-]{1,20}")
# option names: tagged-ext-label-ish (RFC 4466 §2.1), held upper case.
_OPTION_NAME: Final = re.compile(r"[A-Z0-9][A-Z0-9_.:-]*")


class Event:
    """Base class of every event a client sends or the connection reports."""

    __slots__ = ()


# --- validators --------------------------------------------------------------------------


def _bool(_inst: Any, attribute: attrs.Attribute[Any], value: bool) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be a bool")


def _mailbox(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    check_no_nul(_inst, attribute, value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{attribute.name} holds a lone surrogate") from None


def _mailboxes(_inst: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if not isinstance(value, tuple) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty tuple")
    for item in value:
        _mailbox(_inst, attribute, item)


def _sequence_set(_inst: Any, attribute: attrs.Attribute[Any], value: SequenceSet) -> None:
    if not isinstance(value, SequenceSet):
        raise TypeError(f"{attribute.name} must be a SequenceSet")


def _one_of(names: frozenset[str]) -> Any:
    def check(_inst: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
        if not isinstance(value, tuple):
            raise TypeError(f"{attribute.name} must be a tuple")
        for name in value:
            if name not in names:
                raise ValueError(f"{attribute.name}: unknown option {name!r}")

    return check


def _parameters(
    _inst: Any, attribute: attrs.Attribute[Any], value: tuple[tuple[str, Value], ...]
) -> None:
    if not isinstance(value, tuple):
        raise TypeError(f"{attribute.name} must be a tuple of (name, value) pairs")
    for pair in value:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise ValueError(f"{attribute.name}: not a (name, value) pair: {pair!r}")
        if not isinstance(pair[0], str) or not _OPTION_NAME.fullmatch(pair[0]):
            raise ValueError(f"{attribute.name}: not an upper-case parameter name: {pair[0]!r}")
        check_value(pair[1])


def _flags_converter(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(normalize_flag(f) if isinstance(f, str) else f for f in value)
    return value


def _inbox_converter(value: Any) -> Any:
    return normalize_inbox(value) if isinstance(value, str) else value


def _upper_tuple(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(v.upper() if isinstance(v, str) else v for v in value)
    return value


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _optional_upper_tuple(value: Any) -> Any:
    return None if value is None else _upper_tuple(value)


def _mailbox_field() -> Any:
    return attrs.field(converter=_inbox_converter, validator=_mailbox)


# --- commands ----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Command(Event):
    """Base class of the command events."""

    tag: str = attrs.field(validator=check_tag)


@attrs.frozen(kw_only=True)
class Capability(Command):
    """CAPABILITY (RFC 9051 §6.1.1)."""


@attrs.frozen(kw_only=True)
class Noop(Command):
    """NOOP (RFC 9051 §6.1.2): a chance to send pending updates."""


@attrs.frozen(kw_only=True)
class Logout(Command):
    """LOGOUT (RFC 9051 §6.1.3): answer "* BYE" then the tagged OK."""


@attrs.frozen(kw_only=True)
class StartTLS(Command):
    """STARTTLS (RFC 9051 §6.2.1)."""


#: Compression mechanisms COMPRESS takes (RFC 4978 §3: DEFLATE is the only one defined).
COMPRESS_MECHANISMS: Final = frozenset({"DEFLATE"})


@attrs.frozen(kw_only=True)
class Compress(Command):
    """COMPRESS mechanism (RFC 4978 §3): after the tagged OK both directions are
    compressed, starting right after the OK's CRLF."""

    mechanism: str = attrs.field(
        default="DEFLATE", converter=_upper, validator=attrs.validators.in_(COMPRESS_MECHANISMS)
    )


@attrs.frozen(kw_only=True)
class Authenticate(Command):
    """AUTHENTICATE mechanism [initial-response] (RFC 9051 §6.2.2, RFC 4959 SASL-IR).

    `initial_response` is decoded: None when the client sent none, b"" for "=".
    """

    mechanism: str = attrs.field(
        converter=_upper,
        validator=attrs.validators.matches_re(_SASL_MECHANISM),
    )
    initial_response: bytes | None = attrs.field(
        default=None,
        repr=False,
        validator=attrs.validators.optional(attrs.validators.instance_of(bytes)),
    )


@attrs.frozen(kw_only=True)
class Login(Command):
    """LOGIN userid password (RFC 9051 §6.2.3). Never logged: the repr hides both."""

    userid: str = attrs.field(validator=check_no_nul, repr=False)
    password: str = attrs.field(validator=check_no_nul, repr=False)


@attrs.frozen(kw_only=True)
class Enable(Command):
    """ENABLE capability... (RFC 5161, RFC 9051 §6.3.1); names upper-case."""

    capabilities: tuple[str, ...] = attrs.field(converter=_upper_tuple, validator=check_atoms)

    def __attrs_post_init__(self) -> None:
        if not self.capabilities:
            raise ValueError("ENABLE needs at least one capability")


def _id_params(
    _inst: Any, attribute: attrs.Attribute[Any], value: tuple[tuple[str, str | None], ...] | None
) -> None:
    if value is None:
        return
    if not isinstance(value, tuple):
        raise TypeError(f"{attribute.name} must be a tuple or None")
    for pair in value:
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)):
            raise ValueError(f"{attribute.name}: not a (field, value) pair: {pair!r}")
        check_no_nul(_inst, attribute, pair[0])
        if pair[1] is not None:
            check_no_nul(_inst, attribute, pair[1])


@attrs.frozen(kw_only=True)
class Id(Command):
    """ID ( "name" "value" ... ) or ID NIL (RFC 2971 §3.1)."""

    params: tuple[tuple[str, str | None], ...] | None = attrs.field(validator=_id_params)


@attrs.frozen(kw_only=True)
class Namespace(Command):
    """NAMESPACE (RFC 2342, RFC 9051 §6.3.10)."""


@attrs.frozen(kw_only=True)
class Select(Command):
    """SELECT mailbox, or EXAMINE mailbox when `readonly` (RFC 9051 §6.3.2, §6.3.3).

    `parameters` are RFC 4466 select-params, e.g. (("CONDSTORE", None),).
    """

    mailbox: str = _mailbox_field()
    readonly: bool = attrs.field(default=False, validator=_bool)
    parameters: tuple[tuple[str, Value], ...] = attrs.field(default=(), validator=_parameters)


@attrs.frozen(kw_only=True)
class Create(Command):
    """CREATE mailbox [(USE (\\Sent ...))] (RFC 9051 §6.3.4, RFC 6154 §3)."""

    mailbox: str = _mailbox_field()
    special_use: tuple[str, ...] = attrs.field(
        default=(), converter=_flags_converter, validator=check_flags
    )


@attrs.frozen(kw_only=True)
class Delete(Command):
    """DELETE mailbox (RFC 9051 §6.3.5)."""

    mailbox: str = _mailbox_field()


@attrs.frozen(kw_only=True)
class Rename(Command):
    """RENAME mailbox new-mailbox (RFC 9051 §6.3.6)."""

    mailbox: str = _mailbox_field()
    new_mailbox: str = _mailbox_field()


@attrs.frozen(kw_only=True)
class Subscribe(Command):
    """SUBSCRIBE mailbox (RFC 9051 §6.3.7)."""

    mailbox: str = _mailbox_field()


@attrs.frozen(kw_only=True)
class Unsubscribe(Command):
    """UNSUBSCRIBE mailbox (RFC 9051 §6.3.8)."""

    mailbox: str = _mailbox_field()


@attrs.frozen(kw_only=True)
class List(Command):
    """LIST [(selection)] reference pattern(s) [RETURN (options)] (RFC 9051 §6.3.9,
    RFC 5258 LIST-EXTENDED, RFC 5819 LIST-STATUS, RFC 6154 SPECIAL-USE).

    `return_options` holds the options other than STATUS; `status_items` is non-empty
    when RETURN (STATUS (...)) was asked.
    """

    reference: str = attrs.field(validator=_mailbox)
    patterns: tuple[str, ...] = attrs.field(validator=_mailboxes)
    selection: tuple[str, ...] = attrs.field(
        default=(), converter=_upper_tuple, validator=_one_of(LIST_SELECTION_OPTIONS)
    )
    return_options: tuple[str, ...] = attrs.field(
        default=(), converter=_upper_tuple, validator=_one_of(LIST_RETURN_OPTIONS)
    )
    status_items: tuple[str, ...] = attrs.field(
        default=(), converter=_upper_tuple, validator=_one_of(STATUS_ITEMS)
    )


@attrs.frozen(kw_only=True)
class Lsub(Command):
    """LSUB reference pattern (RFC 3501 §6.3.9; IMAP4rev1)."""

    reference: str = attrs.field(validator=_mailbox)
    pattern: str = attrs.field(validator=_mailbox)


@attrs.frozen(kw_only=True)
class Status(Command):
    """STATUS mailbox (items) (RFC 9051 §6.3.11)."""

    mailbox: str = _mailbox_field()
    items: tuple[str, ...] = attrs.field(converter=_upper_tuple, validator=_one_of(STATUS_ITEMS))

    def __attrs_post_init__(self) -> None:
        if not self.items:
            raise ValueError("STATUS needs at least one item")


def _aware(_inst: Any, attribute: attrs.Attribute[Any], value: datetime.datetime | None) -> None:
    if value is not None and (
        not isinstance(value, datetime.datetime) or value.utcoffset() is None
    ):
        raise ValueError(f"{attribute.name} must be an aware datetime or None")


@attrs.frozen(kw_only=True)
class AppendMessage:
    """A message of a MULTIAPPEND after the first (RFC 3502 §6.3.11): its flags, date
    and octets, as `Append` carries the first one's."""

    flags: tuple[str, ...] = attrs.field(
        default=(), converter=_flags_converter, validator=check_flags
    )
    date: datetime.datetime | None = attrs.field(default=None, validator=_aware)
    message: bytes = attrs.field(
        repr=lambda m: f"<{len(m)} octets>", validator=attrs.validators.instance_of(bytes)
    )
    binary: bool = attrs.field(default=False, validator=_bool)
    utf8: bool = attrs.field(default=False, validator=_bool)

    def __attrs_post_init__(self) -> None:
        if self.utf8 and not self.binary:
            raise ValueError("the UTF8 form of APPEND data is a literal8 (RFC 6855 §4)")


def _append_messages(
    _inst: Any, attribute: attrs.Attribute[Any], value: tuple[AppendMessage, ...]
) -> None:
    if not isinstance(value, tuple) or not all(isinstance(m, AppendMessage) for m in value):
        raise TypeError(f"{attribute.name} must be a tuple of AppendMessage")


@attrs.frozen(kw_only=True)
class Append(Command):
    """APPEND mailbox [(flags)] [date-time] message (RFC 9051 §6.3.12).

    `binary` is True when the message came as a literal8 (RFC 3516 §4.4); `utf8` when
    it came as the UTF8 data extension, ``UTF8 (~{n}...)``, of a session that ENABLEd
    UTF8=ACCEPT (RFC 6855 §4: a message whose header fields may hold UTF-8). `more` are
    the messages after the first of a MULTIAPPEND (RFC 3502), appended all or none.
    """

    mailbox: str = _mailbox_field()
    flags: tuple[str, ...] = attrs.field(
        default=(), converter=_flags_converter, validator=check_flags
    )
    date: datetime.datetime | None = attrs.field(default=None, validator=_aware)
    message: bytes = attrs.field(
        repr=lambda m: f"<{len(m)} octets>", validator=attrs.validators.instance_of(bytes)
    )
    binary: bool = attrs.field(default=False, validator=_bool)
    utf8: bool = attrs.field(default=False, validator=_bool)
    more: tuple[AppendMessage, ...] = attrs.field(default=(), validator=_append_messages)

    def __attrs_post_init__(self) -> None:
        if self.utf8 and not self.binary:
            raise ValueError("the UTF8 form of APPEND data is a literal8 (RFC 6855 §4)")


@attrs.frozen(kw_only=True)
class Check(Command):
    """CHECK (RFC 3501 §6.4.1; gone from IMAP4rev2, still sent by rev1 clients)."""


@attrs.frozen(kw_only=True)
class Close(Command):
    """CLOSE (RFC 9051 §6.4.1): expunge silently and leave the mailbox."""


@attrs.frozen(kw_only=True)
class Unselect(Command):
    """UNSELECT (RFC 9051 §6.4.2, RFC 3691): leave the mailbox without expunging."""


@attrs.frozen(kw_only=True)
class Expunge(Command):
    """EXPUNGE (RFC 9051 §6.4.3)."""


@attrs.frozen(kw_only=True)
class UidExpunge(Command):
    """UID EXPUNGE uid-set (RFC 9051 §6.4.9, RFC 4315 §2.1)."""

    sequence_set: SequenceSet = attrs.field(validator=_sequence_set)


# --- QUOTA (RFC 9208) --------------------------------------------------------------------

#: The largest resource limit SETQUOTA can carry (RFC 9208 §5: number64).
_NUMBER64_MAX: Final = 2**63 - 1


def _quota_root(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a str")
    _mailbox(_inst, attribute, value)


def _quota_resources(
    _inst: Any, attribute: attrs.Attribute[Any], value: tuple[tuple[str, int], ...]
) -> None:
    if not isinstance(value, tuple):
        raise TypeError(f"{attribute.name} must be a tuple of (resource, limit) pairs")
    for pair in value:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise ValueError(f"{attribute.name}: not a (resource, limit) pair: {pair!r}")
        name, limit = pair
        if not isinstance(name, str) or not _OPTION_NAME.fullmatch(name):
            raise ValueError(f"{attribute.name}: not an upper-case resource name: {name!r}")
        if type(limit) is not int or not 0 <= limit <= _NUMBER64_MAX:
            raise ValueError(f"{attribute.name}: not a number64: {limit!r}")


@attrs.frozen(kw_only=True)
class GetQuota(Command):
    """GETQUOTA quota-root (RFC 9208 §4.1.1)."""

    root: str = attrs.field(validator=_quota_root)


@attrs.frozen(kw_only=True)
class GetQuotaRoot(Command):
    """GETQUOTAROOT mailbox (RFC 9208 §4.1.2)."""

    mailbox: str = _mailbox_field()


@attrs.frozen(kw_only=True)
class SetQuota(Command):
    """SETQUOTA quota-root (resource limit ...) (RFC 9208 §4.1.4); resource names upper
    case."""

    root: str = attrs.field(validator=_quota_root)
    resources: tuple[tuple[str, int], ...] = attrs.field(validator=_quota_resources)


@attrs.frozen(kw_only=True)
class Uid(Command):
    """Base of the commands that also come in a UID form."""

    uid: bool = attrs.field(default=False, validator=_bool)
    sequence_set: SequenceSet = attrs.field(validator=_sequence_set)


def _fetch_items(_inst: Any, attribute: attrs.Attribute[Any], value: tuple[FetchItem, ...]) -> None:
    if not isinstance(value, tuple) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty tuple of FETCH items")
    for item in value:
        if not isinstance(item, FetchItem):
            raise TypeError(f"{attribute.name}: not a FETCH item: {item!r}")


@attrs.frozen(kw_only=True)
class Fetch(Uid):
    """[UID] FETCH set items [(modifiers)] (RFC 9051 §6.4.5, §6.4.9).

    ALL/FAST/FULL come expanded. For UID FETCH the UID item is implied in every
    response (RFC 9051 §6.4.9) even when `items` does not list it. `modifiers` are RFC
    4466 fetch-modifiers, e.g. (("CHANGEDSINCE", 12345),).
    """

    items: tuple[FetchItem, ...] = attrs.field(validator=_fetch_items)
    modifiers: tuple[tuple[str, Value], ...] = attrs.field(default=(), validator=_parameters)


@attrs.frozen(kw_only=True)
class Store(Uid):
    """[UID] STORE set [+|-]FLAGS[.SILENT] (flags) (RFC 9051 §6.4.6).

    `mode` is "replace" (FLAGS), "add" (+FLAGS) or "remove" (-FLAGS).
    """

    mode: Literal["replace", "add", "remove"] = attrs.field(
        validator=attrs.validators.in_(("replace", "add", "remove"))
    )
    silent: bool = attrs.field(default=False, validator=_bool)
    flags: tuple[str, ...] = attrs.field(converter=_flags_converter, validator=check_flags)
    modifiers: tuple[tuple[str, Value], ...] = attrs.field(default=(), validator=_parameters)


@attrs.frozen(kw_only=True)
class Copy(Uid):
    """[UID] COPY set mailbox (RFC 9051 §6.4.7)."""

    mailbox: str = _mailbox_field()


@attrs.frozen(kw_only=True)
class Move(Uid):
    """[UID] MOVE set mailbox (RFC 9051 §6.4.8, RFC 6851)."""

    mailbox: str = _mailbox_field()


def _search_key(_inst: Any, attribute: attrs.Attribute[Any], value: SearchKey) -> None:
    if not isinstance(value, SearchKey):
        raise TypeError(f"{attribute.name} must be a SearchKey")


def _charset(_inst: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or not FLAG_RE.fullmatch(value)):
        raise ValueError(f"{attribute.name} is not a charset name: {value!r}")


@attrs.frozen(kw_only=True)
class Search(Command):
    """[UID] SEARCH [RETURN (options)] [CHARSET name] criteria (RFC 9051 §6.4.4).

    `criteria` is the key tree; its strings are already decoded from `charset`.
    `return_options` is None without RETURN (a rev1 "* SEARCH" answer), else the
    options asked for, () meaning ALL (RFC 4731 §3.1).
    """

    uid: bool = attrs.field(default=False, validator=_bool)
    charset: str | None = attrs.field(default=None, converter=_upper, validator=_charset)
    criteria: SearchKey = attrs.field(validator=_search_key)
    return_options: tuple[str, ...] | None = attrs.field(
        default=None,
        converter=_optional_upper_tuple,
        validator=attrs.validators.optional(_one_of(SEARCH_RETURN_OPTIONS)),
    )


# --- SORT and THREAD (RFC 5256, RFC 5957) ----------------------------------------------------

#: SORT keys (RFC 5256 §3; DISPLAYFROM and DISPLAYTO are RFC 5957).
SORT_KEYS: Final = frozenset(
    {"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"}
)
#: THREAD algorithms (RFC 5256 §3).
THREAD_ALGORITHMS: Final = frozenset({"ORDEREDSUBJECT", "REFERENCES"})


def _sort_criteria(
    _inst: Any, attribute: attrs.Attribute[Any], value: tuple[tuple[str, bool], ...]
) -> None:
    if not isinstance(value, tuple) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty tuple of (key, reverse)")
    for pair in value:
        if not (isinstance(pair, tuple) and len(pair) == 2 and pair[0] in SORT_KEYS):
            raise ValueError(f"{attribute.name}: not a (sort key, reverse) pair: {pair!r}")
        if not isinstance(pair[1], bool):
            raise TypeError(f"{attribute.name}: reverse must be a bool")


@attrs.frozen(kw_only=True)
class Sort(Command):
    """[UID] SORT (criteria) charset search-keys (RFC 5256 §3): `criteria` holds (key,
    reversed) pairs; the search strings are decoded from `charset` already."""

    uid: bool = attrs.field(default=False, validator=_bool)
    criteria: tuple[tuple[str, bool], ...] = attrs.field(validator=_sort_criteria)
    charset: str = attrs.field(converter=_upper, validator=_charset)
    search: SearchKey = attrs.field(validator=_search_key)


@attrs.frozen(kw_only=True)
class Thread(Command):
    """[UID] THREAD algorithm charset search-keys (RFC 5256 §3)."""

    uid: bool = attrs.field(default=False, validator=_bool)
    algorithm: str = attrs.field(
        converter=_upper, validator=attrs.validators.in_(THREAD_ALGORITHMS)
    )
    charset: str = attrs.field(converter=_upper, validator=_charset)
    search: SearchKey = attrs.field(validator=_search_key)


@attrs.frozen(kw_only=True)
class Idle(Command):
    """IDLE (RFC 9051 §6.3.13, RFC 2177): answer "+ idling", then wait for `IdleDone`."""


# --- the connection's own events -----------------------------------------------------------


@attrs.frozen(kw_only=True)
class LiteralRequested(Event):
    """The client announced a synchronizing literal of `size` octets in command `command`
    (e.g. "APPEND"). Answer `Continuation(...)` to let it come, or a `Tagged` NO/BAD
    with `tag` to refuse it; a refused literal is never sent (RFC 9051 §4.3), and the
    command ends there. Limits of `Config` have been checked already."""

    tag: str = attrs.field(validator=check_tag)
    command: str = attrs.field(validator=attrs.validators.instance_of(str))
    size: int = attrs.field(validator=check_nonneg)
    binary: bool = attrs.field(default=False, validator=_bool)


@attrs.frozen(kw_only=True)
class AuthResponse(Event):
    """A client line of an AUTHENTICATE exchange, base64-decoded."""

    data: bytes = attrs.field(repr=False, validator=attrs.validators.instance_of(bytes))


@attrs.frozen(kw_only=True)
class AuthCancel(Event):
    """ "*": the client gave up the AUTHENTICATE exchange; answer a tagged BAD."""


@attrs.frozen(kw_only=True)
class IdleDone(Event):
    """ "DONE": the client ends IDLE; answer the IDLE command's tagged OK."""


def _hint(_inst: Any, attribute: attrs.Attribute[Any], value: Tagged | UntaggedStatus) -> None:
    if not isinstance(value, Tagged | UntaggedStatus):
        raise TypeError(f"{attribute.name} must be a Tagged or UntaggedStatus response")


@attrs.frozen(kw_only=True)
class InvalidCommand(Event):
    """A command the core refused: syntax, unknown command, wrong state, a bad
    AUTHENTICATE line, a literal over the limits.

    Send `reply_hint` (a tagged BAD or NO, or an untagged BAD when no tag could be
    read) to answer it; the session goes on. `command` is the command name when it was
    readable; `reason` never quotes the client's input.
    """

    tag: str | None = attrs.field(validator=attrs.validators.optional(check_tag))
    command: str | None = attrs.field(default=None)
    reason: str = attrs.field(validator=attrs.validators.instance_of(str))
    reply_hint: Tagged | UntaggedStatus = attrs.field(validator=_hint)


@attrs.frozen(kw_only=True)
class ConnectionClosed(Event):
    """The client closed its end."""
