"""Turning a client line into an event: POP3 command lines and AUTH exchange lines.

The line buffer has already checked and removed the CRLF. `read_command` checks, in this
order: the keyword (RFC 1939 §3: case-insensitive, three or four characters); whether the
current state takes it (`_state.ALLOWED`); then the arguments, separated by single
spaces. Message numbers are positive decimal integers (RFC 1939 §3: "message-number"
starting at 1); whether such a message exists, or is marked deleted, is the maildrop's
business, not the core's. Every refusal raises `CommandError` with the -ERR to send.

`read_auth_response` reads a line of an AUTH exchange (RFC 5034 §4): "*" cancels, anything
else must be base64, decoded strictly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from sansmail.pop3._events import (
    SASL_MECHANISM,
    Auth,
    AuthCancel,
    AuthResponse,
    Capa,
    Dele,
    Err,
    Event,
    List,
    Noop,
    Pass,
    Quit,
    Retr,
    Rset,
    Stat,
    Stls,
    Top,
    Uidl,
    User,
)
from sansmail.pop3._state import ALLOWED, Stage
from sansmail.sasl import RemoteSASLError, decode_base64_strict

__all__ = ["CommandError", "read_auth_response", "read_command"]

# Longer numbers cannot name a message and would only cost an int() of any size.
_MAX_DIGITS = 10


class CommandError(Exception):
    """A command line refused; `reply` is the -ERR to send."""

    def __init__(self, reason: str, reply: Err) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply


def _refuse(reason: str, text: str | None = None) -> CommandError:
    return CommandError(reason, Err(text=text or reason))


def _number(word: str, *, zero: bool = False) -> int:
    if not (word.isascii() and word.isdigit()) or len(word) > _MAX_DIGITS:
        raise _refuse(f"not a number: {word[:20]!r}", "invalid number")
    value = int(word)
    if value == 0 and not zero:
        raise _refuse("message numbers start at 1", "no such message")
    return value


_CONTROLS: Final = frozenset(range(0x20)) | {0x7F}


def _text(argument: bytes) -> str:
    # NUL would end the string in C-based password checkers and log readers.
    if b"\0" in argument:
        raise _refuse("NUL in an argument", "invalid argument")
    # RFC 1939 §3: arguments are printable (RFC 6856 adds UTF-8, never controls); a control
    # character would reach user names, the log and the echo of a reply.
    if not _CONTROLS.isdisjoint(argument):
        raise _refuse("control character in an argument", "invalid argument")
    try:
        return argument.decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse("argument is not UTF-8", "invalid argument") from None


def _no_args(kind: type[Event]) -> Callable[[list[str]], Event]:
    def read(args: list[str]) -> Event:
        if args:
            raise _refuse(f"{kind.__name__.upper()} takes no argument", "no argument expected")
        return kind()

    return read


def _one_number(kind: type[Retr] | type[Dele]) -> Callable[[list[str]], Event]:
    def read(args: list[str]) -> Event:
        if len(args) != 1:
            raise _refuse(f"{kind.__name__.upper()} takes a message number", "syntax: msg")
        return kind(msg=_number(args[0]))

    return read


def _optional_number(kind: type[List] | type[Uidl]) -> Callable[[list[str]], Event]:
    def read(args: list[str]) -> Event:
        if len(args) > 1:
            raise _refuse(f"{kind.__name__.upper()} takes at most one number", "syntax: [msg]")
        return kind(msg=_number(args[0]) if args else None)

    return read


def _top(args: list[str]) -> Event:
    # RFC 1939 §7: "TOP msg n", n a non-negative number of lines.
    if len(args) != 2:
        raise _refuse("TOP takes a message number and a line count", "syntax: msg n")
    return Top(msg=_number(args[0]), lines=_number(args[1], zero=True))


# Keyword -> (event type, argument reader). USER, PASS and AUTH are read from the raw line.
_SIMPLE: dict[bytes, tuple[type[Event], Callable[[list[str]], Event]]] = {
    b"STAT": (Stat, _no_args(Stat)),
    b"NOOP": (Noop, _no_args(Noop)),
    b"RSET": (Rset, _no_args(Rset)),
    b"QUIT": (Quit, _no_args(Quit)),
    b"CAPA": (Capa, _no_args(Capa)),
    b"STLS": (Stls, _no_args(Stls)),
    b"LIST": (List, _optional_number(List)),
    b"UIDL": (Uidl, _optional_number(Uidl)),
    b"RETR": (Retr, _one_number(Retr)),
    b"DELE": (Dele, _one_number(Dele)),
    b"TOP": (Top, _top),
}

_KINDS: dict[bytes, type[Event]] = {
    **{keyword: kind for keyword, (kind, _) in _SIMPLE.items()},
    b"USER": User,
    b"PASS": Pass,
    b"AUTH": Auth,
}


def read_command(line: bytes, stage: Stage, *, user_accepted: bool, tls_active: bool) -> Event:
    """The event for one command line, or CommandError.

    `user_accepted`: the previous command was a USER answered +OK (RFC 1939 §7: PASS
    only then). `tls_active`: STLS has already been done (RFC 2595 §4: not twice).
    """
    keyword, space, rest = line.partition(b" ")
    kind = _KINDS.get(keyword.upper())
    if kind is None:
        shown = keyword[:8].decode("ascii", "replace")
        raise _refuse(f"unknown command {shown!r}", "unknown command")
    if (stage, kind) not in ALLOWED:
        raise _refuse(
            f"{kind.__name__.upper()} not valid in the {stage.value.upper()} state",
            "command not valid in this state",
        )
    if kind is User:
        # RFC 1939 §7: "USER name"; a name with a space in it names no mailbox we serve.
        if not space or not rest or b" " in rest:
            raise _refuse("USER takes one name", "syntax: USER name")
        return User(name=_text(rest))
    if kind is Pass:
        if not user_accepted:
            raise _refuse("PASS without an accepted USER", "USER first")
        # RFC 1939 §7: the argument is the rest of the line; spaces belong to it.
        if not space:
            raise _refuse("PASS takes a password", "syntax: PASS string")
        return Pass(password=_text(rest))
    if kind is Auth:
        return _read_auth(rest if space else b"")
    if kind is Stls and tls_active:
        raise _refuse("STLS under TLS", "already using TLS")
    args = rest.decode("ascii", "replace").split(" ") if space else []
    return _SIMPLE[keyword.upper()][1](args)


def _read_auth(argument: bytes) -> Auth:
    # RFC 5034 §4: "AUTH" SP mechanism [SP initial-response]; "=" is an empty response.
    words = argument.split(b" ")
    if not argument or len(words) > 2:
        raise _refuse("AUTH takes a mechanism and an optional response", "syntax: mech [resp]")
    mechanism = words[0].decode("ascii", "replace").upper()
    if not SASL_MECHANISM.fullmatch(mechanism):
        raise _refuse("not a SASL mechanism name", "unrecognized authentication type")
    initial: bytes | None = None
    if len(words) == 2:
        initial = b"" if words[1] == b"=" else _decode(words[1])
    return Auth(mechanism=mechanism, initial_response=initial)


def _decode(data: bytes) -> bytes:
    try:
        return decode_base64_strict(data)
    except RemoteSASLError:
        # RFC 5034 §4: a response that is not base64 fails the exchange with -ERR.
        raise _refuse("AUTH response is not base64", "invalid base64") from None


def read_auth_response(line: bytes) -> Event:
    """`AuthCancel` for "*", else `AuthResponse` with the decoded data (RFC 5034 §4)."""
    if line == b"*":
        return AuthCancel()
    return AuthResponse(data=_decode(line))
