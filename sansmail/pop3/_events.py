"""The POP3 event vocabulary, used in both directions.

A server application receives command events (`User`, `Retr`, `Auth` ...) and sends
response events; a client application would do the reverse. Events are frozen,
keyword-only and validated on construction, so no event can serialise to a malformed
line.

Responses (RFC 1939 §3): `Ok` and `Err` are the "+OK" / "-ERR" status line, with an
optional RFC 2449 §8 response code (`Err(text=..., code="IN-USE")` is
"-ERR [IN-USE] ..."). A multi-line answer (RFC 1939 §3: LIST and UIDL without argument,
RETR, TOP; RFC 2449 §5: CAPA) is `Ok`, then any number of `MultilineData` chunks holding
the raw content with CRLF line ends, then `EndOfMultiline`; the writer does the
byte-stuffing and the final ".". `Challenge` is an AUTH challenge ("+ " base64, RFC 5034
§4); its data travels decoded, as do the client's `AuthResponse` data.

Server-side only, and never sent: `InvalidCommand` is a command the core refused (unknown,
malformed, not valid in this state, a bad AUTH response); it carries the `Err` to send
(`reply_hint`). `ConnectionClosed` means the peer closed its end.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

__all__ = [
    "Auth",
    "AuthCancel",
    "AuthResponse",
    "Capa",
    "Challenge",
    "ConnectionClosed",
    "Dele",
    "EndOfMultiline",
    "Err",
    "Event",
    "InvalidCommand",
    "List",
    "MultilineData",
    "Noop",
    "Ok",
    "Pass",
    "Quit",
    "Response",
    "Retr",
    "Rset",
    "Stat",
    "Stls",
    "Top",
    "Uidl",
    "User",
]


class Event:
    """Base class of every POP3 event. Do not subclass outside this module."""

    __slots__ = ()


def _no_controls(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"{attribute.name} must not contain CR, LF or NUL: {value!r}")


def _printable_ascii(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    # Response text is ASCII: RFC 6856's UTF8 extension is not implemented.
    if not all(" " <= c <= "~" for c in value):
        raise ValueError(f"{attribute.name} must be printable ASCII: {value!r}")


def _positive(_inst: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    # RFC 1939 §3: message numbers start at 1.
    if type(value) is not int or value < 1:
        raise ValueError(f"{attribute.name} must be a positive integer, not {value!r}")


def _optional_positive(_inst: Any, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None:
        _positive(_inst, attribute, value)


def _nonempty(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    _no_controls(_inst, attribute, value)
    if not value:
        raise ValueError(f"{attribute.name} must not be empty")


# RFC 4422 §3.1: sasl-mech = 1*20mech-char; mech-char = UPPER-ALPHA / DIGIT / "-" / "_".
SASL_MECHANISM = re.compile(r"[A-Z0-9_-]{1,20}")

# RFC 2449 §8: resp-code = "[" resp-level *("/" resp-level) "]";
# resp-level = 1*rchar; rchar = %x21-2E / %x30-5C / %x5E-7F (no "/" and no "]").
RESP_CODE = re.compile(r"[!-.0-\\^-~]+(?:/[!-.0-\\^-~]+)*")


def _upper(value: str) -> str:
    # RFC 5034 §4 compares mechanism names case-insensitively; events hold upper case.
    return value.upper()


def _mechanism_ok(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not SASL_MECHANISM.fullmatch(value):
        raise ValueError(f"{attribute.name} is not a SASL mechanism name: {value!r}")


def _code_ok(_inst: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and not RESP_CODE.fullmatch(value):
        raise ValueError(f"{attribute.name} is not an RFC 2449 response code: {value!r}")


# --- commands (client -> server) ---------------------------------------------------------


@attrs.frozen(kw_only=True)
class User(Event):
    """USER name (RFC 1939 §7)."""

    name: str = attrs.field(validator=_nonempty)


@attrs.frozen(kw_only=True)
class Pass(Event):
    """PASS string (RFC 1939 §7): the rest of the line, spaces included."""

    password: str = attrs.field(validator=_no_controls, repr=False)


@attrs.frozen(kw_only=True)
class Stat(Event):
    """STAT (RFC 1939 §5): answer "+OK count octets"."""


@attrs.frozen(kw_only=True)
class List(Event):
    """LIST [msg] (RFC 1939 §5): multi-line when `msg` is None."""

    msg: int | None = attrs.field(default=None, validator=_optional_positive)


@attrs.frozen(kw_only=True)
class Retr(Event):
    """RETR msg (RFC 1939 §5): multi-line."""

    msg: int = attrs.field(validator=_positive)


@attrs.frozen(kw_only=True)
class Top(Event):
    """TOP msg n (RFC 1939 §7): the header, the blank line and `lines` body lines."""

    msg: int = attrs.field(validator=_positive)
    lines: int = attrs.field(validator=attrs.validators.ge(0))


@attrs.frozen(kw_only=True)
class Dele(Event):
    """DELE msg (RFC 1939 §5)."""

    msg: int = attrs.field(validator=_positive)


@attrs.frozen(kw_only=True)
class Noop(Event):
    """NOOP (RFC 1939 §5)."""


@attrs.frozen(kw_only=True)
class Rset(Event):
    """RSET (RFC 1939 §5): unmark every message marked deleted."""


@attrs.frozen(kw_only=True)
class Quit(Event):
    """QUIT (RFC 1939 §4, §6). In TRANSACTION it starts the UPDATE state: the
    application commits the deletions, then answers."""


@attrs.frozen(kw_only=True)
class Uidl(Event):
    """UIDL [msg] (RFC 1939 §7): multi-line when `msg` is None."""

    msg: int | None = attrs.field(default=None, validator=_optional_positive)


@attrs.frozen(kw_only=True)
class Capa(Event):
    """CAPA (RFC 2449 §5): multi-line; one capability per line."""


@attrs.frozen(kw_only=True)
class Stls(Event):
    """STLS (RFC 2595 §4)."""


@attrs.frozen(kw_only=True)
class Auth(Event):
    """AUTH mechanism [initial-response] (RFC 5034 §4). The mechanism name is upper
    case; `initial_response` is decoded (b"" for "="), None when absent."""

    mechanism: str = attrs.field(converter=_upper, validator=_mechanism_ok)
    initial_response: bytes | None = attrs.field(default=None, repr=False)


@attrs.frozen(kw_only=True)
class AuthResponse(Event):
    """A client line of the AUTH exchange (RFC 5034 §4), base64-decoded."""

    data: bytes = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class AuthCancel(Event):
    """The client's "*": it gives up the AUTH exchange; answer with `Err`."""


