"""Serialising server responses: status lines, AUTH challenges and multi-line bodies.

Status lines (RFC 1939 §3): "+OK" or "-ERR", then a space and the text when there is
any; an RFC 2449 §8 response code goes first, in brackets. RFC 2449 §4 caps a response
line at 512 octets, CRLF included.

Challenges (RFC 5034 §4): "+ " and the base64 of the challenge, "+ " alone when empty.

Multi-line bodies (RFC 1939 §3): every line that starts with "." gets one more, and the
body ends with "." CRLF on a line of its own. `DotStuffer` does this in bulk, one
`replace` per chunk, never line by line. Chunks may split a line anywhere, even between
CR and LF, so the stuffer keeps the last two octets already written and runs the search
over them plus the new chunk: a match needs three octets, so it always has its dot in the
new chunk, and the insertion lands there. The same window checks that every CR and LF is
part of a CRLF: a bare one would let a client that splits lines differently see a "."
line, or count octets differently from the sizes LIST reported, so it is the
application's bug (`LocalProtocolError`), not something to repair silently. A body that
does not end with CRLF gets one before the ".", as RFC 1939 §3 requires the terminator to
be a line of its own.

Checks on what the application says (RFC 1939 §5, §7; RFC 2449 §5): the listings clients
parse (`check_scan_listing`) and the CAPA body (`read_capabilities`), which the connection
reads back; `capability_listing` builds a CAPA body for what this core supports.
"""

from __future__ import annotations

import re

from sansmail._errors import LocalProtocolError
from sansmail.pop3._events import Challenge, Err, Event, List, Ok, Stat, Uidl
from sansmail.sasl import encode_base64

__all__ = [
    "MAX_CAPA_LISTING",
    "MAX_RESPONSE_LINE",
    "DotStuffer",
    "capability_listing",
    "check_scan_listing",
    "read_capabilities",
    "write_challenge",
    "write_response",
]

#: RFC 2449 §4: "Responses ... MUST NOT exceed 512 octets, including the terminating CRLF".
MAX_RESPONSE_LINE = 512


def write_response(response: Ok | Err) -> bytes:
    """The status line of `response`."""
    status = "+OK" if type(response) is Ok else "-ERR"
    words = [status]
    if response.code is not None:
        words.append(f"[{response.code}]")
    if response.text:
        words.append(response.text)
    data = (" ".join(words) + "\r\n").encode("ascii")
    if len(data) > MAX_RESPONSE_LINE:
        raise LocalProtocolError(f"response line over {MAX_RESPONSE_LINE} octets (RFC 2449 §4)")
    return data


# RFC 1939 §5: a scan listing is "+OK" SP messages SP octets, and a LIST answer for one
# message "+OK" SP msg SP octets; anything after is ignored by clients. §7: a UIDL answer
# for one message is msg SP unique-id, 1 to 70 characters in 0x21-0x7E.
_STAT = re.compile(r"[0-9]+ [0-9]+(?: .*)?")
_LIST = re.compile(r"(?P<msg>[0-9]+) [0-9]+(?: .*)?")
_UIDL = re.compile(r"(?P<msg>[0-9]+) [!-~]{1,70}")


def check_scan_listing(command: Event, response: Ok) -> None:
    """Refuse a +OK whose text clients would misread: the drop listing of STAT, the scan
    listing of LIST msg, the unique-id listing of UIDL msg (RFC 1939 §5, §7). The code
    must be absent there, since the numbers come right after "+OK"."""
    msg = None
    if isinstance(command, Stat):
        pattern = _STAT
    elif isinstance(command, List | Uidl) and command.msg is not None:
        pattern = _LIST if isinstance(command, List) else _UIDL
        msg = command.msg
    else:
        return
    match = pattern.fullmatch(response.text)
    if response.code is not None or match is None:
        raise LocalProtocolError(f"not a valid answer to {command!r}: {response.text!r}")
    if msg is not None and int(match["msg"]) != msg:
        raise LocalProtocolError(f"answer to {command!r} names message {match['msg']}")


#: The longest CAPA listing the connection reads back: a real one is a few hundred octets.
MAX_CAPA_LISTING = 4096

# RFC 2449 §5: capa-tag = 1*cchar; cchar = %x21-2D / %x2F-7F (no "." and no space).
_CAPA_TAG = re.compile(r"[!-\-/-~]+")


def read_capabilities(listing: bytes) -> dict[str, str]:
    """The capabilities a CAPA body lists: tag (upper case) -> parameters (RFC 2449 §5).
    Raises LocalProtocolError for a line that is not "tag *(SP param)"."""
    capabilities: dict[str, str] = {}
    for line in listing.decode("ascii", "replace").split("\r\n")[:-1]:
        tag, _, params = line.partition(" ")
        if not _CAPA_TAG.fullmatch(tag):
            raise LocalProtocolError(f"not a capability line: {line!r}")
        capabilities[tag.upper()] = params
    return capabilities


def capability_listing(
    *,
    sasl: tuple[str, ...] = (),
    user: bool = True,
    stls: bool = False,
    implementation: str | None = None,
) -> bytes:
    """A CAPA body for what the sansmail core supports (RFC 2449 §6, RFC 2595 §4,
    RFC 5034 §3): TOP, UIDL, RESP-CODES and PIPELINING always; USER when plaintext
    logins are allowed now; SASL and AUTH-RESP-CODE when mechanisms are offered; STLS
    before TLS; IMPLEMENTATION when named."""
    lines = ["TOP", "UIDL", "RESP-CODES", "PIPELINING"]
    if user:
        lines.append("USER")
    if sasl:
        lines += ["SASL " + " ".join(sasl), "AUTH-RESP-CODE"]
    if stls:
        lines.append("STLS")
    if implementation:
        lines.append(f"IMPLEMENTATION {implementation}")
    return "".join(line + "\r\n" for line in lines).encode("ascii")


def write_challenge(challenge: Challenge) -> bytes:
    """ "+ " and the base64 of the challenge data (RFC 5034 §4)."""
    return b"+ " + encode_base64(challenge.data) + b"\r\n"


class DotStuffer:
    """Byte-stuffs one multi-line body, chunk by chunk."""

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        # The last two octets written. A body starts at the start of a line: as if
        # after a CRLF.
        self._tail = b"\r\n"

    def stuff(self, data: bytes) -> bytes:
        """`data` with a "." added to every line that starts with one."""
        if not data:
            return b""
        tail = self._tail
        window = tail + data
        # From the tail's last octet on: a CR there pairs with an LF at data[0].
        rest = window[len(tail) - 1 :]
        pairs = rest.count(b"\r\n")
        pending_cr = 1 if window.endswith(b"\r") else 0
        if data.count(b"\n") != pairs or rest.count(b"\r") - pending_cr != pairs:
            raise LocalProtocolError("multi-line data with a CR or LF outside a CRLF")
        self._tail = window[-2:]
        return window.replace(b"\r\n.", b"\r\n..")[len(tail) :]

    def end(self) -> bytes:
        """The terminating "." line, after a CRLF if the body did not end with one."""
        if self._tail == b"\r\n":
            return b".\r\n"
        if self._tail.endswith(b"\r"):
            raise LocalProtocolError("multi-line data ends with a bare CR")
        return b"\r\n.\r\n"
