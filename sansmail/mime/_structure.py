"""ENVELOPE and BODYSTRUCTURE / BODY as IMAP value trees (RFC 9051 §7.5.2, RFC 3501 §7.4.2).

The trees use the shapes of `sansmail.imap.Value`: None is NIL, int a number, bytes a
string, and a list or tuple a parenthesised list. One convention on top, for the writer:
**a body and an address are tuples; every other list is a list.** The IMAP grammar
writes a run of bodies (``body-type-mpart = 1*body SP media-subtype``) and a run of
addresses (``"(" 1*address ")"``) with no space between the parenthesised items, while
everywhere else items are separated by SP (``env-from SP env-sender``, ``body-fld-dsp SP
body-fld-lang``). So the writer can follow one rule: no SP between two adjacent tuples.

Strings are the header values as written, unfolded, with CR and LF removed and NUL turned
into 0x80 (as Dovecot does; an IMAP string may not hold NUL). Encoded words stay encoded
(RFC 9051 §7.5.2 returns the raw header); 8-bit octets stay, for the writer to send as a
literal. Defaults follow Dovecot, whose answers clients have seen most: "text" "plain"
with ("charset" "us-ascii") for a part without a usable Content-Type, a charset parameter
added to any text part that lacks one, "7bit" for an absent Content-Transfer-Encoding,
lower-case for everything we supply and the message's own case for everything we copy.
"""

from __future__ import annotations

from typing import Final

from sansmail.imap._values import Value
from sansmail.mime._address import address_list
from sansmail.mime._fields import Params, scan_header, unfold
from sansmail.mime._parse import MessagePart

__all__ = ["bodystructure", "envelope"]

# RFC 9051 §7.5.2 ENVELOPE order; the address fields are the ones whose value is a list.
_ENVELOPE_FIELDS: Final = (
    b"date",
    b"subject",
    b"from",
    b"sender",
    b"reply-to",
    b"to",
    b"cc",
    b"bcc",
    b"in-reply-to",
    b"message-id",
)
_ADDRESS_FIELDS: Final = frozenset({b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc"})
_NIL_ENVELOPE: Final[list[Value]] = [None] * 10
_DEFAULT_CHARSET: Final = (b"charset", b"us-ascii")


def envelope(part_or_raw: MessagePart | bytes) -> list[Value]:
    """The ENVELOPE of a message, from its header block: the root part from `parse`, the
    `encapsulated` part of a message/rfc822 part, or the message bytes themselves (then
    only the header is read).

    Where a field occurs more than once the last one counts, as in Dovecot and Cyrus. An
    absent field, or an address field that names nobody, is NIL; Sender and Reply-To fall
    back to From when absent or empty (RFC 9051 §7.5.2).
    """
    if isinstance(part_or_raw, MessagePart):
        part = part_or_raw
        raw, start, end = part.raw, part.header_start, part.header_end
    else:
        raw, start, end = part_or_raw, 0, len(part_or_raw)
    end, fields, _ = scan_header(raw, start, end)
    values: dict[bytes, bytes] = {}
    for name, _, value_start, field_end in fields:
        key = name.lower()
        if key in _ENVELOPE_FIELDS:
            values[key] = unfold(raw, value_start, field_end)
    out: list[Value] = []
    for key in _ENVELOPE_FIELDS:
        value = values.get(key)
        if key not in _ADDRESS_FIELDS:
            out.append(_nstring(value))
            continue
        addresses: list[Value] | None = None
        if value is not None:
            found = address_list(value)
            if found is not None:
                addresses = [tuple(_nstring(item) for item in address) for address in found]
        out.append(addresses)
    for index in (3, 4):  # sender, reply-to
        if out[index] is None:
            out[index] = out[2]
    return out


def bodystructure(part: MessagePart, *, extensible: bool = True) -> tuple[Value, ...]:
    """BODYSTRUCTURE of a part (with extension data), or BODY when not `extensible`."""
    if part.multipart:
        return _multipart(part, extensible)
    return _basic(part, extensible)


def _multipart(part: MessagePart, extensible: bool) -> tuple[Value, ...]:
    items: list[Value] = [bodystructure(child, extensible=extensible) for child in part.children]
    if not items:
        # RFC 9051 needs 1*body; Dovecot shows a multipart without parts this way.
        items.append(_empty_text(extensible))
    items.append(part.subtype)
    if extensible:
        items += [_params(part.params), *_common_extension(part)]
    return tuple(items)


def _basic(part: MessagePart, extensible: bool) -> tuple[Value, ...]:
    params = part.params
    if part.is_text and not any(name.lower() == b"charset" for name, _ in params):
        params = (*params, _DEFAULT_CHARSET)
    items: list[Value] = [
        part.content_type,
        part.subtype,
        _params(params),
        _nstring(part.id),
        _nstring(part.description),
        part.encoding if part.encoding is not None else b"7bit",
        part.size,
    ]
    if part.is_text:
        items.append(part.lines)
    elif part.is_message:
        inner = part.encapsulated
        if inner is None:  # not opened: nested past MAX_DEPTH or after MAX_PARTS
            items += [list(_NIL_ENVELOPE), _empty_text(extensible), part.lines]
        else:
            items += [envelope(inner), bodystructure(inner, extensible=extensible), part.lines]
    if extensible:
        items += [_nstring(part.md5), *_common_extension(part)]
    return tuple(items)


def _common_extension(part: MessagePart) -> list[Value]:
    """body-fld-dsp, body-fld-lang, body-fld-loc (RFC 9051 §7.5.2)."""
    dsp: Value = None
    if part.disposition is not None:
        dsp = [part.disposition[0], _params(part.disposition[1])]
    lang: Value = None if part.language is None else list(part.language)
    return [dsp, lang, _nstring(part.location)]


def _params(params: Params) -> list[Value] | None:
    """body-fld-param: a flat (name value ...) list, NIL when there are none."""
    if not params:
        return None
    return [_nstring(item) for pair in params for item in pair]


def _empty_text(extensible: bool) -> tuple[Value, ...]:
    items: list[Value] = [b"text", b"plain", list(_DEFAULT_CHARSET), None, None, b"7bit", 0, 0]
    if extensible:
        items += [None, None, None, None]
    return tuple(items)


def _nstring(value: bytes | None) -> bytes | None:
    if value is None:
        return None
    if b"\r" in value or b"\n" in value:
        value = value.replace(b"\r", b"").replace(b"\n", b"")
    return value.replace(b"\x00", b"\x80") if b"\x00" in value else value
