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

An AUTH exchange (RFC 4954 §4) is `Auth`, then as many rounds of a 334 challenge
(`Reply.challenge`) and the client's `AuthResponse` as the SASL mechanism needs, ended by
the server's final reply (235, 535 ...) or by the client's `AuthCancel` ("*"), which the
server answers 501. Response data travels decoded: the core does the base64.

Server-side only, and never sent: `InvalidCommand`, `InvalidAuthResponse` and
`InvalidMessage` are recoverable errors the core found in what the client sent. Each
carries the `Reply` the RFCs call for (`reply_hint`); the application normally sends it
unchanged. `ConnectionClosed` means the peer closed its end cleanly.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from sansmail.mail.address import Address, parse_address

__all__ = [
    "Auth",
    "AuthCancel",
    "AuthResponse",
    "Bdat",
    "ConnectionClosed",
    "Data",
    "EndOfChunk",
    "EndOfMessage",
    "Event",
    "Hello",
    "Help",
    "InvalidAuthResponse",
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


# RFC 3461 §4: xtext = *( xchar / hexchar ); xchar is "!".."~" but "+" and "=";
# hexchar is "+" and two upper-case hex digits.
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")


def decode_xtext(value: str) -> bytes:
    """The octets an RFC 3461 §4 xtext stands for. Raises ValueError if it is not xtext."""
    if not _XTEXT.fullmatch(value):
        raise ValueError(f"not xtext: {value!r}")
    if "+" not in value:
        return value.encode("ascii")
    parts = value.split("+")
    out = bytearray(parts[0].encode("ascii"))
    for part in parts[1:]:
        out.append(int(part[:2], 16))
        out += part[2:].encode("ascii")
    return bytes(out)


def read_auth_parameter(value: str | None, *, smtputf8: bool) -> Address | None:
    """The mailbox a MAIL ... AUTH= parameter names, None for ``AUTH=<>``.

    RFC 4954 §5: the value is xtext whose decoded form is an addr-spec or "<>". Raises
    ValueError (an `AddressError` for a bad mailbox) when it is neither."""
    if value is None:
        raise ValueError("AUTH needs a value")
    decoded = decode_xtext(value)
    if decoded == b"<>":
        return None
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("AUTH= mailbox is not UTF-8") from None
    return parse_address(text, smtputf8=smtputf8)


def _mail_params_ok(
    inst: Any, attribute: attrs.Attribute[Any], value: Mapping[str, str | None]
) -> None:
    _params_ok(inst, attribute, value)
    if "AUTH" in value:
        read_auth_parameter(value["AUTH"], smtputf8="SMTPUTF8" in value)


# RFC 4422 §3.1: sasl-mech = 1*20mech-char; mech-char = UPPER-ALPHA / DIGIT / "-" / "_".
# RFC 4954 §4 compares names case-insensitively; events hold the upper-case form.
SASL_MECHANISM = re.compile(r"[A-Z0-9_-]{1,20}")


def _upper(value: str) -> str:
    return value.upper() if isinstance(value, str) else value


def _mechanism_ok(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or not SASL_MECHANISM.fullmatch(value):
        raise ValueError(f"{attribute.name} is not a SASL mechanism name: {value!r}")


def _bytes_ok(_inst: Any, attribute: attrs.Attribute[Any], value: bytes | None) -> None:
    if value is not None and not isinstance(value, bytes):
        raise TypeError(f"{attribute.name} must be bytes")


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
class Auth(Event):
    """AUTH mechanism [initial-response] (RFC 4954 §4).

    `mechanism` is the SASL name in upper case. `initial_response` is the decoded
    initial response: None when the client gave none, b"" when it sent "=" (RFC 4954 §4:
    present but empty). The server answers with a challenge (`Reply.challenge`) or a
    final reply; an initial response to a mechanism that cannot take one gets 501
    (RFC 4954 §4)."""

    mechanism: str = attrs.field(converter=_upper, validator=_mechanism_ok)
    initial_response: bytes | None = attrs.field(default=None, validator=_bytes_ok)


@attrs.frozen(kw_only=True)
class AuthResponse(Event):
    """The client's answer to a 334 challenge, base64-decoded (it may be empty)."""

    data: bytes = attrs.field(validator=_bytes_ok)


@attrs.frozen(kw_only=True)
class AuthCancel(Event):
    """The client cancelled the AUTH exchange with "*"; the server must answer 501
    (RFC 4954 §4)."""


@attrs.frozen(kw_only=True)
class Mail(Event):
    """MAIL FROM. `reverse_path` is None for the null path ``<>`` (bounces)."""

    reverse_path: Address | None
    parameters: Mapping[str, str | None] = attrs.field(
        factory=dict, converter=_freeze_params, validator=_mail_params_ok
    )

    @property
    def auth(self) -> Address | None:
        """The mailbox of the AUTH= parameter (RFC 4954 §5), xtext-decoded; None for
        ``AUTH=<>`` and when the parameter is absent (``"AUTH" in parameters`` tells
        the two apart). Whether to trust it is the application's decision: RFC 4954 §5
        lets a server treat every client as untrusted and ignore it."""
        if "AUTH" not in self.parameters:
            return None
        return read_auth_parameter(self.parameters["AUTH"], smtputf8=self.smtputf8)

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
class InvalidAuthResponse(Event):
    """A line of an AUTH exchange the server core refused: not base64 (RFC 4954 §4:
    501 5.5.2) or too long (RFC 4954 §6: 500 5.5.6). The exchange is over; answer with
    `reply_hint` and drop the SASL mechanism. Never sent."""

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

    @classmethod
    def challenge(cls, data: bytes) -> Reply:
        """A 334 AUTH challenge carrying `data` (RFC 4954 §4): one line of base64, and
        no text at all for an empty challenge (the writer still puts the space after
        the code: "334 ")."""
        return cls(code=334, lines=(binascii.b2a_base64(data, newline=False).decode("ascii"),))

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    @property
    def text(self) -> str:
        return "\n".join(self.lines)
