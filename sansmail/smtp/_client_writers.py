"""Serialising client commands and message content, exactly as the server readers parse them.

Commands. `write_command` turns one command event into its line. Where the server's
readers have a rule, this module uses the same one (the ESMTP keyword and value patterns,
the parameter-to-extension map, `Address`'s own quoting), and it refuses, with
`LocalProtocolError`, anything the server core would read back differently or refuse as
malformed: an argument with leading or trailing spaces (the reader strips them), non-ASCII
octets where RFC 6531 does not allow them, a line over RFC 5321 §4.5.3.1.4's 512 octets
(MAIL and RCPT may use the parameter allowance of `Config`, as extensions let them; AUTH
may not: RFC 4954 §4 says to leave out an initial response that would make the line too
long, and send it after the server's empty 334 instead).

Content after DATA (`DataWriter`). RFC 5321 §4.5.2: a line that starts with "." gets one
more; §4.1.1.4: the content ends with CRLF "." CRLF, and a client whose content does not
end in CRLF adds one. Content must use CRLF line ends (§2.3.8); a bare LF is turned into
CRLF, as sloppy local mail often has them, but a bare CR is refused: there is no telling
what it meant, and it is the raw material of SMTP smuggling. Chunks may split a CRLF: a
trailing CR is held back until the next chunk shows whether an LF follows.

Content after BDAT (`check_chunk`). RFC 3030 §2: the octets go as they are, no stuffing
and no end marker, and their count is declared beforehand, so nothing can be normalised:
a bare CR or LF is refused, and a piece of content may not end in the middle of a CRLF
(its CR could turn out bare after it has left).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from sansmail._errors import LocalProtocolError
from sansmail.sasl import encode_base64
from sansmail.smtp._config import COMMAND_ALLOWANCE
from sansmail.smtp._events import (
    Auth,
    AuthCancel,
    AuthResponse,
    Bdat,
    Data,
    Event,
    Hello,
    Help,
    Mail,
    Noop,
    Quit,
    Rcpt,
    Reset,
    StartTLS,
    Verify,
)
from sansmail.smtp._readers import _ESMTP_KEYWORD, _ESMTP_VALUE

__all__ = [
    "MAX_AUTH_RESPONSE",
    "MAX_COMMAND_LINE",
    "DataWriter",
    "check_chunk",
    "encode_xtext",
    "write_command",
]

#: RFC 5321 §4.5.3.1.4: a command line is at most 512 octets, CRLF included.
MAX_COMMAND_LINE: Final = 512
#: MAIL and RCPT lines may grow by what their parameters need (see `Config`).
_MAX_ENVELOPE_LINE: Final = MAX_COMMAND_LINE + COMMAND_ALLOWANCE
#: RFC 4954 §4: a server must accept responses of 12288 octets of base64.
MAX_AUTH_RESPONSE: Final = 12288

_FIXED: Final[Mapping[type[Event], bytes]] = {
    StartTLS: b"STARTTLS\r\n",
    Data: b"DATA\r\n",
    Reset: b"RSET\r\n",
    Quit: b"QUIT\r\n",
    AuthCancel: b"*\r\n",
}


def encode_xtext(data: bytes) -> str:
    """RFC 3461 §4 xtext of `data`: "+", "=", controls, space and non-ASCII as "+XX"."""
    return "".join(
        chr(byte) if 0x21 <= byte <= 0x7E and byte not in (0x2B, 0x3D) else f"+{byte:02X}"
        for byte in data
    )


def _argument(value: str, what: str, *, required: bool) -> str:
    # The server strips the spaces around an argument: they would not read back.
    if value != value.strip(" ") or (required and not value):
        raise LocalProtocolError(f"{what} must be non-empty and without outer spaces: {value!r}")
    return value


def _parameters(parameters: Mapping[str, str | None]) -> str:
    out = []
    for key, value in parameters.items():
        # RFC 5321 §4.1.2 esmtp-keyword / esmtp-value, the patterns the reader applies.
        if not _ESMTP_KEYWORD.fullmatch(key):
            raise LocalProtocolError(f"bad ESMTP parameter keyword {key!r}")
        if value is None:
            out.append(f" {key}")
        elif _ESMTP_VALUE.fullmatch(value):
            out.append(f" {key}={value}")
        else:
            raise LocalProtocolError(f"bad value for ESMTP parameter {key}: {value!r}")
    return "".join(out)


def _line(event: Event) -> str:
    if isinstance(event, Mail):
        sender = event.reverse_path
        if sender is not None and not sender.domain:
            # RFC 5321 §4.1.1.3: the bare <Postmaster> is a recipient only.
            raise LocalProtocolError("MAIL FROM needs a domain (or the null path)")
        path = "" if sender is None else str(sender)
        return f"MAIL FROM:<{path}>{_parameters(event.parameters)}"
    if isinstance(event, Rcpt):
        return f"RCPT TO:<{event.forward_path}>{_parameters(event.parameters)}"
    if isinstance(event, Hello):
        verb = "EHLO" if event.extended else "HELO"
        return f"{verb} {_argument(event.domain, 'the EHLO/HELO domain', required=True)}"
    if isinstance(event, Auth):
        if event.initial_response is None:
            return f"AUTH {event.mechanism}"
        # RFC 4954 §4: "=" is an initial response that is present but empty.
        response = encode_base64(event.initial_response).decode("ascii") or "="
        return f"AUTH {event.mechanism} {response}"
    if isinstance(event, AuthResponse):
        return encode_base64(event.data).decode("ascii")
    if isinstance(event, Bdat):
        return f"BDAT {event.size} LAST" if event.last else f"BDAT {event.size}"
    if isinstance(event, Verify):
        return f"VRFY {_argument(event.argument, 'the VRFY argument', required=True)}"
    if isinstance(event, Noop):
        argument = _argument(event.argument, "the NOOP argument", required=False)
        return f"NOOP {argument}" if argument else "NOOP"
    if isinstance(event, Help):
        topic = _argument(event.topic, "the HELP topic", required=False)
        return f"HELP {topic}" if topic else "HELP"
    raise LocalProtocolError(f"{type(event).__name__} is not a command a client sends")


def write_command(event: Event, *, utf8: bool) -> bytes:
    """The line for command `event`, CRLF included.

    `utf8`: whether RFC 6531 lets this command carry non-ASCII text now (MAIL with the
    SMTPUTF8 parameter, RCPT in such a transaction, VRFY to an SMTPUTF8 server). Raises
    LocalProtocolError for a line the server would not read back as `event`."""
    fixed = _FIXED.get(type(event))
    if fixed is not None:
        return fixed
    text = _line(event)
    if text.isascii():
        data = text.encode("ascii") + b"\r\n"
    elif utf8:
        data = text.encode("utf-8") + b"\r\n"
    else:
        raise LocalProtocolError(f"non-ASCII text without SMTPUTF8: {text[:60]!r}")
    if isinstance(event, AuthResponse):
        limit = MAX_AUTH_RESPONSE + 2
    elif isinstance(event, Mail | Rcpt):
        limit = _MAX_ENVELOPE_LINE
    else:
        limit = MAX_COMMAND_LINE
    if len(data) > limit:
        hint = " (send the initial response after the 334)" if isinstance(event, Auth) else ""
        raise LocalProtocolError(f"{type(event).__name__} line over {limit} octets{hint}")
    return data


class DataWriter:
    """Dot-stuffs message content after DATA, chunk by chunk (see the module docstring)."""

    __slots__ = ("_cr", "_line_start")

    def __init__(self) -> None:
        # The DATA line's CRLF makes the content start at the start of a line.
        self._line_start = True
        self._cr = False  # a CR held back from the previous chunk

    def feed(self, data: bytes) -> bytes:
        """The wire form of the next piece of content (possibly empty)."""
        if self._cr:
            data = b"\r" + data
            self._cr = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self._cr = True
        crlf = data.count(b"\r\n")
        if data.count(b"\r") != crlf:
            raise LocalProtocolError("bare CR in message content (RFC 5321 §2.3.8)")
        if data.count(b"\n") != crlf:
            data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if not data:
            return b""
        # RFC 5321 §4.5.2: every line that starts with "." gets one more.
        data = data.replace(b"\r\n.", b"\r\n..")
        if self._line_start and data.startswith(b"."):
            data = b"." + data
        self._line_start = data.endswith(b"\r\n")
        return data

    def finish(self) -> bytes:
        """The end of the content: a CRLF if the content lacks one, then "." CRLF."""
        if self._cr:
            raise LocalProtocolError("bare CR at the end of the message content")
        return b".\r\n" if self._line_start else b"\r\n.\r\n"


def check_chunk(data: bytes) -> None:
    """Refuse a piece of BDAT content with a bare CR or LF (see the module docstring)."""
    if data.endswith(b"\r"):
        raise LocalProtocolError("BDAT content may not end a piece in the middle of a CRLF")
    crlf = data.count(b"\r\n")
    if data.count(b"\r") != crlf or data.count(b"\n") != crlf:
        raise LocalProtocolError("bare CR or LF in BDAT content (RFC 5321 §2.3.8)")
