"""Turning client bytes into events: the tokens of a command, then the command.

Theory of operation
-------------------
A ManageSieve command (RFC 5804 §4) is a command name and arguments separated by single
spaces, ended by CRLF. Arguments are numbers (HAVESPACE's size) or strings, and a string
is quoted ("..." with only \\" and \\\\ escaped) or a literal: "{n}" or "{n+}" at the end
of a line, then exactly n octets, after which the command goes on (a space and more
arguments) or ends (CRLF). RFC 5804 §4 has clients send only "{n+}" (literal-c2s,
non-synchronizing: sieve-connect, Roundcube and the Python managesieve library do) and
defines no continuation request, so a client that writes the synchronizing "{n}" has
nothing to wait for and sends the octets at once: both are read the same way.

`CommandReader` gathers one command across its lines and literals from the connection's
`LineBuffer`: each line is scanned once (`scan_line`), each literal taken whole once it
has arrived, so nothing is rescanned. A command found wrong part-way (an unknown name,
one not valid in this state, a syntax error, a literal over `Config.max_literal`) is
still read to its end, because its literals would otherwise be parsed as commands; what
is left of it is dropped as it arrives, never buffered. This is also why a command not
valid before authentication (PUTSCRIPT with a megabyte literal) costs an unauthenticated
client nothing it can use against our memory. A line whose tokens are broken but that
ends in "{n}" or "{n+}" is taken to announce a literal, as the client surely meant.

`read_command` then checks the tokens against the command's grammar and the session
state (`_state.ALLOWED`), and `read_sasl` reads a client string of an AUTHENTICATE
exchange (RFC 5804 §2.1: base64, or "*" to cancel). Every refusal raises `CommandError`
with the NO to send.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from sansmail._linebuffer import LineBuffer
from sansmail.managesieve._config import Config
from sansmail.managesieve._events import (
    MAX_NUMBER,
    SASL_MECHANISM,
    Authenticate,
    Capability,
    CheckScript,
    DeleteScript,
    Event,
    GetScript,
    HaveSpace,
    ListScripts,
    Logout,
    No,
    Noop,
    PutScript,
    RenameScript,
    SaslCancel,
    SaslResponse,
    SetActive,
    StartTls,
    Unauthenticate,
    name_problem,
)
from sansmail.managesieve._state import ALLOWED, Stage
from sansmail.sasl import RemoteSASLError, decode_base64_strict

__all__ = [
    "KINDS",
    "Atom",
    "CommandError",
    "CommandReader",
    "String",
    "read_command",
    "read_sasl",
    "scan_line",
]


class CommandError(Exception):
    """A command refused; `reply` is the NO to send."""

    def __init__(self, reason: str, reply: No) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply


def _refuse(reason: str, text: str | None = None, code: str | None = None) -> CommandError:
    return CommandError(reason, No(text=text or reason, code=code))


class Atom(bytes):
    """A bare word of a command line: the command name, a number."""

    __slots__ = ()


class String(bytes):
    """A quoted string (unescaped) or a literal's octets."""

    __slots__ = ()


Token = Atom | String

# RFC 5804 §4: QUOTED-CHAR = SAFE-UTF8-CHAR / "\" QUOTED-SPECIALS; SAFE-CHAR is any octet
# but NUL, CR, LF, DQUOTE and "\" (CR and LF cannot occur inside a line).
# Runs of plain octets are taken whole, and possessively: an unterminated string fails at
# once instead of backtracking through every way of splitting the run.
_QUOTED: Final = re.compile(rb'"((?:[^"\\\x00]++|\\["\\])*+)"')
# RFC 5804 §4: literal-c2s = "{" number "+}" CRLF *OCTET. The "+" is optional here: a
# client writing {n} gets no continuation (ManageSieve has none) and sends the octets
# anyway, so they are read the same way.
_LITERAL: Final = re.compile(rb"\{([0-9]{1,10})(\+?)\}\Z")
# Command names are letters; a number is digits. Nothing else is bare.
_ATOM: Final = re.compile(rb"[A-Za-z0-9]+")


def _unescape(value: bytes) -> bytes:
    # _QUOTED pairs every backslash with the octet after it, left to right, as
    # bytes.replace scans; NUL cannot occur in a quoted string, so it holds the escaped
    # backslashes meanwhile. (re.sub with a template ran Python code per escape: 40% of
    # parsing a quoted script.)
    return value.replace(b"\\\\", b"\0").replace(b'\\"', b'"').replace(b"\0", b"\\")


def literal_at_end(line: bytes) -> int | None:
    """The size of the literal a line announces at its end, or None."""
    match = _LITERAL.search(line)
    if match is None:
        return None
    size = int(match[1])
    return size if size <= MAX_NUMBER else None


