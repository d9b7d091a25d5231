"""The SMTP event vocabulary, used in both directions.

A client application *sends* command events and *receives* `Reply` events; a server
application receives command events and sends `Reply` events. What one side sends is
exactly what the other side parses (tests wire a client and a server core together to
prove it).

Events are frozen, keyword-only and validated on construction, so an application cannot
build one that would serialise to a malformed line.

Message content travels as `MessageData` chunks between a `Data` (after the 354 reply)
or a `Bdat` command and the closing `EndOfMessage` / `EndOfChunk`. Chunks hold the
message *content*: CRLF line ends, dot-stuffing already removed (server side) or not yet
applied (client side). Their boundaries carry no meaning.

Server-side only, and never sent: `InvalidCommand` and `InvalidMessage` are recoverable
errors the core found in what the client sent. Each carries the `Reply` the RFCs call for
(`reply_hint`); the application normally sends it unchanged. `ConnectionClosed` means the
peer closed its end cleanly.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from sansmail.address import Address

__all__ = [
    "Bdat",
    "ConnectionClosed",
    "Data",
    "EndOfChunk",
    "EndOfMessage",
    "Event",
    "Hello",
    "Help",
    "InvalidCommand",
    "InvalidMessage",
    "Mail",
    "MessageData",
    "Noop",
    "Quit",
    "Rcpt",
    "Reply",
    "Reset",
    "StartTLS",
    "Verify",
]


class Event:
    """Base class of every SMTP event. Do not subclass outside this module."""

    __slots__ = ()


def _no_crlf(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"{attribute.name} must not contain CR, LF or NUL: {value!r}")


def _freeze_params(value: Mapping[str, str | None] | None) -> Mapping[str, str | None]:
    # Parameter keywords are case-insensitive (RFC 5321 §4.1.2 esmtp-keyword); store them
    # upper-cased so `params["SIZE"]` works whatever the client typed.
    if not value:
        return MappingProxyType({})
    return MappingProxyType({k.upper(): v for k, v in value.items()})


def _params_ok(
    _inst: Any, _attribute: attrs.Attribute[Any], value: Mapping[str, str | None]
) -> None:
    for key, val in value.items():
        if not key or not all(c.isascii() and (c.isalnum() or c == "-") for c in key):
            raise ValueError(f"bad ESMTP parameter keyword {key!r}")
        if val is not None and (not val or any(c in val for c in " =\r\n\0")):
            raise ValueError(f"bad value for ESMTP parameter {key}: {val!r}")


@attrs.frozen(kw_only=True)
class Hello(Event):
    """EHLO (extended=True) or HELO (extended=False). `domain` is the argument as sent:
    a domain name or an address literal such as ``[192.0.2.1]``."""

    domain: str = attrs.field(validator=_no_crlf)
    extended: bool = True


@attrs.frozen(kw_only=True)
class StartTLS(Event):
    """STARTTLS (RFC 3207)."""


@attrs.frozen(kw_only=True)
class Mail(Event):
    """MAIL FROM. `reverse_path` is None for the null path ``<>`` (bounces)."""

    reverse_path: Address | None
    parameters: Mapping[str, str | None] = attrs.field(
        factory=dict, converter=_freeze_params, validator=_params_ok
    )

    @property
    def size(self) -> int | None:
        """The SIZE= declaration (RFC 1870), if any and well formed."""
        value = self.parameters.get("SIZE")
        return int(value) if value is not None and value.isdigit() else None

    @property
    def body(self) -> str | None:
        """BODY=7BIT or BODY=8BITMIME (RFC 6152), upper-cased."""
        value = self.parameters.get("BODY")
        return value.upper() if value is not None else None

    @property
    def smtputf8(self) -> bool:
        """Whether the SMTPUTF8 parameter (RFC 6531) was given."""
        return "SMTPUTF8" in self.parameters


@attrs.frozen(kw_only=True)
class Rcpt(Event):
    """RCPT TO. A bare ``<Postmaster>`` arrives as an Address with an empty domain."""

    forward_path: Address
    parameters: Mapping[str, str | None] = attrs.field(
        factory=dict, converter=_freeze_params, validator=_params_ok
    )


@attrs.frozen(kw_only=True)
class Data(Event):
    """DATA. Content follows only after the server's 354 reply."""


