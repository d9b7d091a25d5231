"""The tokens of an IMAP command: a cursor over a command that has fully arrived.

Theory of operation
-------------------
`_readers.CommandReader` frames a command off the wire: it reads lines, and whenever a
line ends in a literal announcement ("{12}", "{12+}", "~{12}") it reads exactly that
many octets and then the next line. By the time anything here runs the whole command is
in memory as `lines` and `literals`, literal i lying between line i and line i+1, and
each line but the last still ending in its announcement. So the parser needs no
resumable state: it is plain recursive descent over complete input, and where it meets
a literal announcement it takes the next literal and carries on at the start of the
next line. Literal octets are never scanned, so a literal can hold anything (CRLF,
"{5}", a whole fake command) without being taken for syntax (RFC 9051 §4.3).

Every syntax error raises `ParseError` with a short reason meant for a tagged BAD; the
reason never quotes the client's input, which may hold a password. Nesting of
parentheses (and of NOT/OR in SEARCH) is counted against `max_nesting` so hostile input
cannot exhaust the Python stack.
"""

from __future__ import annotations

import datetime
import re
from typing import Final

from sansmail.imap._grammar import ASTRING_CHARS, ATOM_CHARS, LIST_CHARS
from sansmail.imap._sequence import MAX_NUMBER

__all__ = ["Cursor", "ParseError"]


class ParseError(ValueError):
    """A command does not follow the grammar; str() is the reason for the BAD."""


_ATOM: Final = re.compile(f"[{ATOM_CHARS}]+".encode())
_ASTRING: Final = re.compile(f"[{ASTRING_CHARS}]+".encode())
_LIST_MAILBOX: Final = re.compile(f"[{LIST_CHARS}]+".encode())
_DIGITS: Final = re.compile(rb"[0-9]+")
# A literal announcement, which the reader guarantees ends the line: "{" number ["+"] "}"
# (RFC 9051 §9 `literal`, RFC 7888 §8) or "~{" number ["+"] "}" (RFC 3516 `literal8`).
_LITERAL: Final = re.compile(rb"(~?)\{([0-9]+)(\+?)\}\Z")
# quoted = DQUOTE *QUOTED-CHAR DQUOTE; QUOTED-CHAR = any TEXT-CHAR but quoted-specials,
# or "\" quoted-special. 8-bit octets are UTF-8 in IMAP4rev2 (RFC 9051 §9); they are let
# through here and judged where the string is decoded.
_QUOTED: Final = re.compile(rb'"((?:[^"\\\x00\r\n]|\\["\\])*)"')
_UNESCAPE: Final = re.compile(rb'\\(["\\])')
_SEQUENCE: Final = re.compile(rb"[0-9:*,$]+")

_MONTHS: Final = (
    "JAN",
    "FEB",
    "MAR",
    "APR",
    "MAY",
    "JUN",
    "JUL",
    "AUG",
    "SEP",
    "OCT",
    "NOV",
    "DEC",
)
# date-text = date-day "-" date-month "-" date-year (RFC 9051 §9).
_DATE: Final = re.compile(rb"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})")
# date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time SP zone DQUOTE.
_DATE_TIME: Final = re.compile(
    rb'"([ 0-9][0-9])-([A-Za-z]{3})-([0-9]{4}) '
    rb'([0-9]{2}):([0-9]{2}):([0-9]{2}) ([-+])([0-9]{2})([0-9]{2})"'
)


