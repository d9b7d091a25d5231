"""Response serialisation: response events in, octets out (RFC 9051 §7, §4).

Strings are written as quoted strings when that is safe and as literals otherwise
(RFC 9051 §4.3): a quoted string never holds CR, LF or NUL, and holds 8-bit octets only
in a session where UTF-8 is allowed (IMAP4rev2 or UTF8=ACCEPT) and only when they are
UTF-8; long strings go as literals too, so a huge header never makes a huge line.
`Literal` forces a literal; under a BINARY[...] FETCH item, data holding NUL goes as a
literal8 ("~{n}", RFC 3516 §4.2), the one place one is allowed. Mailbox names
(`MailboxName`) are spelled in the session's encoding: modified UTF-7 (RFC 3501 §5.1.3)
or UTF-8 (RFC 9051 §5.1).

The writer refuses (LocalProtocolError) what it cannot write faithfully: a literal
inside a response code, a "]" inside a code's atoms, a number that is not a number64.

`encode_value` is the writer's output for one value as an `Encoded`, the form a cache
keeps (portable: written as for a session without UTF-8, so valid in every session);
an `Encoded` is written as it is, and a `FetchBatch` is a run of FETCH responses made
only of those, written by joining them.
"""

from __future__ import annotations

import datetime
import functools
import re
from typing import Final

from sansmail._errors import LocalProtocolError
from sansmail.imap._mailbox import MailboxNameError, encode_mailbox
from sansmail.imap._responses import (
    Continuation,
    FetchBatch,
    FetchResponse,
    MailboxName,
    Response,
    ResponseCode,
    Tagged,
    Untagged,
    UntaggedStatus,
)
from sansmail.imap._values import Atom, Encoded, Literal, Value
from sansmail.sasl._b64 import encode_base64

__all__ = [
    "MAX_QUOTED",
    "encode_datetime",
    "encode_number",
    "encode_value",
    "format_date",
    "format_datetime",
    "write_response",
    "write_value",
]

#: Strings longer than this go as literals even when they could be quoted.
MAX_QUOTED = 1024
_MAX_NUMBER64 = 2**63 - 1

# TEXT-CHAR: any CHAR (%x01-7F) except CR and LF.
_ASCII_QUOTABLE: Final = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*")
_ESCAPE: Final = re.compile(rb'(["\\])')


def write_response(event: Response, *, utf8: bool) -> bytes:
    """The octets of one response, CRLF included."""
    out = bytearray()
    if isinstance(event, Tagged):
        out += event.tag.encode("ascii") + b" " + event.status.encode("ascii") + b" "
        _status_tail(out, event.code, event.text, utf8)
    elif isinstance(event, UntaggedStatus):
        out += b"* " + event.status.encode("ascii") + b" "
        _status_tail(out, event.code, event.text, utf8)
    elif isinstance(event, Untagged):
        out += b"* "
        if event.number is not None:
            out += b"%d " % event.number
        out += event.keyword.encode("ascii")
        for item in event.data:
            out += b" "
            write_value(out, item, utf8=utf8)
    elif isinstance(event, FetchResponse):
        out += b"* %d FETCH (" % event.number
        for index, (name, value) in enumerate(event.items):
            if index:
                out += b" "
            out += name.encode("ascii") + b" "
            binary = name.startswith("BINARY[")
            write_value(out, value, utf8=utf8, binary=binary)
        out += b")"
    elif isinstance(event, FetchBatch):
        _write_batch(out, event)
        return bytes(out)
    elif isinstance(event, Continuation):
        out += b"+ "
        if event.data is not None:
            out += encode_base64(event.data)
        else:
            out += event.text.encode("utf-8")
    else:
        raise LocalProtocolError(f"not a response: {event!r}")
    out += b"\r\n"
    return bytes(out)


def _write_batch(out: bytearray, event: FetchBatch) -> None:
    # The rows were checked when the event was made: numbers where the first row has
    # them, Encoded values elsewhere. So each row is one %-format, the labels in the
    # template and the values joined as they are.
    if not event.rows:
        return
    labels = b" ".join(
        name.encode("ascii") + (b" %d" if type(value) is int else b" %b")
        for name, value in zip(event.names, event.rows[0][1:], strict=True)
    )
    template = b"* %d FETCH (" + labels + b")\r\n"
    for row in event.rows:
        out += template % row


