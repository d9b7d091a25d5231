"""FETCH data items (RFC 9051 §6.4.5, RFC 3501 §6.4.5 for the RFC822 forms, RFC 3516 BINARY).

A FETCH names what it wants as a list of items. They arrive here as typed values:

    FetchAttribute(name="FLAGS")                 FLAGS, ENVELOPE, UID, RFC822.SIZE ...
    BodySection(section=Section(...), partial=(0, 1024), peek=True)
                                                 BODY[1.2.HEADER]<0.1024>, BODY.PEEK[...]
    BinarySection(part=(1, 2), partial=None, peek=False)      BINARY[1.2], BINARY.PEEK[...]
    BinarySize(part=(1,))                        BINARY.SIZE[1]

The macros ALL, FAST and FULL are expanded by the parser (RFC 9051 §6.4.5), so an
application sees only these. `request` is the text a client writes for an item and
`response_name` the label the server puts in front of the data: the same section with
".PEEK" dropped and only the origin octet of a partial range ("BODY[]<0>").

Sections (`Section`): part numbers ("1.2.3", RFC 9051 §6.4.5 `section-part`), then
HEADER, HEADER.FIELDS (names), HEADER.FIELDS.NOT (names), TEXT, or MIME, which needs a
part number before it. An empty section ("BODY[]") is the whole message.
"""

from __future__ import annotations

import re
from typing import Any, Final

import attrs

from sansmail.imap._grammar import ATOM_RE
from sansmail.imap._lexer import Cursor, ParseError
from sansmail.imap._sequence import MAX_NUMBER

__all__ = [
    "FETCH_MACROS",
    "FIELD_NAME",
    "SIMPLE_ATTRIBUTES",
    "BinarySection",
    "BinarySize",
    "BodySection",
    "FetchAttribute",
    "FetchItem",
    "Partial",
    "Section",
    "parse_fetch_items",
]

#: The items that take no section (RFC 9051 §6.4.5; RFC 3501 §6.4.5 for the RFC822
#: forms, which IMAP4rev2 dropped but rev1 clients still send; MODSEQ is RFC 7162 §3.1.4).
SIMPLE_ATTRIBUTES: Final = frozenset(
    {
        "BODY",
        "BODYSTRUCTURE",
        "ENVELOPE",
        "FLAGS",
        "INTERNALDATE",
        "MODSEQ",
        "RFC822",
        "RFC822.HEADER",
        "RFC822.SIZE",
        "RFC822.TEXT",
        "UID",
    }
)

#: RFC 9051 §6.4.5: the macros and what they stand for.
FETCH_MACROS: Final = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}

#: (first octet, number of octets): "<0.1024>". RFC 9051 §9 `partial`.
Partial = tuple[int, int]

_TEXTS = ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME")
# RFC 5322 §3.6.8: ftext = %d33-57 / %d59-126, any printable ASCII but ":".
FIELD_NAME: Final = re.compile(r"[\x21-\x39\x3b-\x7e]+")
_MAX_PART = MAX_NUMBER
_MAX_NUMBER64 = 2**63 - 1  # RFC 9051 §9: number64


def _check_part(_inst: Any, attribute: attrs.Attribute[Any], value: tuple[int, ...]) -> None:
    if not isinstance(value, tuple) or not all(
        type(n) is int and 1 <= n <= _MAX_PART for n in value
    ):
        raise ValueError(f"{attribute.name} must be a tuple of part numbers >= 1: {value!r}")


def _check_partial(_inst: Any, attribute: attrs.Attribute[Any], value: Partial | None) -> None:
    if value is None:
        return
    if not (
        isinstance(value, tuple)
        and len(value) == 2
        and all(type(n) is int for n in value)
        and 0 <= value[0] <= _MAX_NUMBER64
        and 1 <= value[1] <= _MAX_NUMBER64
    ):
        raise ValueError(f"{attribute.name} must be (start >= 0, count >= 1): {value!r}")


