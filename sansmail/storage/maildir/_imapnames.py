"""Folder names: what clients see, what the disk holds, and the small files Dovecot shares.

Theory of operation
-------------------
Clients see Unicode names with "/" as the hierarchy delimiter. On disk each folder is a
Maildir++ directory in the user's Maildir, named "." followed by the name's levels joined
with "." (``Archive/2024`` is ``.Archive.2024``), the layout Dovecot reads with
``LAYOUT=maildir++`` and ``separator = /``. Each level is stored as Dovecot stores it:

1. escaped as Dovecot's ``mailbox_list_storage_escape_char = \\`` (the listescape plugin)
   does: the escape character, "." (the on-disk delimiter), "/" and a leading "~" of the
   whole name become ``\\`` and two lower-case hex digits, so ``v1.2`` is ``v1\\2e2``;
2. encoded in modified UTF-7 (RFC 3501 §5.1.3), Dovecot's default on-disk form, so
   ``Entwürfe`` is ``Entw&APw-rfe``.

The two steps commute (modified UTF-7 leaves printable ASCII other than "&" alone, and its
base64 alphabet has no "." or "\\"), so decoding splits on ".", unescapes and decodes.

INBOX is the Maildir itself; "INBOX" in any case is INBOX (RFC 9051 §5.1), and so is the
first level of ``inbox/child`` (stored as ``.INBOX.child``, as Dovecot does).

Names are refused when they cannot round-trip or would confuse clients: an empty level
(``a//b``), a control character, the LIST wildcards ``*`` and ``%``, and a directory name
over NAME_MAX (255 octets).

Also here, in the formats Dovecot writes so that both servers can share a Maildir:

- ``subscriptions`` (Dovecot's version 2 file): the line ``V<TAB>2``, an empty line, then
  one name per line with its levels (as stored on disk, step 1 and 2) joined by TAB, each
  level tab-escaped (``\\001`` + one of ``1 t r n 0`` for SOH, TAB, CR, LF, NUL);
- ``dovecot-keywords`` in each folder: lines ``<n> <keyword>``, where n (0-25) is the
  letter ``a``+n that marks the keyword in the ``:2,`` part of file names.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from typing import Final

from sansmail import _mutf7
from sansmail.storage.durable import write_file_atomically
from sansmail.storage.maildir._imapbase import (
    SEPARATOR,
    FolderExistsError,
    InvalidFolderNameError,
)

__all__ = [
    "INBOX",
    "KEYWORD_LETTERS",
    "decode_mutf7",
    "disk_levels",
    "disk_name",
    "encode_mutf7",
    "folder_dir",
    "folder_name",
    "normalize",
    "read_keywords",
    "read_subscriptions",
    "rename_names",
    "write_keywords",
    "write_subscriptions",
]

INBOX: Final = "INBOX"
#: Maildir info letters for keywords, in Dovecot's order (index n is letter a+n).
KEYWORD_LETTERS: Final = "abcdefghijklmnopqrstuvwxyz"

_ESCAPE: Final = "\\"
_NAME_MAX: Final = 255
_FORBIDDEN: Final = re.compile(r"[\x00-\x1f\x7f*%]")
_UNESCAPE: Final = re.compile(r"\\([0-9a-fA-F]{2})")
_SUBS_HEADER: Final = "V\t2\n\n"
_TAB_ESCAPES: Final = {
    "\x01": "\x011",
    "\t": "\x01t",
    "\r": "\x01r",
    "\n": "\x01n",
    "\x00": "\x010",
}
_TAB_UNESCAPES: Final = {v[1]: k for k, v in _TAB_ESCAPES.items()}


# -- modified UTF-7 (RFC 3501 §5.1.3) --------------------------------------------------


def encode_mutf7(text: str) -> str:
    """`text` in IMAP's modified UTF-7 (`sansmail._mutf7`, shared with the protocol)."""
    return _mutf7.encode(text)


def decode_mutf7(text: str) -> str:
    """The inverse of `encode_mutf7`. Raises ValueError unless `text` is the canonical
    encoding of its result (so one name has one spelling)."""
    return _mutf7.decode(text)


# -- client names <-> disk names -------------------------------------------------------


