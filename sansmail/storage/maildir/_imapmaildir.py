"""Maildir files as IMAP sees them: names, flags, sizes, line ends, and writing one durably.

A message file is ``<base>`` in ``new/`` or ``<base>:2,<letters>`` in ``cur/``
(cr.yp.to/proto/maildir.html). The base never changes while the message lives, so it is
the message's identity across flag renames, new/ -> cur/ moves and other tools. The
letters are the flags in ASCII order: D \\Draft, F \\Flagged, R \\Answered, S \\Seen,
T \\Deleted, and a-z the folder's keywords (see ``dovecot-keywords``). Letters we do not
know (P "passed", or a keyword letter with no name) are kept as they are when we rename.

Files hold LF line ends (as the delivery path, Postfix and Dovecot write them). IMAP
counts and sends the CRLF form, converted as POP3 does it (`sansmail.storage.maildir._mailbox`):
LF, CRLF and a bare CR each become one CRLF, so a file already in CRLF form is sent as it
is and both protocols agree on every size. ``,W=<n>`` in the base gives that size
without reading the file (we and Dovecot write it).
"""

from __future__ import annotations

import io
import itertools
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Final

from sansmail.storage.durable import fsync_dir, unlink_quietly, write_all
from sansmail.storage.maildir._maildir import _escape_hostname

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "DELETED",
    "SEEN",
    "CrlfReader",
    "Namer",
    "arrival_key",
    "bits_of",
    "crlf_chunks",
    "crlf_size",
    "flags_of",
    "info_letters",
    "parse_info",
    "size_from_name",
    "split_name",
    "store_file",
    "to_crlf",
]

SEEN: Final = 1
ANSWERED: Final = 2
FLAGGED: Final = 4
DELETED: Final = 8
DRAFT: Final = 16

_BIT_OF_FLAG: Final = {
    "\\seen": SEEN,
    "\\answered": ANSWERED,
    "\\flagged": FLAGGED,
    "\\deleted": DELETED,
    "\\draft": DRAFT,
}
_FLAG_OF_BIT: Final = {
    SEEN: "\\Seen",
    ANSWERED: "\\Answered",
    FLAGGED: "\\Flagged",
    DELETED: "\\Deleted",
    DRAFT: "\\Draft",
}
_BIT_OF_LETTER: Final = {"D": DRAFT, "F": FLAGGED, "R": ANSWERED, "S": SEEN, "T": DELETED}
_LETTER_OF_BIT: Final = {bit: letter for letter, bit in _BIT_OF_LETTER.items()}
_ARRIVAL: Final = re.compile(r"([0-9]{1,12})\.(?:M([0-9]{1,9}))?")
_WIRE_SIZE: Final = re.compile(r",W=([0-9]{1,15})(?:,|$)")
_READ_SIZE: Final = 128 * 1024
_FILE_MODE: Final = 0o600
_O_CREATE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW


def split_name(name: str) -> tuple[str, str | None]:
    """(base, flag letters) of a file name; letters None when there is no ``:2,``."""
    base, sep, info = name.partition(":")
    if sep and info.startswith("2,"):
        return base, info[2:]
    return base, None


def parse_info(letters: str | None, keywords: Sequence[str | None]) -> tuple[int, tuple[str, ...]]:
    """(system flag bits, sorted keywords) of the letters after ``:2,``."""
    bits = 0
    names: set[str] = set()
    for letter in letters or "":
        if letter in _BIT_OF_LETTER:
            bits |= _BIT_OF_LETTER[letter]
        elif "a" <= letter <= "z":
            keyword = keywords[ord(letter) - ord("a")]
            if keyword is not None:
                names.add(keyword)
    return bits, tuple(sorted(names))


def info_letters(
    bits: int, keywords: Iterable[str], table: Sequence[str | None], old: str | None
) -> str:
    """The letters for `bits` and `keywords` (each must have a letter in `table`), plus
    any letter of `old` that means nothing to us, in ASCII order."""
    letters = {_LETTER_OF_BIT[bit] for bit in _LETTER_OF_BIT if bits & bit}
    for keyword in keywords:
        letters.add(chr(ord("a") + table.index(keyword)))
    for letter in old or "":
        if letter in _BIT_OF_LETTER:
            continue
        if "a" <= letter <= "z" and table[ord(letter) - ord("a")] is not None:
            continue
        letters.add(letter)
    return "".join(sorted(letters))


def flags_of(bits: int, keywords: Iterable[str]) -> frozenset[str]:
    """The IMAP flag set of system flag `bits` and `keywords`."""
    return frozenset([_FLAG_OF_BIT[bit] for bit in _FLAG_OF_BIT if bits & bit]).union(keywords)


