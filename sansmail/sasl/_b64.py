"""Strict base64 (RFC 4648 §4), the one encoding all three mail protocols wrap SASL in.

SMTP AUTH (RFC 4954 §4), POP3 AUTH (RFC 5034 §4) and IMAP AUTHENTICATE (RFC 9051 §6.2.2)
all carry SASL messages as base64 and all require the receiver to refuse what is not
base64. "Not base64" is read strictly here, as RFC 4648 §3.3 and §3.5 allow: no whitespace
or line breaks (§3.3), no character outside the alphabet, padding present and only at the
end (§3.2), and the unused bits of the last character zero (§3.5, canonical encoding), so
each byte string has exactly one accepted encoding. The protocols handle their own special
tokens (SMTP's ``=`` for an empty initial response, ``*`` to cancel) before calling this.
"""

from __future__ import annotations

import binascii
import re
from typing import Final

from sansmail.sasl._base import RemoteSASLError

__all__ = ["decode_base64_strict", "encode_base64"]

# Whole quanta of four, then at most one padded final quantum.
_SHAPE: Final = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def encode_base64(data: bytes) -> bytes:
    """RFC 4648 §4 base64 of `data`, padded, with no line breaks."""
    return binascii.b2a_base64(data, newline=False)


def decode_base64_strict(data: bytes) -> bytes:
    """Decode RFC 4648 §4 base64, refusing anything but the canonical encoding.

    Raises `RemoteSASLError` (a `SASLError`) for whitespace, characters outside the
    alphabet, missing or misplaced padding, and non-zero padding bits.
    """
    if _SHAPE.fullmatch(data) is None:
        raise RemoteSASLError("not base64")
    decoded = binascii.a2b_base64(data, strict_mode=True)
    # "QR==" and "QQ==" both decode to b"A"; only the second is canonical (RFC 4648 §3.5).
    if encode_base64(decoded) != data:
        raise RemoteSASLError("not canonical base64 (padding bits set)")
    return decoded


def decode_base64_text(text: str) -> bytes:
    """`decode_base64_strict` for base64 that arrives inside a text message (SCRAM)."""
    if not text.isascii():
        raise RemoteSASLError("not base64")
    return decode_base64_strict(text.encode("ascii"))
