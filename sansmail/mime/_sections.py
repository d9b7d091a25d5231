"""FETCH content: BODY[section], partial ranges, BINARY (RFC 9051 §6.4.5, RFC 3516).

Section numbers follow RFC 9051 §6.4.5 as Dovecot resolves them: a multipart's parts are
numbered from 1; a part that is not multipart has only part 1, itself (so part 1 of a
single-part message is its body); after a message/rfc822 part, further numbers address
the parts of the message inside it. HEADER, HEADER.FIELDS and TEXT apply to the message
itself (no part numbers) or to a message/rfc822 part; MIME to the MIME header of any
numbered part. Everything is a slice of the message bytes, except HEADER.FIELDS (the
chosen lines, then the empty line) and BINARY (decoded content).
"""

from __future__ import annotations

from typing import Final

import attrs

from sansmail.mime._fields import decode_base64, decode_qp, scan_header, unfold
from sansmail.mime._parse import MessagePart

__all__ = [
    "SectionSpec",
    "UnknownEncoding",
    "binary",
    "binary_size",
    "find_part",
    "header_fields",
    "partial",
    "section",
]

_TEXTS: Final = frozenset({"HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"})
_IDENTITY: Final = frozenset({b"7bit", b"8bit", b"binary"})


def _names(value: tuple[bytes | str, ...] | list[bytes | str]) -> tuple[bytes, ...]:
    return tuple(name.encode("ascii") if isinstance(name, str) else name for name in value)


@attrs.frozen(kw_only=True)
class SectionSpec:
    """A FETCH section (RFC 9051 §6.4.5): ``BODY[1.2.HEADER.FIELDS (From To)]`` is
    ``SectionSpec(parts=(1, 2), text="HEADER.FIELDS", fields=(b"From", b"To"))``."""

    parts: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[bytes, ...] = attrs.field(default=(), converter=_names)

    def __attrs_post_init__(self) -> None:
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.parts):
            raise ValueError(f"section part numbers are 1 or more: {self.parts!r}")
        if self.text is not None and self.text not in _TEXTS:
            raise ValueError(f"unknown section text: {self.text!r}")
        if self.text == "MIME" and not self.parts:
            raise ValueError("MIME needs a part number (RFC 9051 §6.4.5)")
        if (self.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT")) != bool(self.fields):
            raise ValueError("field names go with HEADER.FIELDS and HEADER.FIELDS.NOT only")


@attrs.frozen
class UnknownEncoding:
    """BINARY of a part whose Content-Transfer-Encoding we cannot undo; the server answers
    ``NO [UNKNOWN-CTE]`` (RFC 3516 §4.3)."""

    encoding: bytes


def find_part(root: MessagePart, numbers: tuple[int, ...]) -> MessagePart | None:
    """The part that part numbers address, from the root; None if there is none."""
    part = root
    for index, number in enumerate(numbers):
        if part.multipart:
            if number > len(part.children):
                return None
            part = part.children[number - 1]
        elif number != 1:
            return None
        if index + 1 < len(numbers) and part.encapsulated is not None:
            part = part.encapsulated
    return part


def section(raw: bytes, part: MessagePart, spec: SectionSpec) -> bytes | None:
    """The content of ``BODY[spec]`` of the message `raw` whose root part is `part`; None
    when the message has no such section (the server then returns an empty string)."""
    target = find_part(part, spec.parts)
    if target is None:
        return None
    if spec.text is None:
        if not spec.parts:
            return raw[target.header_start : target.body_end]
        return raw[target.body_start : target.body_end]
    if spec.text == "MIME":
        return raw[target.header_start : target.header_end]
    message = target if not spec.parts else target.encapsulated
    if message is None:
        return None
    if spec.text == "TEXT":
        return raw[message.body_start : message.body_end]
    if spec.text == "HEADER":
        return raw[message.header_start : message.header_end]
    return _header_fields(raw, message, spec.fields, keep=spec.text == "HEADER.FIELDS")


def _header_fields(
    raw: bytes, message: MessagePart, names: tuple[bytes, ...], *, keep: bool
) -> bytes:
    """The header lines whose field name is (or, not `keep`, is not) in `names`, folded
    lines included, in message order, then the empty line (RFC 9051 §6.4.5)."""
    wanted = {name.lower() for name in names}
    _, fields, _ = scan_header(raw, message.header_start, message.header_end)
    out = []
    for name, line_start, _, field_end in fields:
        if (name.lower() in wanted) == keep:
            eol = raw.find(b"\n", field_end, message.header_end)
            out.append(raw[line_start : message.header_end if eol < 0 else eol + 1])
            if eol < 0:
                out.append(b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def header_fields(raw: bytes, part: MessagePart) -> list[tuple[bytes, bytes]]:
    """The fields of a part's header block as (name as written, unfolded raw value), in
    order; lines without a colon are not fields and are left out. For SEARCH HEADER."""
    _, fields, _ = scan_header(raw, part.header_start, part.header_end)
    return [
        (name, unfold(raw, value_start, field_end))
        for name, _, value_start, field_end in fields
        if raw[value_start - 1 : value_start] == b":"
    ]


def partial(data: bytes, start: int, count: int | None) -> bytes:
    """``<start.count>`` of a fetched section (RFC 9051 §6.4.5): empty past the end."""
    if start < 0 or (count is not None and count < 0):
        raise ValueError("partial ranges are non-negative")
    if count is None:
        return data[start:]
    return data[start : start + count]


def binary(
    raw: bytes, part: MessagePart, numbers: tuple[int, ...]
) -> bytes | UnknownEncoding | None:
    """``BINARY[numbers]`` (RFC 3516 §4.2): the part's body with its Content-Transfer-
    Encoding undone (base64, quoted-printable; 7bit, 8bit and binary as they are). With no
    numbers, the whole message as it is. None when there is no such part."""
    if not numbers:
        return raw[part.header_start : part.body_end]
    target = find_part(part, numbers)
    if target is None:
        return None
    body = raw[target.body_start : target.body_end]
    encoding = (target.encoding or b"7bit").lower()
    if encoding in _IDENTITY:
        return body
    if encoding == b"base64":
        return decode_base64(body)
    if encoding == b"quoted-printable":
        return decode_qp(body)
    return UnknownEncoding(target.encoding or b"")


def binary_size(
    raw: bytes, part: MessagePart, numbers: tuple[int, ...]
) -> int | UnknownEncoding | None:
    """``BINARY.SIZE[numbers]`` (RFC 3516 §4.2): the octets `binary` would return."""
    content = binary(raw, part, numbers)
    return len(content) if isinstance(content, bytes) else content