def _check_section(inst: Section, _attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and value not in _TEXTS:
        raise ValueError(f"section text must be one of {_TEXTS}, not {value!r}")
    if value == "MIME" and not inst.part:
        raise ValueError("MIME needs a part number (RFC 9051 §6.4.5)")
    wants_fields = value in ("HEADER.FIELDS", "HEADER.FIELDS.NOT")
    if wants_fields != bool(inst.fields):
        raise ValueError("header field names go with HEADER.FIELDS (.NOT), and only there")
    for name in inst.fields:
        if not isinstance(name, str) or not FIELD_NAME.fullmatch(name):
            raise ValueError(f"not a header field name: {name!r}")


class FetchItem:
    """Base class of the FETCH data items."""

    __slots__ = ()

    @property
    def request(self) -> str:
        """The item as a client writes it in a FETCH command."""
        raise NotImplementedError

    @property
    def response_name(self) -> str:
        """The label of this item's data in a FETCH response."""
        raise NotImplementedError


@attrs.frozen(kw_only=True)
class FetchAttribute(FetchItem):
    """An item without a section: FLAGS, ENVELOPE, UID, RFC822.SIZE, BODYSTRUCTURE ..."""

    name: str = attrs.field(validator=attrs.validators.in_(SIMPLE_ATTRIBUTES))

    @property
    def request(self) -> str:
        return self.name

    @property
    def response_name(self) -> str:
        return self.name


@attrs.frozen(kw_only=True)
class Section:
    """The part of a message a BODY[...] item names; empty for the whole message."""

    part: tuple[int, ...] = attrs.field(default=(), validator=_check_part)
    fields: tuple[str, ...] = attrs.field(default=())
    text: str | None = attrs.field(default=None, validator=_check_section)

    def __str__(self) -> str:
        words = [".".join(map(str, self.part))] if self.part else []
        if self.text is not None:
            words.append(self.text)
        spec = ".".join(words)
        if self.fields:
            spec += " (" + " ".join(map(_astring_text, self.fields)) + ")"
        return spec


def _astring_text(name: str) -> str:
    # An atom where possible; quoted otherwise, and always when the name holds "]",
    # which a naive client would take for the end of the section.
    if ATOM_RE.fullmatch(name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _partial_text(partial: Partial | None) -> str:
    return "" if partial is None else f"<{partial[0]}.{partial[1]}>"


def _origin_text(partial: Partial | None) -> str:
    return "" if partial is None else f"<{partial[0]}>"


@attrs.frozen(kw_only=True)
class BodySection(FetchItem):
    """BODY[section]<partial>, or BODY.PEEK[...] when `peek` (no implicit \\Seen)."""

    section: Section = attrs.field(factory=Section, validator=attrs.validators.instance_of(Section))
    partial: Partial | None = attrs.field(default=None, validator=_check_partial)
    peek: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))

    @property
    def request(self) -> str:
        name = "BODY.PEEK" if self.peek else "BODY"
        return f"{name}[{self.section}]{_partial_text(self.partial)}"

    @property
    def response_name(self) -> str:
        return f"BODY[{self.section}]{_origin_text(self.partial)}"


@attrs.frozen(kw_only=True)
class BinarySection(FetchItem):
    """BINARY[part]<partial> (RFC 3516 §4.2, RFC 9051 §6.4.5): the part, decoded."""

    part: tuple[int, ...] = attrs.field(default=(), validator=_check_part)
    partial: Partial | None = attrs.field(default=None, validator=_check_partial)
    peek: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))

    @property
    def request(self) -> str:
        name = "BINARY.PEEK" if self.peek else "BINARY"
        return f"{name}[{'.'.join(map(str, self.part))}]{_partial_text(self.partial)}"

    @property
    def response_name(self) -> str:
        return f"BINARY[{'.'.join(map(str, self.part))}]{_origin_text(self.partial)}"


@attrs.frozen(kw_only=True)
class BinarySize(FetchItem):
    """BINARY.SIZE[part] (RFC 3516 §4.3): the size of the part once decoded."""

    part: tuple[int, ...] = attrs.field(default=(), validator=_check_part)

    @property
    def request(self) -> str:
        return f"BINARY.SIZE[{'.'.join(map(str, self.part))}]"

    @property
    def response_name(self) -> str:
        return self.request


# --- parsing -----------------------------------------------------------------------------

_NAME: Final = re.compile(rb"[A-Za-z0-9.]+")
_PART: Final = re.compile(rb"[1-9][0-9]{0,9}(?:\.[1-9][0-9]{0,9})*")