class Cursor:
    """Reads the tokens of one complete command, left to right."""

    __slots__ = ("_depth", "_index", "_line", "_lines", "_literals", "max_nesting", "pos")

    def __init__(self, lines: list[bytes], literals: list[bytes], *, max_nesting: int) -> None:
        assert len(literals) == len(lines) - 1
        self._lines = lines
        self._literals = literals
        self._index = 0
        self._line = lines[0]
        self.pos = 0
        self._depth = 0
        self.max_nesting = max_nesting

    # --- position ---------------------------------------------------------------------

    def at_end(self) -> bool:
        """Nothing is left of the command."""
        return self._index == len(self._lines) - 1 and self.pos == len(self._line)

    def end(self) -> None:
        if not self.at_end():
            raise ParseError("unexpected text at the end of the command")

    def peek(self) -> int | None:
        """The next octet of the current line, or None at its end."""
        return self._line[self.pos] if self.pos < len(self._line) else None

    def peek_is(self, text: bytes) -> bool:
        """Whether the line continues with `text` (ASCII letters in any case)."""
        end = self.pos + len(text)
        return self._line[self.pos : end].upper() == text

    def at_literal(self) -> bool:
        return _LITERAL.match(self._line, self.pos) is not None

    def take(self, text: bytes) -> bool:
        """Consume `text` (case-insensitive) if it comes next."""
        if self.peek_is(text):
            self.pos += len(text)
            return True
        return False

    def expect(self, text: bytes, what: str | None = None) -> None:
        if not self.take(text):
            raise ParseError(f"expected {what or text.decode()}")

    def sp(self) -> None:
        if not self.take(b" "):
            raise ParseError("expected a space")

    def open(self) -> None:
        """Consume "(" and count one nesting level."""
        self.expect(b"(", '"("')
        self.nest()

    def close(self) -> None:
        self.expect(b")", '")"')
        self.unnest()

    def nest(self) -> None:
        self._depth += 1
        if self._depth > self.max_nesting:
            raise ParseError("nested too deeply")

    def unnest(self) -> None:
        self._depth -= 1

    # --- tokens -------------------------------------------------------------------------

    def match(self, pattern: re.Pattern[bytes]) -> bytes | None:
        found = pattern.match(self._line, self.pos)
        if found is None:
            return None
        self.pos = found.end()
        return found.group()

    def atom(self, what: str = "an atom") -> bytes:
        token = self.match(_ATOM)
        if token is None:
            raise ParseError(f"expected {what}")
        return token

    def keyword(self, what: str = "a keyword") -> str:
        """An atom, upper-cased (keywords, options and capability names)."""
        return self.atom(what).decode("ascii").upper()

    def number(self, *, nonzero: bool = False, limit: int = MAX_NUMBER) -> int:
        """number (RFC 9051 §9: unsigned 32-bit) or, with a larger `limit`, number64."""
        token = self.match(_DIGITS)
        if token is None:
            raise ParseError("expected a number")
        if len(token) > 20 or int(token) > limit:
            raise ParseError("number out of range")
        value = int(token)
        if nonzero and value == 0:
            raise ParseError("expected a non-zero number")
        return value

    def quoted(self) -> bytes:
        found = _QUOTED.match(self._line, self.pos)
        if found is None:
            raise ParseError("bad quoted string")
        self.pos = found.end()
        return _UNESCAPE.sub(rb"\1", found.group(1))

    def literal(self, *, binary_ok: bool = False) -> tuple[bytes, bool]:
        """The next literal's octets, and whether it was a literal8 ("~{n}")."""
        found = _LITERAL.match(self._line, self.pos)
        if found is None:
            raise ParseError("expected a literal")
        binary = bool(found.group(1))
        if binary and not binary_ok:
            raise ParseError("literal8 is only allowed for APPEND data (RFC 3516)")
        data = self._literals[self._index]
        if not binary and b"\0" in data:
            raise ParseError("NUL in a literal (RFC 9051 §4.3)")
        self._index += 1
        self._line = self._lines[self._index]
        self.pos = 0
        return data, binary

    def string(self) -> bytes:
        """string = quoted / literal."""
        if self.peek() == 0x22:  # DQUOTE
            return self.quoted()
        if self.at_literal():
            return self.literal()[0]
        raise ParseError("expected a string")

    def astring(self) -> bytes:
        """astring = 1*ASTRING-CHAR / string."""
        token = self.match(_ASTRING)
        return token if token is not None else self.string()

    def nstring(self) -> bytes | None:
        if self.take(b"NIL"):
            return None
        return self.string()

    def list_mailbox(self) -> bytes:
        """list-mailbox = 1*list-char / string (RFC 9051 §9)."""
        token = self.match(_LIST_MAILBOX)
        return token if token is not None else self.string()

    def sequence_text(self) -> bytes:
        """The octets of a sequence set, to be checked by SequenceSet.parse."""
        token = self.match(_SEQUENCE)
        if token is None:
            raise ParseError("expected a sequence set")
        return token

    def date(self) -> datetime.date:
        """date = date-text / DQUOTE date-text DQUOTE (RFC 9051 §9)."""
        quoted = self.take(b'"')
        found = _DATE.match(self._line, self.pos)
        if found is None:
            raise ParseError("expected a date like 1-Feb-1994")
        self.pos = found.end()
        if quoted:
            self.expect(b'"', "a closing quote")
        return _make_date(found.group(1), found.group(2), found.group(3))

    def date_time(self) -> datetime.datetime:
        """date-time, e.g. "17-Jul-1996 02:44:25 -0700" (RFC 9051 §9)."""
        found = _DATE_TIME.match(self._line, self.pos)
        if found is None:
            raise ParseError('expected a date-time like "17-Jul-1996 02:44:25 -0700"')
        self.pos = found.end()
        day, month, year, hour, minute, second, sign, zh, zm = found.groups()
        date = _make_date(day.strip(), month, year)
        if int(zm) > 59:
            raise ParseError("bad time zone")
        offset = datetime.timedelta(hours=int(zh), minutes=int(zm))
        try:
            return datetime.datetime(
                date.year,
                date.month,
                date.day,
                int(hour),
                int(minute),
                int(second),
                tzinfo=datetime.timezone(-offset if sign == b"-" else offset),
            )
        except ValueError:
            raise ParseError("bad time") from None


def _make_date(day: bytes, month: bytes, year: bytes) -> datetime.date:
    try:
        number = _MONTHS.index(month.decode("ascii").upper()) + 1
        return datetime.date(int(year), number, int(day))
    except ValueError:
        raise ParseError("no such date") from None