def scan_line(line: bytes, tokens: list[Token], *, continuation: bool) -> int | None:
    """Append the tokens of one line (CRLF removed) to `tokens`; return the size of the
    literal that ends it, or None when the command ends with this line.

    `continuation`: the line follows a literal, so it is empty or starts with a space."""
    pos = 0
    end = len(line)
    if continuation and line and line[0] != 0x20:
        raise _refuse("no space after a literal", "syntax error")
    while pos < end:
        if tokens or continuation:
            if line[pos] != 0x20:
                raise _refuse("arguments are separated by one space", "syntax error")
            pos += 1
            continuation = False
            if pos == end:
                raise _refuse("space at the end of the line", "syntax error")
        char = line[pos]
        if char == 0x22:  # "
            match = _QUOTED.match(line, pos)
            if match is None:
                raise _refuse("bad quoted string", "syntax error in a quoted string")
            value = match[1]
            if b"\\" in value:
                value = _unescape(value)
            tokens.append(String(value))
            pos = match.end()
        elif char == 0x7B:  # {
            match = _LITERAL.match(line, pos)
            if match is None:
                raise _refuse("bad literal", "syntax error in a literal")
            size = int(match[1])
            if size > MAX_NUMBER:
                raise _refuse("literal size out of range", "syntax error in a literal")
            return size
        else:
            match = _ATOM.match(line, pos)
            if match is None:
                raise _refuse("unexpected character", "syntax error")
            tokens.append(Atom(match[0]))
            pos = match.end()
    return None


class CommandReader:
    """Gathers the tokens of one command (or one SASL string) from the buffer.

    `read()` returns the tokens once the command is complete, None while more bytes are
    needed, and raises `CommandError` once a refused command has been read to its end.
    Line errors of the buffer (`LineTooLongError`, `BareNewlineError`) pass through: they
    end the session."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._tokens: list[Token] = []
        self._first: bytes | None = None  # the command's first line, for InvalidCommand
        self._literal: int | None = None  # octets of the current literal still to come
        self._literal_total = 0  # octets of literal data in this command so far
        self._error: CommandError | None = None
        self._skipping = False  # the current literal is dropped, not kept
        self._done_line = b""  # the first line of the command read last

    @property
    def first_line(self) -> bytes:
        """The first line of the command just read."""
        return self._done_line

    @property
    def in_literal(self) -> bool:
        return self._literal is not None

    def reset(self) -> None:
        self._tokens = []
        self._first = None
        self._literal = None
        self._literal_total = 0
        self._error = None
        self._skipping = False

    def read(
        self, buffer: LineBuffer, check_start: Callable[[list[Token]], None]
    ) -> list[Token] | None:
        """Read on from `buffer`. `check_start(tokens)` sees the tokens of the first line
        and may raise `CommandError` (an unknown command, one not valid now), after which
        the command's literals are dropped unread."""
        while True:
            if self._literal is not None:
                if not self._read_literal(buffer):
                    return None
                continue
            line = buffer.maybe_extract_line(self._config.max_line)
            if line is None:
                return None
            continuation = self._first is not None
            if not continuation:
                self._first = line
            literal = self._scan(line, continuation=continuation)
            if not continuation and self._error is None:
                try:
                    check_start(self._tokens)
                except CommandError as exc:
                    self._error = exc
            if literal is None:
                return self._finish()
            self._start_literal(literal)

    def _scan(self, line: bytes, *, continuation: bool) -> int | None:
        if self._error is not None:
            return literal_at_end(line)
        try:
            return scan_line(line, self._tokens, continuation=continuation)
        except CommandError as exc:
            self._error = exc
            return literal_at_end(line)

    def _start_literal(self, size: int) -> None:
        self._literal_total += size
        if self._error is None and self._literal_total > self._config.max_literal:
            # RFC 5804 §2.6: a script too big for the server is NO (QUOTA/MAXSIZE).
            self._error = _refuse(
                f"literal data over {self._config.max_literal} octets",
                "too large",
                code="QUOTA/MAXSIZE",
            )
        self._skipping = self._error is not None
        self._literal = size

    def _read_literal(self, buffer: LineBuffer) -> bool:
        assert self._literal is not None
        if self._skipping:
            dropped = min(len(buffer), self._literal)
            buffer.discard(dropped)
            self._literal -= dropped
            if self._literal:
                return False
        else:
            data = buffer.maybe_extract_exact(self._literal)
            if data is None:
                return False
            self._tokens.append(String(data))
        self._literal = None
        return True

    def _finish(self) -> list[Token]:
        error, tokens = self._error, self._tokens
        self._done_line = self._first or b""
        self.reset()
        if error is not None:
            raise error
        return tokens


# --- commands ---------------------------------------------------------------------------

KINDS: dict[bytes, type[Event]] = {
    b"AUTHENTICATE": Authenticate,
    b"STARTTLS": StartTls,
    b"LOGOUT": Logout,
    b"CAPABILITY": Capability,
    b"HAVESPACE": HaveSpace,
    b"PUTSCRIPT": PutScript,
    b"CHECKSCRIPT": CheckScript,
    b"LISTSCRIPTS": ListScripts,
    b"SETACTIVE": SetActive,
    b"GETSCRIPT": GetScript,
    b"DELETESCRIPT": DeleteScript,
    b"RENAMESCRIPT": RenameScript,
    b"NOOP": Noop,
    b"UNAUTHENTICATE": Unauthenticate,
}


