"""IMAP's modified UTF-7 (RFC 3501 §5.1.3): mailbox names on the wire for IMAP4rev1
clients, and folder names on disk (as Dovecot stores them). One codec for both.

Printable ASCII stands for itself, "&" as "&-"; a run of anything else is "&", the
base64 of its UTF-16BE form with "," for "/" and no padding, then "-". Decoding accepts
only the canonical spelling, so one name has one spelling.
"""

from __future__ import annotations

import base64
import binascii
import re

__all__ = ["decode", "encode"]

_DIRECT = re.compile(r"[\x20-\x25\x27-\x7e]+")  # printable ASCII but "&"
_SHIFTED = re.compile(r"&([A-Za-z0-9+,]*)-")


def encode(name: str) -> str:
    """`name` in modified UTF-7; ValueError for a lone surrogate."""
    out: list[str] = []
    pos = 0
    while pos < len(name):
        direct = _DIRECT.match(name, pos)
        if direct:
            out.append(direct.group())
            pos = direct.end()
            continue
        if name[pos] == "&":
            out.append("&-")
            pos += 1
            continue
        end = pos
        while end < len(name) and not ("\x20" <= name[end] <= "\x7e"):
            end += 1
        try:
            utf16 = name[pos:end].encode("utf-16-be")
        except UnicodeEncodeError:
            raise ValueError("the name holds a lone surrogate") from None
        out.append("&" + base64.b64encode(utf16).decode("ascii").rstrip("=").replace("/", ","))
        out.append("-")
        pos = end
    return "".join(out)


def decode(text: str) -> str:
    """The name `text` spells; ValueError unless it is canonical modified UTF-7."""
    if not text.isascii():
        raise ValueError("8-bit characters in a modified UTF-7 name")
    parts: list[str] = []
    pos = 0
    while pos < len(text):
        amp = text.find("&", pos)
        if amp < 0:
            parts.append(text[pos:])
            break
        parts.append(text[pos:amp])
        shifted = _SHIFTED.match(text, amp)
        if shifted is None:
            raise ValueError("unterminated '&' run in a modified UTF-7 name")
        b64 = shifted.group(1)
        if not b64:
            parts.append("&")
        else:
            padded = b64.replace(",", "/") + "=" * (-len(b64) % 4)
            try:
                raw = binascii.a2b_base64(padded.encode("ascii"), strict_mode=True)
                parts.append(raw.decode("utf-16-be"))
            except (binascii.Error, UnicodeDecodeError):
                raise ValueError("bad base64 or UTF-16 in a modified UTF-7 name") from None
        pos = shifted.end()
    name = "".join(parts)
    if any(not ("\x20" <= c <= "\x7e") for c in text) or encode(name) != text:
        raise ValueError("not the canonical modified UTF-7 spelling")
    return name
