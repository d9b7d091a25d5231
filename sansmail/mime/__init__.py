"""MIME structure for IMAP: the part tree, ENVELOPE, BODYSTRUCTURE, sections and BINARY.
Pure functions over a message's bytes: no I/O, no clock, no state between calls.

Pure functions over a whole message given as CRLF bytes (the store converts Maildir's LF
files before they get here). `parse` reads the part tree once, as offsets into the bytes;
`envelope` and `bodystructure` turn it into `sansmail.imap.Value` trees for FETCH and for
the store's cache; `section`, `partial`, `binary` and `binary_size` cut FETCH content out
of the same bytes; `header_fields` and `decoded_header` serve SEARCH.

    root = parse(raw)
    envelope(root)                      # RFC 9051 §7.5.2 ENVELOPE
    bodystructure(root)                 # BODYSTRUCTURE; extensible=False gives BODY
    section(raw, root, SectionSpec(parts=(1, 2), text="MIME"))
    binary(raw, root, (2,))             # decoded, or UnknownEncoding

In the trees, a body and an address are tuples and every other list is a list, so that
the writer can put no SP between adjacent tuples, as ``1*body`` and ``1*address`` in the
RFC 9051 grammar require (see `_structure`).
"""

from sansmail.mime._fields import decoded_header
from sansmail.mime._parse import MAX_DEPTH, MAX_PARTS, MessagePart, parse
from sansmail.mime._sections import (
    SectionSpec,
    UnknownEncoding,
    binary,
    binary_size,
    find_part,
    header_fields,
    partial,
    section,
)
from sansmail.mime._structure import bodystructure, envelope

__all__ = [
    "MAX_DEPTH",
    "MAX_PARTS",
    "MessagePart",
    "SectionSpec",
    "UnknownEncoding",
    "binary",
    "binary_size",
    "bodystructure",
    "decoded_header",
    "envelope",
    "find_part",
    "header_fields",
    "parse",
    "partial",
    "section",
]
