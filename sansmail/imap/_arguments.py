"""The argument forms IMAP commands share (RFC 9051 §9): mailbox names, flags, sequence
sets, keyword lists and RFC 4466 parameter lists, read from a `Cursor`."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final, Literal

import attrs

from sansmail.imap._events import Command
from sansmail.imap._grammar import ATOM_CHARS, FLAG_RE, normalize_flag
from sansmail.imap._lexer import Cursor, ParseError
from sansmail.imap._mailbox import MailboxNameError, decode_mailbox, normalize_inbox
from sansmail.imap._responses import ResponseCode
from sansmail.imap._sequence import SequenceSet
from sansmail.imap._values import Atom, Value

__all__ = [
    "Context",
    "Parse",
    "RefusalError",
    "decode_name",
    "read_flag",
    "read_flag_list",
    "read_keywords",
    "read_mailbox",
    "read_parameters",
    "read_sequence_set",
    "utf8_text",
]


class RefusalError(ParseError):
    """A well-formed command refused with a response other than a plain BAD."""

    def __init__(
        self, reason: str, *, status: Literal["NO", "BAD"], code: ResponseCode | None
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code


@attrs.frozen
class Context:
    utf8: bool  # mailbox names in UTF-8 (IMAP4rev2 or UTF8=ACCEPT enabled)
    uid: bool  # the command came as "UID <name>"


Parse = Callable[[Cursor, str, Context], Command]


def read_mailbox(cursor: Cursor, context: Context) -> str:
    """mailbox = "INBOX" / astring, decoded; INBOX in any case becomes "INBOX"."""
    return normalize_inbox(decode_name(cursor.astring(), context))


def decode_name(data: bytes, context: Context) -> str:
    try:
        return decode_mailbox(data, utf8=context.utf8)
    except MailboxNameError as exc:
        raise ParseError(str(exc)) from None


def utf8_text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError(f"{what} is not UTF-8") from None


def read_sequence_set(cursor: Cursor) -> SequenceSet:
    try:
        return SequenceSet.parse(cursor.sequence_text())
    except ValueError:
        raise ParseError("bad sequence set") from None


def read_flag(cursor: Cursor) -> str:
    token = cursor.match(_FLAG)
    if token is None:
        raise ParseError("expected a flag")
    return normalize_flag(token.decode("ascii"))


_FLAG: Final = re.compile(FLAG_RE.pattern.encode())


def read_flag_list(cursor: Cursor) -> tuple[str, ...]:
    """flag-list = "(" [flag *(SP flag)] ")"."""
    cursor.open()
    flags = []
    if not cursor.take(b")"):
        flags.append(read_flag(cursor))
        while not cursor.take(b")"):
            cursor.sp()
            flags.append(read_flag(cursor))
    cursor.unnest()
    return tuple(flags)


def read_keywords(cursor: Cursor, allowed: frozenset[str], what: str) -> list[str]:
    """ "(" [name *(SP name)] ")" of upper-cased atoms, each in `allowed`."""
    cursor.open()
    names: list[str] = []
    while not cursor.take(b")"):
        if names:
            cursor.sp()
        name = cursor.keyword(what)
        if name not in allowed:
            raise ParseError(f"unknown {what}")
        names.append(name)
    cursor.unnest()
    return names


_VALUE_WORD: Final = re.compile(f"[{ATOM_CHARS}*]+".encode())
_NUMBER_TEXT: Final = re.compile(rb"[0-9]{1,19}")
# RFC 4466 §2.1 tagged-ext-label, as the events check it: "1,2" after a value is no name.
_PARAMETER_NAME: Final = re.compile(r"[A-Z0-9][A-Z0-9_.:-]*")


def read_parameters(cursor: Cursor) -> tuple[tuple[str, Value], ...]:
    """RFC 4466 §2.1 parameter lists: "(" name [SP value] *(SP name [SP value]) ")".

    A value is a number, a sequence set or a parenthesised list (tagged-ext-val); any
    other word after a space starts the next parameter.
    """
    cursor.open()
    params: list[tuple[str, Value]] = []
    while True:
        name = cursor.keyword("a parameter name")
        if not _PARAMETER_NAME.fullmatch(name):
            raise ParseError("bad parameter name")
        value: Value = None
        if cursor.peek() == 0x20:
            saved = cursor.pos
            cursor.sp()
            following = cursor.peek()
            if following is not None and (following in b"(*$" or 0x30 <= following <= 0x39):
                value = read_tagged_value(cursor)
            else:
                cursor.pos = saved
        params.append((name, value))
        if cursor.take(b")"):
            break
        cursor.sp()
    cursor.unnest()
    return tuple(params)


def read_tagged_value(cursor: Cursor) -> Value:
    if cursor.peek() == 0x28:
        cursor.open()
        items: list[Value] = []
        while not cursor.take(b")"):
            if items:
                cursor.sp()
            items.append(read_tagged_value(cursor))
        cursor.unnest()
        return items
    if cursor.peek() == 0x22 or cursor.at_literal():
        return cursor.string()
    word = cursor.match(_VALUE_WORD)
    if word is None:
        raise ParseError("expected a parameter value")
    # A number, or a sequence set or other atom, kept as written (RFC 4466 §2.1).
    if _NUMBER_TEXT.fullmatch(word):
        return int(word)
    return Atom(word.decode("ascii"))
