"""The queue file, format 2: one file per message holding its content and its envelope,
and the envelope's later versions appended as records. Bytes only, no I/O: `_store.py`
reads and writes the files.

Theory of operation
-------------------
::

    sansmail-queue 2\\n                       MAGIC: the format and its version
    C <length:20 digits> <crc32:8 hex>\\n     the content's octet count and checksum
    <content>                                exactly as received, CRLF line ends
    E <length> <crc32>\\n<envelope JSON>\\n   the envelope as queued
    E <length> <crc32>\\n<envelope JSON>\\n   ... and after each attempt that changed it

The header has a fixed width (`HEAD_SIZE` octets), so the content starts at `PREFIX` and
the records at ``PREFIX + length`` whatever the message. The envelope in force is the
**last whole record**: each record carries its length and a CRC-32 of its JSON, so one
cut short by a crash (or a full disk) reads as absent and the one before it stands. An
attempt's verdicts are therefore recorded with one appended record and one
``fdatasync``, atomically, without rewriting the content or renaming anything.

A file written in pieces (a message too big to buffer) starts with `PLACEHOLDER` where
the header goes and gets its real header at commit, so a file found with the
placeholder after a crash was never committed. The content checksum lets a reader tell
a file whose pages reached the disk only in part (a crash before the commit's fsync
returned, when no ``250`` was sent) from a whole one.
"""

from __future__ import annotations

import re
import zlib
from typing import Final

import attrs

__all__ = [
    "HEAD_SIZE",
    "MAGIC",
    "PLACEHOLDER",
    "PREFIX",
    "Head",
    "Records",
    "content_head",
    "envelope_record",
    "parse_head",
    "parse_records",
]

#: The first line of every format-2 queue file.
MAGIC: Final = b"sansmail-queue 2\n"
#: ``C <20 digits> <8 hex>\n``
HEAD_SIZE: Final = 32
#: Where the content starts.
PREFIX: Final = len(MAGIC) + HEAD_SIZE
#: The header of a file whose content is still being written.
PLACEHOLDER: Final = b"C " + b"?" * (HEAD_SIZE - 3) + b"\n"

_HEAD: Final = re.compile(rb"C (\d{20}) ([0-9a-f]{8})\n")
_RECORD: Final = re.compile(rb"E (\d{1,12}) ([0-9a-f]{8})\n")
# A record's header line is at most this long: "E", 12 digits, 8 hex digits, 2 spaces, LF.
_RECORD_LINE_MAX: Final = 24


@attrs.frozen
class Head:
    """A committed file's header: the content's octet count and CRC-32."""

    length: int
    crc: int

    @property
    def records(self) -> int:
        """The offset of the first envelope record."""
        return PREFIX + self.length


@attrs.frozen
class Records:
    """What the record area holds: the JSON of the last whole envelope record (None:
    there is none) and the offset, within the area, just past it (where the next
    record goes)."""

    envelope: bytes | None
    end: int


def content_head(length: int, crc: int) -> bytes:
    """The header of a committed file whose content is `length` octets with CRC `crc`."""
    return b"C %020d %08x\n" % (length, crc)


def envelope_record(payload: bytes) -> bytes:
    """One envelope record around the JSON `payload`."""
    return b"E %d %08x\n" % (len(payload), zlib.crc32(payload)) + payload + b"\n"


def parse_head(data: bytes) -> Head | None:
    """The header at the start of `data`; None when the file was not committed (empty,
    cut before its header, or still holding the placeholder). ValueError when it is not
    a format-2 queue file at all."""
    if len(data) < PREFIX:
        if MAGIC.startswith(data[: len(MAGIC)]) or not data:
            return None
        raise ValueError("not a queue file")
    if data[: len(MAGIC)] != MAGIC:
        raise ValueError("not a queue file")
    head = data[len(MAGIC) : PREFIX]
    if head == PLACEHOLDER:
        return None
    match = _HEAD.fullmatch(head)
    if match is None:
        raise ValueError("damaged queue file header")
    return Head(length=int(match[1]), crc=int(match[2], 16))


def parse_records(area: bytes) -> Records:
    """The records in `area` (the file from `Head.records` on), read in order until the
    first that is not whole: a torn or damaged record, and whatever follows it, is the
    debris of a write that did not finish, never an envelope."""
    envelope: bytes | None = None
    end = 0
    while True:
        line_end = area.find(b"\n", end, end + _RECORD_LINE_MAX)
        if line_end < 0:
            break
        match = _RECORD.fullmatch(area, end, line_end + 1)
        if match is None:
            break
        start = line_end + 1
        stop = start + int(match[1])
        if area[stop : stop + 1] != b"\n":
            break
        payload = area[start:stop]
        if zlib.crc32(payload) != int(match[2], 16):
            break
        envelope = payload
        end = stop + 1
    return Records(envelope=envelope, end=end)