def bits_of(flags: Iterable[str]) -> tuple[int, frozenset[str]]:
    """(system flag bits, keywords) of IMAP `flags`; ``\\Recent`` is dropped (clients
    cannot set it, RFC 3501 §2.3.2) and other backslash flags are refused."""
    bits = 0
    keywords: set[str] = set()
    for flag in flags:
        if flag.startswith("\\"):
            lowered = flag.lower()
            if lowered == "\\recent":
                continue
            if lowered not in _BIT_OF_FLAG:
                raise ValueError(f"unknown system flag {flag!r}")
            bits |= _BIT_OF_FLAG[lowered]
        else:
            if not flag or any(ch in flag for ch in ' ()"{%*]\\') or not flag.isprintable():
                raise ValueError(f"not a keyword: {flag!r}")
            keywords.add(flag)
    return bits, frozenset(keywords)


def arrival_key(base: str, mtime_ns: int) -> tuple[int, int, str]:
    """Sort key for UID assignment: the time stamp at the start of the name (Maildir
    ``<secs>.M<usecs>...``), else the file's mtime; then the base name."""
    match = _ARRIVAL.match(base)
    if match:
        return int(match[1]) * 1_000_000 + int(match[2] or 0), 0, base
    return mtime_ns // 1000, 1, base


def size_from_name(base: str) -> int | None:
    """The CRLF size from the ``,W=`` field, if the base has one."""
    match = _WIRE_SIZE.search(base)
    return int(match[1]) if match else None


def to_crlf(data: bytes) -> bytes:
    """`data` with every LF, CRLF and bare CR made one CRLF."""
    if b"\r" not in data:
        return data.replace(b"\n", b"\r\n")
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def crlf_chunks(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """`chunks` of a message as stored, converted to the wire's line ends: LF, CRLF and a
    bare CR each become one CRLF (`to_crlf`, chunk by chunk). Chunk boundaries may fall
    anywhere; an output chunk never ends between a CR and its LF, and is never empty."""
    held = False  # the previous chunk ended with a CR, not yet known to be a CRLF's
    for stored in chunks:
        data = b"\r" + stored if held else stored
        held = data.endswith(b"\r")
        if held:
            data = data[:-1]
        if data:
            yield to_crlf(data)
    if held:
        yield b"\r\n"


def crlf_size(path: str) -> int:
    """Octets of the CRLF form of file `path`, by reading it."""
    with open(path, "rb", buffering=0) as f:
        return sum(len(c) for c in crlf_chunks(iter(lambda: f.read(_READ_SIZE), b"")))


class CrlfReader(io.RawIOBase):
    """A stored file read in CRLF form (`crlf_chunks`), chunk by chunk, so a big message
    never sits whole in memory."""

    def __init__(self, raw: io.BufferedReader | io.BufferedRandom) -> None:
        super().__init__()
        self._raw = raw
        self._chunks = crlf_chunks(iter(lambda: raw.read(_READ_SIZE), b""))
        self._out = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        if not self._out:
            self._out = next(self._chunks, b"")
        n = min(len(view), len(self._out))
        view[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


class Namer:
    """Unique base names for files we create, Maildir style:
    ``<secs>.M<usecs>P<pid>A<counter>.<host>`` (``A`` where delivery writes ``Q``, so an
    APPEND and a delivery in the same process and microsecond cannot collide)."""

    def __init__(self, hostname: str, clock: Callable[[], int]) -> None:
        self._host = _escape_hostname(hostname)
        self._clock = clock
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        secs, nanos = divmod(self._clock(), 1_000_000_000)
        return f"{secs}.M{nanos // 1000}P{os.getpid()}A{next(self._counter)}.{self._host}"


def store_file(
    folder: str, unique: str, data: bytes, letters: str, mtime: float | None
) -> tuple[str, int]:
    """Write message `data` (LF form, no CR left) durably into ``cur/`` of Maildir
    `folder`; returns its name relative to `folder` and its mtime in seconds (the
    INTERNALDATE: `mtime` when given, else now). The file is complete and on disk, with
    its mtime, before its name appears in ``cur/``; the name is on disk before this
    returns. (Another session may rename the file as soon as it is there, so nothing
    here looks at it by name afterwards.)"""
    lines = data.count(b"\n")
    tmp = os.path.join(folder, "tmp", unique)
    fd = os.open(tmp, _O_CREATE, _FILE_MODE)
    try:
        write_all(fd, data)
        if mtime is not None:
            os.utime(fd, (mtime, mtime))
        os.fsync(fd)
        stamp = int(os.fstat(fd).st_mtime)
    except BaseException:
        os.close(fd)
        unlink_quietly(tmp)
        raise
    os.close(fd)
    # The size fields go into the base, as the delivery path writes them.
    name = f"{unique},S={len(data)},W={len(data) + lines}:2,{letters}"
    try:
        os.rename(tmp, os.path.join(folder, "cur", name))
    except BaseException:
        unlink_quietly(tmp)
        raise
    try:
        fsync_dir(os.path.join(folder, "cur"))
    except Exception:
        # Not durable, so not stored: the caller reports the failure, and a name left
        # here would be indexed by the next sync as if it had been.
        unlink_quietly(os.path.join(folder, "cur", name))
        raise
    return "cur/" + name, stamp