def command_kind(tokens: list[Token], stage: Stage) -> type[Event]:
    """The event type the first token names, if the stage allows it (CommandError if
    not). RFC 5804 §4: command names are case-insensitive."""
    if not tokens or type(tokens[0]) is not Atom:
        raise _refuse("no command name", "syntax error")
    kind = KINDS.get(tokens[0].upper())
    if kind is None:
        shown = tokens[0][:16].decode("ascii", "replace")
        raise _refuse(f"unknown command {shown!r}", "unknown command")
    if (stage, kind) not in ALLOWED:
        if stage is Stage.NON_AUTHENTICATED:
            raise _refuse(f"{kind.__name__} needs authentication", "authenticate first")
        raise _refuse(f"{kind.__name__} not valid once authenticated", "already authenticated")
    return kind


def _string(token: Token, what: str) -> bytes:
    if type(token) is not String:
        raise _refuse(f"{what} must be a string", f"syntax error: {what} must be a string")
    return bytes(token)


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse(f"{what} is not UTF-8", f"invalid {what}") from None


def _name(token: Token, config: Config, *, empty: bool = False) -> str:
    data = _string(token, "script name")
    if len(data) > config.max_name:
        raise _refuse(f"script name over {config.max_name} octets", "script name too long")
    name = _utf8(data, "script name")
    if empty and not name:
        return name
    problem = name_problem(name)
    if problem is not None:
        raise _refuse(problem, "invalid script name")
    return name


def _number(token: Token) -> int:
    # RFC 5804 §4: number = 1*DIGIT, 0 to 4,294,967,295.
    if type(token) is not Atom or not token.isdigit() or len(token) > 10:
        raise _refuse("not a number", "syntax error: a number is expected")
    value = int(token)
    if value > MAX_NUMBER:
        raise _refuse("number out of range", "syntax error: number out of range")
    return value


def _decode(data: bytes) -> bytes:
    try:
        return decode_base64_strict(data)
    except RemoteSASLError:
        raise _refuse("SASL data is not base64", "invalid base64") from None


def _arity(kind: type[Event], args: list[Token], least: int, most: int) -> None:
    if not least <= len(args) <= most:
        name = kind.__name__.upper()
        raise _refuse(f"wrong number of arguments for {name}", "wrong number of arguments")


def read_command(tokens: list[Token], stage: Stage, config: Config, *, tls_active: bool) -> Event:
    """The event for one command's tokens, or CommandError."""
    kind = command_kind(tokens, stage)
    args = tokens[1:]
    if kind is Authenticate:
        _arity(kind, args, 1, 2)
        mechanism = _string(args[0], "mechanism").decode("ascii", "replace").upper()
        if not SASL_MECHANISM.fullmatch(mechanism):
            raise _refuse("not a SASL mechanism name", "unknown mechanism")
        initial = _decode(_string(args[1], "initial response")) if len(args) == 2 else None
        return Authenticate(mechanism=mechanism, initial_response=initial)
    if kind is HaveSpace:
        _arity(kind, args, 2, 2)
        return HaveSpace(name=_name(args[0], config), size=_number(args[1]))
    if kind is PutScript:
        _arity(kind, args, 2, 2)
        return PutScript(name=_name(args[0], config), content=_string(args[1], "script"))
    if kind is CheckScript:
        _arity(kind, args, 1, 1)
        return CheckScript(content=_string(args[0], "script"))
    if kind is SetActive:
        _arity(kind, args, 1, 1)
        return SetActive(name=_name(args[0], config, empty=True))
    if kind is GetScript or kind is DeleteScript:
        _arity(kind, args, 1, 1)
        return kind(name=_name(args[0], config))
    if kind is RenameScript:
        _arity(kind, args, 2, 2)
        return RenameScript(old_name=_name(args[0], config), new_name=_name(args[1], config))
    if kind is Noop:
        _arity(kind, args, 0, 1)
        tag = _utf8(_string(args[0], "tag"), "tag") if args else None
        if tag is not None and "\0" in tag:
            raise _refuse("NUL in a tag", "invalid tag")
        return Noop(tag=tag)
    _arity(kind, args, 0, 0)
    if kind is StartTls and tls_active:
        raise _refuse("STARTTLS under TLS", "already using TLS")
    return kind()


def read_sasl(tokens: list[Token]) -> Event:
    """`SaslCancel` for "*", else `SaslResponse` with the decoded data (RFC 5804 §2.1:
    each client response is a string holding base64)."""
    if len(tokens) != 1 or type(tokens[0]) is not String:
        raise _refuse("a SASL response is one string", "syntax error in a SASL response")
    if tokens[0] == b"*":
        return SaslCancel()
    return SaslResponse(data=_decode(bytes(tokens[0])))