@attrs.frozen(kw_only=True)
class Bdat(Event):
    """BDAT size [LAST] (RFC 3030). Exactly `size` octets of content follow at once."""

    size: int = attrs.field(validator=attrs.validators.ge(0))
    last: bool = False


@attrs.frozen(kw_only=True)
class MessageData(Event):
    """A piece of message content (unstuffed, CRLF line ends)."""

    data: bytes


@attrs.frozen(kw_only=True)
class EndOfMessage(Event):
    """The content is complete: CRLF "." CRLF after DATA, or the end of BDAT ... LAST.
    The server application now owes the final reply for the transaction."""


@attrs.frozen(kw_only=True)
class EndOfChunk(Event):
    """A BDAT chunk without LAST has been read completely; the server owes its reply."""


@attrs.frozen(kw_only=True)
class Reset(Event):
    """RSET."""


@attrs.frozen(kw_only=True)
class Noop(Event):
    """NOOP (its optional argument is ignored, RFC 5321 §4.1.1.9)."""

    argument: str = attrs.field(default="", validator=_no_crlf)


@attrs.frozen(kw_only=True)
class Verify(Event):
    """VRFY. Servers that do not disclose users answer 252 (RFC 5321 §3.5.3)."""

    argument: str = attrs.field(validator=_no_crlf)


@attrs.frozen(kw_only=True)
class Help(Event):
    """HELP [topic]."""

    topic: str = attrs.field(default="", validator=_no_crlf)


@attrs.frozen(kw_only=True)
class Quit(Event):
    """QUIT. After the 221 reply the server closes; any later byte is an error."""


@attrs.frozen(kw_only=True)
class InvalidCommand(Event):
    """A command line the server core refused (unknown verb, syntax, bad sequence, bad
    parameter, too many recipients ...). Never sent; answer with `reply_hint`."""

    line: bytes
    reason: str
    reply_hint: Reply


@attrs.frozen(kw_only=True)
class InvalidMessage(Event):
    """Message content that was read to its end but cannot be accepted (over the size
    limit, a bare CR, ...). Replaces the EndOfMessage/EndOfChunk the transaction would
    have ended with; the transaction is over. Any MessageData already delivered for it must
    be thrown away. Answer with `reply_hint`."""

    reason: str
    reply_hint: Reply


@attrs.frozen(kw_only=True)
class ConnectionClosed(Event):
    """The peer closed its side of the connection."""


def _lines(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _lines_ok(_inst: Any, _attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if not value:
        raise ValueError("a reply needs at least one line (it may be empty text)")
    for line in value:
        if "\r" in line or "\n" in line or "\0" in line:
            raise ValueError(f"reply text must not contain CR, LF or NUL: {line!r}")


def _enhanced_ok(inst: Reply, _attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is None:
        return
    parts = value.split(".")
    # RFC 3463 §2: class "." subject "." detail, class 2/4/5, 1-3 and 1-3 digits.
    if (
        len(parts) != 3
        or parts[0] not in ("2", "4", "5")
        or not all(p.isdigit() and p.isascii() and 1 <= len(p) <= 3 for p in parts[1:])
    ):
        raise ValueError(f"bad enhanced status code {value!r}")
    if int(parts[0]) != inst.code // 100:
        raise ValueError(f"enhanced code {value} does not match reply class {inst.code}")


@attrs.frozen(kw_only=True)
class Reply(Event):
    """A server reply: `code` (200..599), one or more `lines` of text, and an optional
    RFC 3463 enhanced status code (``"2.1.5"``).

    The writer prefixes `enhanced` to every line when the session advertised
    ENHANCEDSTATUSCODES, except on the greeting and the EHLO/HELO reply (RFC 2034 §3);
    a reply without one gets the class default (``"2.0.0"``, ``"4.0.0"``, ``"5.0.0"``).
    """

    code: int = attrs.field(validator=[attrs.validators.ge(200), attrs.validators.le(599)])
    lines: tuple[str, ...] = attrs.field(converter=_lines, validator=_lines_ok)
    enhanced: str | None = attrs.field(default=None, validator=_enhanced_ok)

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    @property
    def text(self) -> str:
        return "\n".join(self.lines)