def parse_fetch_items(cursor: Cursor) -> tuple[FetchItem, ...]:
    """fetch-att list: "ALL" / "FULL" / "FAST" / fetch-att / "(" fetch-att *(SP fetch-att) ")"."""
    if cursor.peek() == 0x28:  # "("
        cursor.open()
        items = [_fetch_att(cursor)]
        while not cursor.take(b")"):
            cursor.sp()
            items.append(_fetch_att(cursor))
        cursor.unnest()
        return tuple(items)
    for macro, names in FETCH_MACROS.items():
        if cursor.peek_is(macro.encode()) and _word_ends(cursor, len(macro)):
            cursor.pos += len(macro)
            return tuple(FetchAttribute(name=name) for name in names)
    return (_fetch_att(cursor),)


def _word_ends(cursor: Cursor, length: int) -> bool:
    # A macro is a whole word: "ALL" but not "ALLX".
    saved = cursor.pos
    cursor.pos += length
    following = cursor.peek()
    cursor.pos = saved
    return following in (None, 0x20, 0x29)


def _fetch_att(cursor: Cursor) -> FetchItem:
    token = cursor.match(_NAME)
    if token is None:
        raise ParseError("expected a FETCH data item")
    name = token.decode("ascii").upper()
    if name in ("BODY", "BODY.PEEK") and cursor.peek() == 0x5B:  # "["
        section = _section(cursor)
        return BodySection(section=section, partial=_partial(cursor), peek=name == "BODY.PEEK")
    if name in ("BINARY", "BINARY.PEEK"):
        part = _binary_part(cursor)
        return BinarySection(part=part, partial=_partial(cursor), peek=name == "BINARY.PEEK")
    if name == "BINARY.SIZE":
        return BinarySize(part=_binary_part(cursor))
    if name in SIMPLE_ATTRIBUTES:
        return FetchAttribute(name=name)
    raise ParseError("unknown FETCH data item")


def _section(cursor: Cursor) -> Section:
    """section = "[" [section-spec] "]"; section-spec = section-msgtext /
    (section-part ["." section-text]); section-text = section-msgtext / "MIME"."""
    cursor.expect(b"[")
    part: tuple[int, ...] = ()
    digits = cursor.match(_PART)
    if digits is not None:
        part = tuple(int(n) for n in digits.split(b"."))
        if not cursor.take(b"."):
            cursor.expect(b"]", '"]"')
            return Section(part=part)
    elif cursor.take(b"]"):
        return Section()
    text: str | None = None
    for candidate in ("HEADER.FIELDS.NOT", "HEADER.FIELDS", "HEADER", "TEXT", "MIME"):
        if cursor.take(candidate.encode()):
            text = candidate
            break
    if text is None or (text == "MIME" and not part):
        raise ParseError("bad section")
    fields: tuple[str, ...] = ()
    if text.startswith("HEADER.FIELDS"):
        cursor.sp()
        fields = _header_list(cursor)
    cursor.expect(b"]", '"]"')
    return Section(part=part, text=text, fields=fields)


def _header_list(cursor: Cursor) -> tuple[str, ...]:
    """header-list = "(" header-fld-name *(SP header-fld-name) ")"; header-fld-name = astring."""
    cursor.open()
    names = []
    while True:
        raw = cursor.astring()
        try:
            name = raw.decode("ascii")
        except UnicodeDecodeError:
            raise ParseError("bad header field name") from None
        if not FIELD_NAME.fullmatch(name):
            raise ParseError("bad header field name")
        names.append(name)
        if cursor.take(b")"):
            break
        cursor.sp()
    cursor.unnest()
    return tuple(names)


def _binary_part(cursor: Cursor) -> tuple[int, ...]:
    """section-binary = "[" [section-part] "]"."""
    cursor.expect(b"[")
    digits = cursor.match(_PART)
    cursor.expect(b"]", '"]"')
    return () if digits is None else tuple(int(n) for n in digits.split(b"."))


def _partial(cursor: Cursor) -> Partial | None:
    """partial = "<" number64 "." nz-number64 ">"."""
    if not cursor.take(b"<"):
        return None
    start = cursor.number(limit=_MAX_NUMBER64)
    cursor.expect(b".")
    count = cursor.number(nonzero=True, limit=_MAX_NUMBER64)
    cursor.expect(b">")
    return (start, count)
