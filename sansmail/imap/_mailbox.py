"""Mailbox names on the wire: modified UTF-7 for IMAP4rev1, UTF-8 for IMAP4rev2.

An IMAP4rev1 session (RFC 3501 §5.1.3) spells every mailbox name in "modified UTF-7":
printable US-ASCII stands for itself except "&", which is written "&-"; any other run
of characters is "&", the modified base64 (RFC 2045 base64 with "," for "/", no padding)
of its UTF-16BE form, and "-". A session that ENABLEd IMAP4rev2 or UTF8=ACCEPT spells
them in UTF-8 instead (RFC 9051 §5.1, RFC 6855 §3). The application only ever sees `str`.

Decoding is strict: a name is accepted only if encoding the decoded text gives back the
same octets, which refuses the ambiguous spellings RFC 3501 forbids (a shifted run that
encodes printable ASCII, two adjacent shifted runs, non-zero padding bits, a raw "&")
along with broken UTF-16. Two different octet strings thus never name one mailbox.

The name INBOX is case-insensitive (RFC 9051 §5.1): any spelling becomes "INBOX".
"""

from __future__ import annotations

import base64
import binascii
import re

__all__ = ["MailboxNameError", "decode_mailbox", "encode_mailbox", "normalize_inbox"]


class MailboxNameError(ValueError):
    """The octets are not a mailbox name in the session's encoding."""


_DIRECT = re.compile(r"[\x20-\x25\x27-\x7e]+")  # printable ASCII but "&"
_SHIFTED = re.compile(rb"&([A-Za-z0-9+,]*)-")


def normalize_inbox(name: str) -> str:
    """ "INBOX" for any case-variant of it (RFC 9051 §5.1), otherwise `name`."""
    return "INBOX" if name.upper() == "INBOX" else name


def encode_mailbox(name: str, *, utf8: bool) -> bytes:
    """The octets that spell `name` in a session with (`utf8`) or without UTF-8 names."""
    if utf8:
        return name.encode("utf-8")
    return _encode_mutf7(name)


def decode_mailbox(data: bytes, *, utf8: bool) -> str:
    """The name `data` spells; raises MailboxNameError if it is not valid in the
    session's encoding. INBOX is not normalised here (patterns must keep their case)."""
    if utf8:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise MailboxNameError("mailbox name is not UTF-8") from None
    name = _decode_mutf7(data)
    if _encode_mutf7(name) != data:
        raise MailboxNameError("mailbox name is not canonical modified UTF-7")
    return name


def _encode_mutf7(name: str) -> bytes:
    out = bytearray()
    pos = 0
    while pos < len(name):
        direct = _DIRECT.match(name, pos)
        if direct:
            out += direct.group().encode("ascii")
            pos = direct.end()
            continue
        if name[pos] == "&":
            out += b"&-"
            pos += 1
            continue
        end = pos
        while end < len(name) and not ("\x20" <= name[end] <= "\x7e"):
            end += 1
        try:
            utf16 = name[pos:end].encode("utf-16-be")
        except UnicodeEncodeError:
            raise MailboxNameError("mailbox name holds a lone surrogate") from None
        b64 = base64.b64encode(utf16).rstrip(b"=").replace(b"/", b",")
        out += b"&" + b64 + b"-"
        pos = end
    return bytes(out)


def _decode_mutf7(data: bytes) -> str:
    if not data.isascii():
        raise MailboxNameError("8-bit octets in a modified UTF-7 mailbox name")
    parts: list[str] = []
    pos = 0
    while pos < len(data):
        amp = data.find(b"&", pos)
        if amp < 0:
            parts.append(data[pos:].decode("ascii"))
            break
        parts.append(data[pos:amp].decode("ascii"))
        shifted = _SHIFTED.match(data, amp)
        if shifted is None:
            raise MailboxNameError("unterminated '&' run in a modified UTF-7 mailbox name")
        b64 = shifted.group(1)
        if not b64:
            parts.append("&")
        else:
            padded = b64.replace(b",", b"/") + b"=" * (-len(b64) % 4)
            try:
                parts.append(binascii.a2b_base64(padded, strict_mode=True).decode("utf-16-be"))
            except (binascii.Error, UnicodeDecodeError):
                raise MailboxNameError("bad base64 or UTF-16 in a mailbox name") from None
        pos = shifted.end()
    return "".join(parts)
