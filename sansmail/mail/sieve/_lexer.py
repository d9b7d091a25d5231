"""Sieve's lexical tokens (RFC 5228 §2 and §8.1), with the position of each.

Theory of operation: one pass over the script (the caller has already bounded its size),
a generator the parser pulls from, so errors come in the order of the text. One regular
expression, matched at the current index, takes blanks, hash comments, line ends,
identifiers, tags, numbers and punctuation; quoted strings, bracket comments and
``text:`` are scanned by hand. The line number and the index where the line began give
every token its line and column (both from 1, columns in characters). Comments and white
space are dropped here; strings come out decoded (quoted strings with their
escapes undone, ``text:`` strings dot-unstuffed), so the parser only sees shapes. Line ends
are CRLF by the RFC; a bare LF is accepted too, as Pigeonhole does, since scripts are
edited as local text files: a Sieve script is no wire protocol and nothing is smuggled.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from typing import NamedTuple

from sansmail.mail.sieve._ast import Position

__all__ = ["MAX_NUMBER", "Kind", "SieveError", "Token", "tokenize", "tokens"]

# Pigeonhole's sieve_number_t is 64 bits; a signed bound keeps every number safe for the
# evaluator's comparisons and for anything that stores it (RFC 5228 §2.4.1 asks for 2^31 at
# least).
MAX_NUMBER = 2**63 - 1

_QUANTIFIERS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_SINGLES = {
    "[": "LBRACKET",
    "]": "RBRACKET",
    "(": "LPAREN",
    ")": "RPAREN",
    "{": "LBRACE",
    "}": "RBRACE",
    ",": "COMMA",
    ";": "SEMICOLON",
}


class SieveError(Exception):
    """A script the parser or validator refuses: what is wrong, and where."""

    def __init__(self, message: str, position: Position) -> None:
        super().__init__(f"{position}: {message}")
        self.message = message
        self.position = position


class Kind(enum.Enum):
    IDENTIFIER = "identifier"
    TAG = "tag"
    NUMBER = "number"
    STRING = "string"
    LBRACKET = "'['"
    RBRACKET = "']'"
    LPAREN = "'('"
    RPAREN = "')'"
    LBRACE = "'{'"
    RBRACE = "'}'"
    COMMA = "','"
    SEMICOLON = "';'"
    EOF = "end of script"


class Token(NamedTuple):
    # A tuple, and the Position made only when asked: a script has a token every few
    # bytes, and building them was half of the lexer's time (py-spy).
    kind: Kind
    # IDENTIFIER and TAG: the name in lower case (TAG without its colon); STRING: the
    # decoded text; NUMBER: the value with its quantifier applied; others: "".
    value: str | int
    line: int
    column: int

    @property
    def position(self) -> Position:
        return Position(self.line, self.column)


# One match per token or blank run, tried at the current index (re.match does not
# search): the common tokens in C, the rare ones ('"', "/*", "text:", errors) by hand.
_SCAN = re.compile(
    r"""(?P<blank>[ \t]+|\#[^\n]*)
    |(?P<newline>\r?\n)
    |(?P<identifier>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<tag>:[A-Za-z_][A-Za-z0-9_]*)
    |(?P<number>[0-9]+[KkMmGg]?)
    |(?P<single>[][(){},;])""",
    re.VERBOSE,
)
_SINGLE_KINDS = {char: Kind[name] for char, name in _SINGLES.items()}


def tokenize(text: str) -> list[Token]:
    """The tokens of ``text``, ending with one EOF token; a SieveError at the first
    lexical error."""
    return list(tokens(text))


def tokens(text: str) -> Iterator[Token]:
    """The tokens of ``text`` one by one, so that a parser reading them reports the
    errors in the order of the text (a grammar error before a later lexical one), as
    Pigeonhole's does."""
    return _Lexer(text).run()


class _Lexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.index = 0
        self.line = 1
        self.line_start = 0  # index of the first character of the current line

    def position(self, index: int | None = None) -> Position:
        at = self.index if index is None else index
        return Position(self.line, at - self.line_start + 1)

    def newline_at(self, index: int) -> None:
        """Note that the line end ending at ``index`` (its LF) was passed."""
        self.line += 1
        self.line_start = index + 1

    def run(self) -> Iterator[Token]:
        text = self.text
        end = len(text)
        scan = _SCAN.match
        while self.index < end:
            index = self.index
            found = scan(text, index)
            group = found.lastgroup if found is not None else None
            if found is None or group is None:
                rare = self.rare()
                if rare is not None:
                    yield rare
                continue
            column = index - self.line_start + 1
            if group == "blank":
                pass
            elif group == "newline":
                self.newline_at(found.end() - 1)
            elif group == "single":
                yield Token(_SINGLE_KINDS[text[index]], "", self.line, column)
            elif group == "identifier":
                name = found.group().lower()
                if name == "text" and text.startswith(":", found.end()):
                    self.index = found.end() + 1
                    start = Position(self.line, column)
                    yield Token(Kind.STRING, self.multiline(start), start.line, column)
                    continue
                yield Token(Kind.IDENTIFIER, name, self.line, column)
            elif group == "tag":
                yield Token(Kind.TAG, found.group()[1:].lower(), self.line, column)
            else:
                yield Token(Kind.NUMBER, self.number(found.group()), self.line, column)
            self.index = found.end()
        yield Token(Kind.EOF, "", self.line, self.index - self.line_start + 1)

    def rare(self) -> Token | None:
        """The tokens the scanner leaves to code: quoted strings, bracket comments, and
        the errors."""
        text = self.text
        char = text[self.index]
        start = self.position()
        if char == '"':
            return Token(Kind.STRING, self.quoted(), start.line, start.column)
        if text.startswith("/*", self.index):
            self.bracket_comment()
            return None
        if char == "\r":
            raise SieveError("bare carriage return (CR without LF)", start)
        if char == ":":
            raise SieveError("unexpected character ':' (a tag needs a name)", start)
        raise SieveError(f"unexpected character(s) starting with {char!r}", start)

    def bracket_comment(self) -> None:
        start = self.position()
        close = self.text.find("*/", self.index + 2)
        if close < 0:
            raise SieveError("end of file before end of bracket comment ('*/')", start)
        self.skip_lines(self.index, close)
        self.index = close + 2

    def skip_lines(self, start: int, stop: int) -> None:
        """Count the line ends in text[start:stop]."""
        text = self.text
        newline = text.find("\n", start, stop)
        while newline >= 0:
            self.newline_at(newline)
            newline = text.find("\n", newline + 1, stop)

    def number(self, digits: str) -> int:
        quantifier = _QUANTIFIERS.get(digits[-1].lower(), 1)
        if quantifier != 1:
            digits = digits[:-1]
        # Twenty digits already exceed the bound: int() never sees a huge string.
        value = int(digits) * quantifier if len(digits) <= 20 else MAX_NUMBER + 1
        if value > MAX_NUMBER:
            raise SieveError(f"number exceeds integer limits (max {MAX_NUMBER})", self.position())
        return value

    def quoted(self) -> str:
        # RFC 5228 §2.4.2: only \" and \\ are defined; "An undefined escape sequence (such
        # as "\a" in a context where "a" has no special meaning) is interpreted as if there
        # were no backslash". A quoted string may span lines.
        text = self.text
        start = self.position()
        index = self.index + 1
        end = len(text)
        parts: list[str] = []
        while True:
            stop = _find_either(text, index, end)
            if stop < 0:
                raise SieveError("end of file before end of quoted string", start)
            parts.append(text[index:stop])
            if text[stop] == '"':
                self.skip_lines(self.index, stop)
                self.index = stop + 1
                return "".join(parts)
            if stop + 1 >= end:
                raise SieveError("end of file before end of quoted string", start)
            parts.append(text[stop + 1])
            index = stop + 2

    def multiline(self, start: Position) -> str:
        # RFC 5228 §8.1: multi-line = "text:" *(SP / HTAB) (hash-comment / CRLF)
        # *(multiline-literal / multiline-dotstart) "." CRLF
        text = self.text
        end = len(text)
        index = self.index
        while index < end and text[index] in " \t":
            index += 1
        if index < end and text[index] == "#":
            newline = text.find("\n", index)
            index = end if newline < 0 else newline
        if text.startswith("\r\n", index):
            index += 1
        if index >= end or text[index] != "\n":
            self.index = index
            raise SieveError(
                "invalid character after 'text:' (expected a line end or a hash comment)",
                self.position(),
            )
        self.newline_at(index)
        index += 1
        lines: list[str] = []
        while True:
            if index >= end:
                raise SieveError("end of file before end of multi-line string", start)
            newline = text.find("\n", index)
            line_end = end if newline < 0 else newline + 1
            line = text[index:line_end]
            bare = line.rstrip("\n").removesuffix("\r")
            if bare == ".":
                if newline >= 0:
                    self.newline_at(newline)
                self.index = line_end
                return "".join(lines)
            if newline < 0:
                raise SieveError("end of file before end of multi-line string", start)
            # A leading ".." is a stuffed "." (RFC 5228 §2.4.2).
            lines.append(line[1:] if line.startswith("..") else line)
            self.newline_at(newline)
            index = line_end


def _find_either(text: str, start: int, end: int) -> int:
    """The index of the first '"' or backslash at or after ``start``, or -1."""
    quote = text.find('"', start, end)
    backslash = text.find("\\", start, end if quote < 0 else quote)
    return backslash if backslash >= 0 else quote