def normalize(name: str, *, trailing_separator: bool = False) -> str:
    """The canonical form of a client's folder name, or `InvalidFolderNameError`.

    `trailing_separator` allows one trailing "/" (CREATE, RFC 9051 §6.3.4: it declares
    the intent to hold children and is not part of the name).
    """
    if trailing_separator and name.endswith(SEPARATOR) and name != SEPARATOR:
        name = name[:-1]
    levels = name.split(SEPARATOR)
    if not name or any(not level for level in levels):
        raise InvalidFolderNameError(f"empty level in folder name {name!r}")
    if _FORBIDDEN.search(name):
        raise InvalidFolderNameError(f"control character or wildcard in {name!r}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidFolderNameError(f"not valid Unicode: {name!r}") from None
    if levels[0].upper() == INBOX:
        levels[0] = INBOX
    out = SEPARATOR.join(levels)
    if out != INBOX and len(os.fsencode(disk_name(out))) > _NAME_MAX:
        raise InvalidFolderNameError("folder name too long")
    return out


def rename_names(old: str, new: str) -> tuple[str, str]:
    """RENAME's two names, normalized, with the rules every store keeps (RFC 9051
    §6.3.6): `FolderExistsError` for INBOX or the folder itself as the target, and
    `InvalidFolderNameError` for a folder moved below itself (INBOX excepted: only its
    messages move, so INBOX/Old is a fine target)."""
    old, new = normalize(old), normalize(new)
    if new in (INBOX, old):
        raise FolderExistsError(f"{new!r} exists")
    if old != INBOX and new.startswith(old + SEPARATOR):
        raise InvalidFolderNameError("a folder cannot move below itself")
    return old, new


def _escape_level(level: str, first: bool) -> str:
    out: list[str] = []
    for i, ch in enumerate(level):
        if ch in (_ESCAPE, ".", "/") or (first and i == 0 and ch == "~"):
            out.append(f"{_ESCAPE}{ord(ch):02x}")
        else:
            out.append(ch)
    return encode_mutf7("".join(out))


def disk_name(name: str) -> str:
    """The directory name of normalised folder `name` (not INBOX) in the Maildir."""
    levels = name.split(SEPARATOR)
    return "." + ".".join(_escape_level(level, i == 0) for i, level in enumerate(levels))


def folder_dir(maildir: str | os.PathLike[str], name: str) -> str:
    """The directory of folder `name` (any client spelling) in the user's Maildir, for
    writers outside an IMAP session (delivery into Junk, for one)."""
    name = normalize(name)
    root = os.fspath(maildir)
    return root if name == INBOX else os.path.join(root, disk_name(name))


def disk_levels(name: str) -> list[str]:
    """The levels of `name` as stored on disk (for the subscriptions file)."""
    if name == INBOX:
        return [INBOX]
    return disk_name(name)[1:].split(".")


def _unescape(text: str) -> str:
    return _UNESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)


def folder_name(entry: str) -> str | None:
    """The folder name of Maildir entry `entry` (".Name.Sub"), or None if it is not a
    folder this store can show (not a Maildir++ name, bad encoding, empty level)."""
    if len(entry) < 2 or entry[0] != "." or entry == "..":
        return None
    levels = entry[1:].split(".")
    try:
        decoded = [decode_mutf7(_unescape(level)) for level in levels]
    except (ValueError, UnicodeDecodeError):
        return None
    if any(not level or SEPARATOR in level for level in decoded):
        return None
    if decoded[0].upper() == INBOX:
        decoded[0] = INBOX
    name = SEPARATOR.join(decoded)
    if name == INBOX or _FORBIDDEN.search(name):
        return None
    return name


# -- small files -----------------------------------------------------------------------


def _read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    return raw.decode("utf-8", "replace")


def _tab_unescape(text: str) -> str:
    if "\x01" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\x01" and i + 1 < len(text):
            out.append(_TAB_UNESCAPES.get(text[i + 1], text[i + 1]))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _name_from_levels(levels: Sequence[str]) -> str | None:
    if list(levels) == [INBOX] or (len(levels) == 1 and levels[0].upper() == INBOX):
        return INBOX
    return folder_name("." + ".".join(levels))


def read_subscriptions(path: str) -> list[str]:
    """The subscribed names in file `path` (Dovecot's format, version 2 or the older one
    with "." between levels); names this store cannot show are skipped."""
    text = _read_text(path)
    if text is None:
        return []
    if text.startswith(_SUBS_HEADER):
        lines = text[len(_SUBS_HEADER) :].split("\n")
        splitter = "\t"
    else:
        lines = text.split("\n")
        splitter = "."
    names: list[str] = []
    for line in lines:
        if not line:
            continue
        levels = [_tab_unescape(level) for level in line.split(splitter)]
        name = _name_from_levels(levels)
        if name is not None and name not in names:
            names.append(name)
    return names


def write_subscriptions(path: str, names: Iterable[str]) -> None:
    """Write `names` (normalised) as Dovecot's version 2 subscriptions file."""
    lines = [_SUBS_HEADER]
    for name in names:
        levels = disk_levels(name)
        escaped = ("".join(_TAB_ESCAPES.get(ch, ch) for ch in level) for level in levels)
        lines.append("\t".join(escaped) + "\n")
    write_file_atomically(path, "".join(lines).encode())


def read_keywords(path: str) -> list[str | None]:
    """The keyword of each letter a-z (None where unused) from a ``dovecot-keywords``."""
    table: list[str | None] = [None] * len(KEYWORD_LETTERS)
    text = _read_text(path)
    if text is None:
        return table
    for line in text.split("\n"):
        number, _, keyword = line.partition(" ")
        if number.isdigit() and int(number) < len(table) and keyword.strip():
            table[int(number)] = keyword.strip()
    return table


def write_keywords(path: str, table: Sequence[str | None]) -> None:
    """Write a ``dovecot-keywords`` file."""
    lines = [f"{n} {keyword}\n" for n, keyword in enumerate(table) if keyword]
    write_file_atomically(path, "".join(lines).encode())
