"""Turning server bytes into `Reply` events: reply lines, multi-line replies, enhanced codes.

RFC 5321 §4.2: a reply is one or more lines; every line but the last has "-" after the
three-digit code, the last has a space (or nothing: "250" alone is a whole reply), and
every line carries the same code. The reader gathers lines across reads and hands out the
`Reply` when the last line is in.

Bounds. RFC 5321 §4.5.3.1.5 caps a reply line at 512 octets, but servers do send longer
ones (long EHLO AUTH lists, verbose rejection texts), and refusing them would fail
deliveries for nothing; so a line may be `MAX_REPLY_LINE` octets (CRLF included) before
it is an error, and a reply may have `MAX_REPLY_LINES` lines. Anything past either, a bare
CR or LF, a line that is not "code[-| ]text", a code outside 200..599 or a code that
changes inside one reply raise `RemoteProtocolError`: the stream can no longer be trusted
to say which reply answers which command.

Text. Reply text is for people and logs. It is decoded as UTF-8 whatever was advertised
(RFC 6531 §3.7.4 lets an SMTPUTF8 server send it; an old server may send Latin-1, which
must not fail a delivery), undecodable octets and NUL becoming U+FFFD.

Enhanced status codes (RFC 2034, RFC 3463). Replies other than the greeting and the
EHLO/HELO reply may start their text with "class.subject.detail" (RFC 2034 §3, §4). The
reader moves such a code into `Reply.enhanced` (taken from the first line, stripped from
every line that carries a code of the same class), so that what the server core writes
reads back as an equal `Reply`, except that a reply sent without a code reads back with the
class default the server wrote for it ("2.0.0"). It does so whether or not the server
advertised ENHANCEDSTATUSCODES: many servers (aiosmtpd among them) write the codes without
the keyword, a DSN needs them (RFC 3464 §2.3.4), and Postfix's client reads them the same
way; the price is that reply text that merely starts like a code of the reply's own class
("550 5.1.1 ...") is read as one. 3xx replies never carry one (RFC 3463 §3.1 defines
classes 2, 4 and 5 only).
"""

from __future__ import annotations

import re
from typing import Final

from sansmail._errors import RemoteProtocolError
from sansmail._linebuffer import BareNewlineError, LineBuffer, LineTooLongError
from sansmail.sasl import decode_base64_strict
from sansmail.smtp._events import Reply

__all__ = ["MAX_REPLY_LINE", "MAX_REPLY_LINES", "ReplyReader", "challenge_data"]

#: Longest reply line accepted, CRLF included (see the module docstring; RFC 5321
#: §4.5.3.1.5 says 512).
MAX_REPLY_LINE: Final = 4096
#: Most lines in one reply. An EHLO reply has a dozen or two.
MAX_REPLY_LINES: Final = 100

# RFC 3463 §2: class "." subject "." detail; subject and detail 1 to 3 digits.
_ENHANCED = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: |$)")


def _text(raw: bytes) -> str:
    if raw.isascii():
        text = raw.decode("ascii")
    else:
        text = raw.decode("utf-8", "replace")
    return text.replace("\0", "\ufffd") if "\0" in text else text


def _split_enhanced(code: int, lines: list[str]) -> tuple[str | None, tuple[str, ...]]:
    first = _ENHANCED.match(lines[0])
    if first is None or int(first.group(1)) != code // 100:
        return None, tuple(lines)
    out = []
    for line in lines:
        match = _ENHANCED.match(line)
        same_class = match is not None and match.group(1) == first.group(1)
        out.append(line[match.end() :] if match is not None and same_class else line)
    return first.group(0).rstrip(" "), tuple(out)


class ReplyReader:
    """Reads one reply at a time from a `LineBuffer`, across as many reads as it takes."""

    __slots__ = ("_code", "_lines", "_max_line", "_max_lines")

    def __init__(self, max_line: int = MAX_REPLY_LINE, max_lines: int = MAX_REPLY_LINES) -> None:
        self._max_line = max_line
        self._max_lines = max_lines
        self._code = 0
        self._lines: list[str] = []

    @property
    def partial(self) -> bool:
        """Some lines of a reply have been read, but not its last."""
        return bool(self._lines)

    def __call__(self, buf: LineBuffer, *, enhanced: bool) -> Reply | None:
        """The next complete reply, or None. `enhanced`: split off RFC 3463 codes."""
        while True:
            try:
                line = buf.maybe_extract_line(self._max_line)
            except LineTooLongError:
                raise RemoteProtocolError(f"reply line over {self._max_line} octets") from None
            except BareNewlineError as exc:
                raise RemoteProtocolError(f"{exc} in a reply") from None
            if line is None:
                return None
            code, last, text = self._read_line(line)
            self._lines.append(text)
            if not last:
                if len(self._lines) >= self._max_lines:
                    raise RemoteProtocolError(f"reply of more than {self._max_lines} lines")
                continue
            lines, self._lines, self._code = self._lines, [], 0
            if enhanced and code // 100 != 3:
                status, texts = _split_enhanced(code, lines)
                return Reply(code=code, lines=texts, enhanced=status)
            return Reply(code=code, lines=tuple(lines))

    def _read_line(self, line: bytes) -> tuple[int, bool, str]:
        # RFC 5321 §4.2: Reply-code ( "-" / SP / nothing ) [ textstring ]
        head, separator = line[:3], line[3:4]
        if not (head.isdigit() and head.isascii()) or separator not in (b"", b" ", b"-"):
            raise RemoteProtocolError(f"malformed reply line {line[:40]!r}")
        code = int(head)
        if not 200 <= code <= 599:
            raise RemoteProtocolError(f"reply code {code} outside 200..599")
        if self._lines and code != self._code:
            raise RemoteProtocolError(f"reply code changed from {self._code} to {code}")
        self._code = code
        return code, separator != b"-", _text(line[4:])


def challenge_data(reply: Reply) -> bytes:
    """The decoded data of a 334 AUTH challenge (RFC 4954 §4): one line of base64, empty
    for an empty challenge. Raises `sansmail.sasl.RemoteSASLError` when the text is not
    strict base64 (cancel the exchange with `AuthCancel`), ValueError for a reply that is
    not a 334."""
    if reply.code != 334:
        raise ValueError(f"not an AUTH challenge: {reply.code}")
    text = reply.lines[0] if len(reply.lines) == 1 else "\0"
    # Non-ASCII or several lines: not base64, which the strict decoder says for us.
    return decode_base64_strict(text.encode("ascii", "replace"))
