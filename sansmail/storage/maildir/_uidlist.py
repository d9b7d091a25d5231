"""Dovecot's ``dovecot-uidlist``: the UIDs a Maildir had under Dovecot, read once.

Theory of operation
-------------------
A site moving from Dovecot keeps its Maildirs; if sansmail gave their messages new UIDs
(or a new UIDVALIDITY), every client would drop its cache and download everything again.
So the first time sansmail indexes a folder (no ``sansmail.index.sqlite`` yet), it takes
from the folder's ``dovecot-uidlist`` the UIDVALIDITY, the next UID and the UID of each
file it lists (`FolderIndex` does the taking); the keywords come from ``dovecot-keywords``,
which sansmail shares with Dovecot anyway. After that the sansmail index is the truth and
the uidlist is never read again.

The format (Dovecot's maildir-uidlist.c and its documentation), version 3, the one
Dovecot has written since v1.1::

    3 V1275660208 N25022 G3085f01b7f11094c501100008c4a11c1
    25006 :1276528487.M364837P9451.kurkku,S=1355,W=1394:2,
    25017 W2481 :1276533073.M242911P3632.kurkku:2,F

The header is the version, then ``<key><value>`` fields in any order: V the
UIDVALIDITY, N the next UID (both non-zero 32-bit numbers, required), G the folder's
GUID (32 hex digits), and others (P, a POP3 UIDL format) kept as they are. A record is
a UID, extension fields (an upper-case letter and a value: S the file size, W the
RFC822.SIZE, P a POP3 UIDL, O a POP3 order, G a message GUID) and ``:`` followed by the
last known file name (its base is what counts: flag changes rename files without
rewriting the list). UIDs strictly increase; a later line for a base already listed
wins (Dovecot appends one when a file it had expunged comes back); the next UID is at
least one more than the last UID listed (Dovecot writes the header lazily). Lines end
with LF; a last line without one is an append cut short and is not read.

Parsing is strict: anything else (another version, a missing or malformed V or N, a
field without a key, a UID out of order, a name with "/") raises `UidlistError`, and the
folder is then indexed as if Dovecot had never been there (new UIDVALIDITY) rather than
with UIDs that may be wrong. Nothing here does I/O but `read_uidlist`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Final

import attrs

__all__ = [
    "UIDLIST_NAME",
    "Uidlist",
    "UidlistError",
    "UidlistRecord",
    "parse_uidlist",
    "read_uidlist",
]

UIDLIST_NAME: Final = "dovecot-uidlist"

_UID_MAX: Final = 0xFFFFFFFF
_NUMBER: Final = re.compile(r"[0-9]{1,10}")
_GUID: Final = re.compile(r"[0-9a-fA-F]{32}")
_KEY: Final = re.compile(r"[A-Z]")
# Record extensions whose value is a number (Dovecot reads them with strtoull).
_NUMERIC: Final = frozenset("SWO")


class UidlistError(ValueError):
    """A ``dovecot-uidlist`` that is not one this parser can vouch for."""


@attrs.frozen(kw_only=True)
class UidlistRecord:
    """One message Dovecot listed."""

    uid: int
    #: The last file name Dovecot knew (maybe with its ``:2,<flags>`` then).
    filename: str
    #: Extension fields, key letter -> value (S, W, P, O, G ...).
    extensions: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def base(self) -> str:
        return self.filename.partition(":")[0]

    @property
    def vsize(self) -> int | None:
        """RFC822.SIZE from the W field, when Dovecot wrote one."""
        value = self.extensions.get("W")
        return None if value is None else int(value)


@attrs.frozen(kw_only=True)
class Uidlist:
    """A parsed ``dovecot-uidlist``."""

    uidvalidity: int
    #: The UID the next message gets: the header's, or one more than the last listed.
    next_uid: int
    #: The folder's GUID (hex), when the header has one.
    guid: str | None = None
    #: Header fields other than V, N and G, key letter -> value.
    extensions: Mapping[str, str] = attrs.field(factory=dict)
    #: Base name -> its record.
    records: Mapping[str, UidlistRecord] = attrs.field(factory=dict)


def _number(text: str, what: str) -> int:
    if not _NUMBER.fullmatch(text) or not 0 < int(text) <= _UID_MAX:
        raise UidlistError(f"{what} is not a 32-bit number above 0: {text!r}")
    return int(text)


def _fields(text: str, what: str) -> list[tuple[str, str]]:
    """``<key><value>`` fields separated by single spaces."""
    fields = []
    for field in text.split(" ") if text else []:
        if not field:
            raise UidlistError(f"an empty field in the {what}")
        fields.append((field[0], field[1:]))
    return fields


def _header(line: str) -> tuple[int, int, str | None, dict[str, str]]:
    version, sep, rest = line.partition(" ")
    if version != "3" or not sep:
        raise UidlistError(f"not a version 3 header: {line[:40]!r}")
    values: dict[str, str] = {}
    for key, value in _fields(rest, "header"):
        if key in values and key in "VNG":
            raise UidlistError(f"header field {key} given twice")
        values[key] = value
    if "V" not in values or "N" not in values:
        raise UidlistError("the header lacks V (UIDVALIDITY) or N (next UID)")
    uidvalidity = _number(values.pop("V"), "UIDVALIDITY")
    next_uid = _number(values.pop("N"), "the next UID")
    guid = values.pop("G", None)
    if guid is not None and not _GUID.fullmatch(guid):
        raise UidlistError(f"not a GUID: {guid!r}")
    return uidvalidity, next_uid, guid, values


def _record(line: str) -> UidlistRecord:
    fields, colon, filename = line.partition(" :")
    if not colon:
        raise UidlistError(f"a record without its file name: {line[:60]!r}")
    uid_text, space, extension_text = fields.partition(" ")
    uid = _number(uid_text, "a UID")
    if uid == _UID_MAX:
        raise UidlistError("UID too high")  # Dovecot's limit: (uint32_t)-1 is never a UID
    if space and not extension_text:
        raise UidlistError("an empty field in the record")
    extensions: dict[str, str] = {}
    for key, value in _fields(extension_text, "record"):
        if not _KEY.fullmatch(key):
            raise UidlistError(f"an extension field without a key letter: {key + value!r}")
        if key in _NUMERIC and not (value.isascii() and value.isdigit()):
            raise UidlistError(f"extension {key} is not a number: {value!r}")
        extensions[key] = value
    if not filename or "/" in filename or "\0" in filename:
        raise UidlistError(f"not a file name: {filename!r}")
    return UidlistRecord(uid=uid, filename=filename, extensions=extensions)


def parse_uidlist(data: bytes) -> Uidlist:
    """Parse the octets of a ``dovecot-uidlist`` (see the module docstring)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UidlistError("not UTF-8") from None
    lines = text.split("\n")
    complete = lines[:-1]  # the last "line" is what follows the last LF: cut short
    if not complete:
        raise UidlistError("no header")
    if any("\r" in line for line in complete):
        raise UidlistError("a CR in a line")
    uidvalidity, next_uid, guid, extensions = _header(complete[0])
    records: dict[str, UidlistRecord] = {}
    last = 0
    for line in complete[1:]:
        record = _record(line)
        if record.uid <= last:
            raise UidlistError(f"UIDs out of order ({record.uid} after {last})")
        last = record.uid
        records.pop(record.base, None)  # a later line for the same file wins
        records[record.base] = record
    return Uidlist(
        uidvalidity=uidvalidity,
        next_uid=max(next_uid, last + 1),
        guid=guid,
        extensions=extensions,
        records=records,
    )


def read_uidlist(folder: str) -> Uidlist | None:
    """The parsed ``dovecot-uidlist`` of Maildir `folder`, or None when there is none or
    it cannot be vouched for (`UidlistError`)."""
    try:
        with open(os.path.join(folder, UIDLIST_NAME), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    try:
        return parse_uidlist(data)
    except UidlistError:
        return None
