"""Helpers for the MIME tests: the IMAP wire form of a value tree, and the corpus."""

from __future__ import annotations

import pathlib

from sansmail.imap import Value

CORPUS = pathlib.Path(__file__).parent / "corpus"


def crlf(text: str | bytes) -> bytes:
    """A message written with LF in the source, in the CRLF form the store hands over."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def corpus(name: str) -> bytes:
    """A corpus message (stored with LF, like a Maildir file) in CRLF form."""
    return crlf((CORPUS / name).read_bytes())


def render(value: Value) -> bytes:
    """The IMAP form of a tree under sansmail.mime's convention: SP between items, except
    between two adjacent tuples (bodies in a multipart, addresses in a list), written
    back to back as the RFC 9051 grammar's ``1*body`` and ``1*address`` require.
    Strings are quoted when they can be, else literals, as Dovecot writes them."""
    if value is None:
        return b"NIL"
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        if any(c >= 0x80 or c in b"\r\n\x00" for c in value):
            return b"{%d}\r\n" % len(value) + value
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    out = bytearray(b"(")
    previous: Value = None
    for index, item in enumerate(value):
        if index and not (isinstance(item, tuple) and isinstance(previous, tuple)):
            out += b" "
        out += render(item)
        previous = item
    return bytes(out + b")")
