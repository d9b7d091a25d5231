"""Small helpers the mechanisms share for turning client bytes into text fields."""

from __future__ import annotations

from sansmail.sasl._base import Malformed, SASLError

__all__ = ["check_identity", "decode_field"]


def decode_field(data: bytes, what: str, *, allow_empty: bool = False) -> str:
    """`data` as UTF-8 text; `Malformed` if it is not UTF-8, holds NUL, or is empty
    (unless `allow_empty`). NUL is what PLAIN splits on and what no identity or password
    can contain (RFC 4616 §2 SAFE)."""
    if not data and not allow_empty:
        raise Malformed(f"empty {what}")
    if b"\0" in data:
        raise Malformed(f"NUL in {what}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed(f"{what} is not UTF-8") from None


def check_identity(value: str, what: str, *, allow_empty: bool = False) -> None:
    """Refuse, as API misuse, an identity or password a client mechanism cannot send."""
    if not isinstance(value, str):
        raise SASLError(f"{what} must be a str")
    if not value and not allow_empty:
        raise SASLError(f"{what} must not be empty")
    if "\0" in value:
        raise SASLError(f"{what} must not contain NUL")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SASLError(f"{what} is not encodable as UTF-8 (lone surrogate)") from None