@attrs.frozen(kw_only=True)
class InvalidCommand(Event):
    """A command line the core refused; send `reply_hint` (an `Err`) back."""

    line: bytes
    reason: str
    reply_hint: Err


@attrs.frozen(kw_only=True)
class ConnectionClosed(Event):
    """The client closed its end."""


# --- responses (server -> client) ----------------------------------------------------------


@attrs.frozen(kw_only=True)
class Ok(Event):
    """ "+OK [code] text"."""

    text: str = attrs.field(default="", validator=_printable_ascii)
    code: str | None = attrs.field(default=None, validator=_code_ok)


@attrs.frozen(kw_only=True)
class Err(Event):
    """ "-ERR [code] text". Codes: "IN-USE", "LOGIN-DELAY" (RFC 2449 §8), "SYS/TEMP",
    "SYS/PERM", "AUTH" (RFC 3206) ..."""

    text: str = attrs.field(default="", validator=_printable_ascii)
    code: str | None = attrs.field(default=None, validator=_code_ok)


Response = Ok | Err


@attrs.frozen(kw_only=True)
class MultilineData(Event):
    """A piece of a multi-line answer: raw content, CRLF line ends, not byte-stuffed.
    Chunk boundaries carry no meaning (a CRLF may be split between two)."""

    data: bytes = attrs.field(repr=lambda data: f"<{len(data)} octets>")


@attrs.frozen(kw_only=True)
class EndOfMultiline(Event):
    """The end of a multi-line answer: the "." line."""


@attrs.frozen(kw_only=True)
class Challenge(Event):
    """An AUTH challenge, "+ " base64 (RFC 5034 §4); `data` is the decoded challenge."""

    data: bytes = attrs.field(default=b"")