def encode_value(value: Value) -> Encoded:
    """`value` as the writer writes it for a session without UTF-8 (so 8-bit strings
    are literals, valid in every session), ready to be cached and spliced back."""
    out = bytearray()
    write_value(out, value, utf8=False)
    return Encoded(bytes(out))


def encode_datetime(moment: datetime.datetime) -> Encoded:
    """`format_datetime`'s text, quoted, as an `Encoded` value (INTERNALDATE in a
    `FetchBatch`): a FETCH of a big folder makes thousands, so the zone's text is
    worked out once per offset and the rest is one format of digits (framed by
    construction: no check needed)."""
    offset = moment.utcoffset()
    if offset is None:
        raise ValueError("an IMAP date-time needs a time zone")
    return bytes.__new__(
        Encoded,
        b'"%2d-%b-%04d %02d:%02d:%02d %b"'
        % (
            moment.day,
            _MONTH_OCTETS[moment.month],
            moment.year,
            moment.hour,
            moment.minute,
            moment.second,
            _zone_text(offset),
        ),
    )


@functools.lru_cache(maxsize=256)
def _zone_text(offset: datetime.timedelta) -> bytes:
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    return b"%s%02d%02d" % (sign.encode(), hours, minutes)


def encode_number(number: int) -> Encoded:
    """A number64 (RFC 9051 §9) as an `Encoded` value, e.g. a UID in a `FetchBatch`."""
    if type(number) is not int or not 0 <= number <= _MAX_NUMBER64:
        raise LocalProtocolError(f"not a number64: {number!r}")
    # Digits alone are framed by construction: no need for Encoded's check.
    return bytes.__new__(Encoded, b"%d" % number)


def _status_tail(out: bytearray, code: ResponseCode | None, text: str, utf8: bool) -> None:
    if code is not None:
        out += b"[" + code.name.encode("ascii")
        for item in code.data:
            out += b" "
            _write_code_value(out, item, utf8)
        out += b"] "
    out += text.encode("utf-8")


def _write_code_value(out: bytearray, value: Value, utf8: bool) -> None:
    # Inside "[...]" nothing may need a literal, and an atom may not hold "]".
    if isinstance(value, Atom) and "]" in value:
        raise LocalProtocolError(f'"]" inside a response code: {value!r}')
    if isinstance(value, Literal):
        raise LocalProtocolError("a response code cannot carry a literal")
    if isinstance(value, list | tuple):
        out += b"("
        for index, item in enumerate(value):
            if index:
                out += b" "
            _write_code_value(out, item, utf8)
        out += b")"
        return
    if isinstance(value, str | bytes) and not isinstance(value, Atom):
        data = value if isinstance(value, bytes) else value.encode("utf-8")
        if isinstance(value, MailboxName):
            data = encode_mailbox(value, utf8=utf8)
        if len(data) > MAX_QUOTED or not _quotable(data, utf8):
            raise LocalProtocolError("a response code cannot carry a literal")
    write_value(out, value, utf8=utf8)


