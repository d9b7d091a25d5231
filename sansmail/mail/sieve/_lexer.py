"""Sieve's lexical tokens (RFC 5228 §2 and §8.1), with the position of each.

Theory of operation: one pass over the whole script (the caller has already bounded its
size), index by index, keeping the line number and the index where the line began so that
every token carries its line and column (both from 1, columns in characters). Comments
and white space are dropped here; strings come out decoded (quoted strings with their
escapes undone, ``text:`` strings dot-unstuffed), so the parser only sees shapes. Line ends
are CRLF by the RFC; a bare LF is accepted too, as Pigeonhole does, since scripts are
edited as local text files: a Sieve script is no wire protocol and nothing is smuggled.
"""

from __future__ import annotations

import enum

import attrs

from sansmail.mail.sieve._ast import Position

__all__ = ["MAX_NUMBER", "Kind", "SieveError", "Token", "tokenize"]

# Pigeonhole's sieve_number_t is 64 bits; a signed bound keeps every number safe for the
# evaluator's comparisons and for anything that stores it (RFC 5228 §2.4.1 asks for 2^31 at
# least).
MAX_NUMBER = 2**63 - 1

_QUANTIFIERS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_IDENT_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_IDENT_REST = _IDENT_START | frozenset("0123456789")
_DIGITS = frozenset("0123456789")
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


@attrs.frozen
class Token:
    kind: Kind
    # IDENTIFIER and TAG: the name in lower case (TAG without its colon); STRING: the
    # decoded text; NUMBER: the value with its quantifier applied; others: "".
    value: str | int
    position: Position


def tokenize(text: str) -> list[Token]:
    """The tokens of ``text``, ending with one EOF token; a SieveError at the first
    lexical error."""
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

    def run(self) -> list[Token]:
        tokens: list[Token] = []
        text = self.text
        end = len(text)
        while True:
            self.skip_blank()
            if self.index >= end:
                tokens.append(Token(Kind.EOF, "", self.position()))
                return tokens
            char = text[self.index]
            start = self.position()
            if char in _SINGLES:
                tokens.append(Token(Kind[_SINGLES[char]], "", start))
                self.index += 1
            elif char == '"':
                tokens.append(Token(Kind.STRING, self.quoted(), start))
            elif char in _DIGITS:
                tokens.append(Token(Kind.NUMBER, self.number(), start))
            elif char == ":":
                self.index += 1
                if self.index >= end or text[self.index] not in _IDENT_START:
                    raise SieveError("unexpected character ':' (a tag needs a name)", start)
                tokens.append(Token(Kind.TAG, self.identifier(), start))
            elif char in _IDENT_START:
                name = self.identifier()
                if name == "text" and self.index < end and text[self.index] == ":":
                    self.index += 1
                    tokens.append(Token(Kind.STRING, self.multiline(start), start))
                else:
                    tokens.append(Token(Kind.IDENTIFIER, name, start))
            else:
                raise SieveError(f"unexpected character(s) starting with {char!r}", start)

    def skip_blank(self) -> None:
        text = self.text
        end = len(text)
        while self.index < end:
            char = text[self.index]
            if char in " \t":
                self.index += 1
            elif char == "\n":
                self.newline_at(self.index)
                self.index += 1
            elif char == "\r":
                if self.index + 1 < end and text[self.index + 1] == "\n":
                    self.index += 1
                    continue
                raise SieveError("bare carriage return (CR without LF)", self.position())
            elif char == "#":
                newline = text.find("\n", self.index)
                self.index = end if newline < 0 else newline
            elif char == "/" and text.startswith("/*", self.index):
                self.bracket_comment()
            else:
                return

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

    def identifier(self) -> str:
        text = self.text
        start = self.index
        end = len(text)
        index = start + 1
        while index < end and text[index] in _IDENT_REST:
            index += 1
        self.index = index
        return text[start:index].lower()

    def number(self) -> int:
        text = self.text
        start_position = self.position()
        start = self.index
        end = len(text)
        index = start
        while index < end and text[index] in _DIGITS:
            index += 1
        # Twenty digits already exceed the bound: int() never sees a huge string.
        value = int(text[start:index]) if index - start <= 20 else MAX_NUMBER + 1
        if index < end and text[index].lower() in _QUANTIFIERS:
            value *= _QUANTIFIERS[text[index].lower()]
            index += 1
        self.index = index
        if value > MAX_NUMBER:
            raise SieveError(f"number exceeds integer limits (max {MAX_NUMBER})", start_position)
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
