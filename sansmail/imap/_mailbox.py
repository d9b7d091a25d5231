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

from sansmail import _mutf7

__all__ = ["MailboxNameError", "decode_mailbox", "encode_mailbox", "normalize_inbox"]


class MailboxNameError(ValueError):
    """The octets are not a mailbox name in the session's encoding."""


def normalize_inbox(name: str) -> str:
    """ "INBOX" for any case-variant of it (RFC 9051 §5.1), otherwise `name`."""
    return "INBOX" if name.upper() == "INBOX" else name


def encode_mailbox(name: str, *, utf8: bool) -> bytes:
    """The octets that spell `name` in a session with (`utf8`) or without UTF-8 names."""
    if utf8:
        return name.encode("utf-8")
    try:
        return _mutf7.encode(name).encode("ascii")
    except ValueError as exc:
        raise MailboxNameError(f"mailbox name: {exc}") from None


def decode_mailbox(data: bytes, *, utf8: bool) -> str:
    """The name `data` spells; raises MailboxNameError if it is not valid in the
    session's encoding. INBOX is not normalised here (patterns must keep their case)."""
    if utf8:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise MailboxNameError("mailbox name is not UTF-8") from None
    if not data.isascii():
        raise MailboxNameError("8-bit octets in a modified UTF-7 mailbox name")
    try:
        return _mutf7.decode(data.decode("ascii"))
    except ValueError as exc:
        raise MailboxNameError(f"mailbox name: {exc}") from None
