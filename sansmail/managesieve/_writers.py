"""Serialising server responses: status lines, capability listings, script listings,
scripts and SASL challenges.

Strings (RFC 5804 §4): a value goes out quoted when it can ("..." with " and \\
escaped, at most 1024 octets, no CR, LF or NUL) and as a literal "{n}" CRLF octets
otherwise (literal-s2c has no "+"). Response text that spans lines, as CHECKSCRIPT's and
PUTSCRIPT's error reports do, is therefore a literal, which every client reads.

Status lines (§4 response-oknobye): "OK", "NO" or "BYE", then " (" code [SP argument]
")" when there is a code, then SP and the text when there is any. The TAG and SASL
arguments are strings, REFERRAL's a bare sieve URL (§1.3).

Capability listings (§1.7): one `"NAME" "value"` line per capability, then OK; LISTSCRIPTS
answers (§2.7): one name per line, "ACTIVE" after the active one, then OK; GETSCRIPT
(§2.9): the script as a literal, CRLF, then OK. Challenges (§2.1): the base64 of the
data as a string, alone on its line.
"""

from __future__ import annotations

from sansmail.managesieve._events import (
    Bye,
    Capabilities,
    Challenge,
    No,
    Ok,
    Script,
    ScriptList,
)
from sansmail.sasl import encode_base64

__all__ = [
    "MAX_QUOTED",
    "capability_lines",
    "write_capabilities",
    "write_challenge",
    "write_response",
    "write_script",
    "write_script_list",
    "write_string",
]

#: RFC 5804 §4 (errata 2655): "limited to 1024 octets between the <">s".
MAX_QUOTED = 1024


def write_string(value: str | bytes) -> bytes:
    """`value` as a ManageSieve string: quoted if it can be, a literal otherwise."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    if len(data) <= MAX_QUOTED and b"\r" not in data and b"\n" not in data and b"\0" not in data:
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


def write_response(response: Ok | No | Bye) -> bytes:
    """The status line of `response`, CRLF included."""
    status = b"OK" if type(response) is Ok else b"NO" if type(response) is No else b"BYE"
    parts = [status]
    if response.code is not None:
        code = response.code.encode("ascii")
        argument = response.code_argument
        if argument is not None:
            if response.code == "REFERRAL":
                code += b" " + argument.encode("ascii")
            else:
                code += b" " + write_string(argument)
        parts.append(b"(" + code + b")")
    if response.text:
        parts.append(write_string(response.text))
    return b" ".join(parts) + b"\r\n"


def capability_lines(capabilities: Capabilities) -> list[tuple[str, str | None]]:
    """The (name, value) pairs of a listing, in the order RFC 5804 §1.7 lists them."""
    lines: list[tuple[str, str | None]] = [("IMPLEMENTATION", capabilities.implementation)]
    lines.append(("SASL", " ".join(capabilities.sasl)))
    lines.append(("SIEVE", " ".join(capabilities.sieve)))
    if capabilities.starttls:
        lines.append(("STARTTLS", None))
    if capabilities.max_redirects is not None:
        lines.append(("MAXREDIRECTS", str(capabilities.max_redirects)))
    if capabilities.notify:
        lines.append(("NOTIFY", " ".join(capabilities.notify)))
    if capabilities.language is not None:
        lines.append(("LANGUAGE", capabilities.language))
    if capabilities.owner is not None:
        lines.append(("OWNER", capabilities.owner))
    lines.append(("VERSION", capabilities.version))
    return lines


def write_capabilities(capabilities: Capabilities) -> bytes:
    """The capability listing and its OK."""
    out = bytearray()
    for name, value in capability_lines(capabilities):
        out += write_string(name)
        if value is not None:
            out += b" " + write_string(value)
        out += b"\r\n"
    out += write_response(Ok(text=capabilities.text))
    return bytes(out)


def write_script_list(listing: ScriptList) -> bytes:
    """The LISTSCRIPTS answer and its OK."""
    out = bytearray()
    for name in listing.names:
        out += write_string(name)
        if name == listing.active:
            out += b" ACTIVE"
        out += b"\r\n"
    out += b"OK\r\n"
    return bytes(out)


def write_script(script: Script) -> bytes:
    """The GETSCRIPT answer: the script as a literal, CRLF, OK."""
    return b"{%d}\r\n" % len(script.content) + script.content + b"\r\nOK\r\n"


def write_challenge(challenge: Challenge) -> bytes:
    """A SASL challenge: its base64, as a quoted string (a literal if long)."""
    return write_string(encode_base64(challenge.data)) + b"\r\n"