def write_value(out: bytearray, value: Value, *, utf8: bool, binary: bool = False) -> None:
    """Append one value tree to `out` (see `sansmail.imap._values`)."""
    # Exact types first: an ENVELOPE is mostly plain bytes, NIL and tuples, and a FETCH
    # of thousands of them spends its time here. The subclasses (Atom, Literal,
    # MailboxName) and the refusals take the general chain below.
    kind = type(value)
    if kind is bytes:
        _write_string(out, value, utf8, binary=binary)  # type: ignore[arg-type]
        return
    if value is None:
        out += b"NIL"
        return
    if kind is tuple or kind is list:
        out += b"("
        previous: Value = None
        for index, item in enumerate(value):  # type: ignore[arg-type]
            # Two tuples in a row are members of a "1*x" rule written without SP: the
            # bodies of a multipart, the addresses of an address list, namespace
            # descriptions (RFC 9051 §9). Everything else is separated by SP.
            if index and not (type(item) is tuple and type(previous) is tuple):
                out += b" "
            previous = item
            # NIL and short clean strings inline: the bulk of an ENVELOPE's nodes, and
            # a call each cost as much as the rest of the work.
            if item is None:
                out += b"NIL"
            elif (
                type(item) is bytes and len(item) <= MAX_QUOTED and _ASCII_QUOTABLE.fullmatch(item)
            ):
                quoted = _ESCAPE.sub(rb"\\\1", item) if b'"' in item or b"\\" in item else item
                out += b'"' + quoted + b'"'
            else:
                write_value(out, item, utf8=utf8, binary=binary)
        out += b")"
        return
    if isinstance(value, bool):
        raise LocalProtocolError("bool is not an IMAP value")
    elif isinstance(value, int):
        if not 0 <= value <= _MAX_NUMBER64:
            raise LocalProtocolError(f"not a number64: {value}")
        out += b"%d" % value
    elif isinstance(value, MailboxName):
        try:
            _write_string(out, encode_mailbox(value, utf8=utf8), utf8)
        except MailboxNameError as exc:
            raise LocalProtocolError(str(exc)) from None
    elif isinstance(value, Encoded):
        # Checked when it was made: written as it is, inside lists too.
        out += value
    elif isinstance(value, Atom):
        out += value.encode("ascii")
    elif isinstance(value, str):
        _write_string(out, value.encode("utf-8"), utf8)
    elif isinstance(value, Literal):
        _write_literal(out, value, binary)
    elif isinstance(value, bytes):
        _write_string(out, value, utf8, binary=binary)
    elif isinstance(value, list | tuple):  # subclasses of list or tuple
        out += b"("
        before: Value = None
        for index, item in enumerate(value):
            if index and not (isinstance(item, tuple) and isinstance(before, tuple)):
                out += b" "
            write_value(out, item, utf8=utf8, binary=binary)
            before = item
        out += b")"
    else:
        raise LocalProtocolError(f"not an IMAP value: {type(value).__name__}")


def _write_string(out: bytearray, data: bytes, utf8: bool, *, binary: bool = False) -> None:
    if len(data) <= MAX_QUOTED and _quotable(data, utf8):
        if b'"' in data or b"\\" in data:
            data = _ESCAPE.sub(rb"\\\1", data)
        out += b'"' + data + b'"'
    else:
        _write_literal(out, data, binary)


def _quotable(data: bytes, utf8: bool) -> bool:
    if _ASCII_QUOTABLE.fullmatch(data):
        return True
    if not utf8 or b"\r" in data or b"\n" in data or b"\0" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _write_literal(out: bytearray, data: bytes, binary: bool) -> None:
    # RFC 3516 §4.2: literal8 for BINARY data that holds NUL; a plain literal otherwise
    # (RFC 9051 §4.3 CHAR8 excludes NUL, so only BINARY may carry one safely).
    prefix = b"~" if binary and b"\0" in data else b""
    out += prefix + b"{%d}\r\n" % len(data) + data


_MONTH_OCTETS: Final = (b"", *b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split())
_MONTHS: Final = (
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
)


def format_datetime(moment: datetime.datetime) -> str:
    """RFC 9051 §9 date-time text, e.g. "17-Jul-1996 02:44:25 -0700" (INTERNALDATE);
    `moment` must be aware. Quote it (write it as a str value) in responses."""
    offset = moment.utcoffset()
    if offset is None:
        raise ValueError("an IMAP date-time needs a time zone")
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    return (
        f"{moment.day:2d}-{_MONTHS[moment.month - 1]}-{moment.year:04d} "
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d} {sign}{hours:02d}{minutes:02d}"
    )


def format_date(day: datetime.date) -> str:
    """RFC 9051 §9 date-text, e.g. "1-Feb-1994" (SEARCH dates)."""
    return f"{day.day}-{_MONTHS[day.month - 1]}-{day.year:04d}"
