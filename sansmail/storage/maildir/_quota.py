"""Storage quota: how many octets a user's Maildir holds, kept current without walking it.

Theory of operation
-------------------
Where usage lives. ``maildirsize`` at the top of the user's Maildir, in the Maildir++
quota format that Courier and Dovecot keep (and Dovecot's ``maildir`` quota back end
reads): a first line with the limit the file was measured for (``<octets>S``), then
lines of ``<octets> <messages>`` changes, one appended per event. Usage is the sum of
every line after the first. Octets are counted as IMAP counts them, CRLF form (the
``,W=`` of a name, RFC822.SIZE), so that usage, APPEND literals and the index's sizes
agree; every folder of the Maildir counts, as with Dovecot (INBOX and Junk included).

Who appends. Every writer that changes the Maildir appends its change, with one
``write(2)`` on an ``O_APPEND`` descriptor: a line of a few octets is written whole, at
the end, however many processes append at once, so concurrent deliveries cannot corrupt
it or lose each other's lines (no lock, no read). Writers append only to a file that
exists (`record`); only a delivery or a reader that knows a limit makes one, so a
server with no quota pays one failed ``open`` per delivered copy. The writers:

- delivery (`MaildirStore.publish_many`, `count_delivery`): each copy's CRLF size, once
  it is durable; where a limit applies and there is no file, or it has grown past
  `RECALC_SIZE`, the delivery measures instead (in its worker thread);
- the IMAP index (`FolderIndex`): rows inserted (APPEND, COPY, MOVE's target) and rows
  deleted (EXPUNGE, MOVE's source, files found gone by a sync: another tool, a POP3
  session, mutt), after their transaction commits. A sync also counts a file it finds
  in ``cur/`` without a row (another tool wrote it there); files it finds in ``new/``
  were counted by the delivery that put them there. A new or rebuilt index meeting
  files in ``cur/`` (a first sync) counts nothing and drops the file instead;
- POP3 (`Maildrop.expunge`) when its snapshot did not come from the index (otherwise the
  index's next sync counts what it removed);
- DELETE of a folder drops the file (`invalidate`).

When it is measured again (`recalculate`, a walk of every folder's ``new/`` and
``cur/``, sizes from ``,W=``; a file another tool named without one is read, as the IMAP
index reads it once). As Courier's rules say: when there is no file, when it has grown
past `RECALC_SIZE` octets, when its first line names another limit (the limit changed),
and when it says the user is over the limit but was last written more than `STALE_NS`
ago (changes nobody counted, e.g. a tool deleting files, must not keep a mailbox "full"
for ever). The new file is written beside and renamed over the old one. A change
appended while a walk runs may be counted twice or not at all until the next measure;
that is the same trade Courier and Dovecot make for a file that needs no lock. A file
that grows past `DROP_SIZE` with nobody reading it (quota off) is removed by the writer
that notices, so it never grows without bound.

Reading on the event loop. `peek` reads the file and never walks: when a measure is due
it drops the file and answers None, and the caller accepts (the SMTP session at RCPT);
the delivery that follows finds no file and measures, in its worker thread. `usage`
(IMAP, the CLI: worker threads) measures at once. Each process remembers the file as it
last summed it, and a re-read parses only the lines appended since.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import time
from collections.abc import Callable
from typing import Final

import attrs

from sansmail.mail.address import MailboxId
from sansmail.storage.durable import unlink_quietly, write_all
from sansmail.storage.maildir._imapbase import ImapStoreError

__all__ = [
    "QUOTA_NAME",
    "OverQuotaError",
    "QuotaLimits",
    "Usage",
    "account_root",
    "count_delivery",
    "invalidate",
    "peek",
    "recalculate",
    "record",
    "usage",
]

QUOTA_NAME: Final = "maildirsize"
#: Courier's maildirquota rule: a longer file is measured again.
RECALC_SIZE: Final = 5120
#: A file past this, noticed by a writer, is removed (nobody is reading it).
DROP_SIZE: Final = 64 * 1024
#: Courier's: "over quota" is believed only from a file written in the last 15 minutes.
STALE_NS: Final = 15 * 60 * 1_000_000_000
_READ_MAX: Final = DROP_SIZE + 4096
_READ_CHUNK: Final = 128 * 1024
_FIRST_LINE: Final = re.compile(rb"(\d+)S(?:,\d+C)?")
_FILE_MODE: Final = 0o600
_tmp_counter = itertools.count(1)
# Quota file path -> (limit, its octets as last read, their octets and messages): see
# `_read`. Replaced whole, one dictionary operation at a time (atomic under the GIL), so
# threads share it without a lock.
_SEEN: Final[dict[str, tuple[int, bytes, int, int]]] = {}
_SEEN_MAX: Final = 1024
# The ,W= field of a base name (as `_imapmaildir.size_from_name`, see `recalculate`).
_WIRE_SIZE: Final = re.compile(r",W=([0-9]{1,15})(?:,|$)")


@attrs.frozen
class Usage:
    """A Maildir's storage: CRLF octets and messages."""

    octets: int
    messages: int


#: `_read`'s answer for a file to measure again.
_DUE: Final = Usage(-1, -1)


class OverQuotaError(ImapStoreError):
    """The account would be over its storage limit (IMAP: NO [OVERQUOTA], RFC 9208 §4.3)."""

    code = "OVERQUOTA"


@attrs.frozen
class QuotaLimits:
    """The storage limit of each mailbox, in octets (0: none): the user's own when the
    users file has one (`lookup` takes an `Address.key`, None: no override), else
    `default` (``[quota] storage``)."""

    default: int
    lookup: Callable[[str], int | None] = lambda key: None

    def __call__(self, mailbox: MailboxId) -> int:
        own = self.lookup(f"{mailbox.local}@{mailbox.domain}")
        return self.default if own is None else own


def account_root(folder: str) -> str:
    """The Maildir whose quota file counts `folder`: INBOX is the Maildir itself, a
    Maildir++ folder (``.Name``) is inside it."""
    folder = folder.rstrip(os.sep)
    return os.path.dirname(folder) if os.path.basename(folder).startswith(".") else folder


def record(root: str, octets: int, messages: int) -> int | None:
    """Append a change to `root`'s quota file if it has one (see the module docstring);
    the file's size after it, None when there is none (any more). Never raises: the
    file is a cache, and a lost line is found at the next measure."""
    path = os.path.join(root, QUOTA_NAME)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None  # no file (quota not in use), or unusable: the next reader measures
    try:
        write_all(fd, b"%d %d\n" % (octets, messages))
        # O_APPEND leaves the offset at the end: the file's size, for free.
        size: int | None = os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        size = None
    finally:
        os.close(fd)
    if size is None or size > DROP_SIZE:
        unlink_quietly(path)
        return None
    return size


def count_delivery(root: str, octets: int, limit: int) -> None:
    """Blocking: count one message delivered into `root` (durable already) under
    `limit` (0: none): appended, and measured instead when there was no file or it
    has grown past `RECALC_SIZE`. The other reasons to measure are found by the readers
    (`peek` drops the file then), so that a delivery never reads it."""
    size = record(root, octets, 1)
    if limit and (size is None or size > RECALC_SIZE):
        recalculate(root, limit)  # this message included: it is named already


def invalidate(root: str) -> None:
    """Drop `root`'s quota file: the next reader measures the Maildir again."""
    unlink_quietly(os.path.join(root, QUOTA_NAME))


def peek(root: str, limit: int, *, now: int | None = None) -> Usage | None:
    """`root`'s usage from its quota file alone (one small read, never a walk): None
    when the file is missing, or due to be measured again, which drops it (the next
    delivery or reader measures)."""
    now = time.time_ns() if now is None else now
    path = os.path.join(root, QUOTA_NAME)
    found = _read(path, limit, now)
    if found is _DUE:
        unlink_quietly(path)
        return None
    return found


def usage(root: str, limit: int, *, now: int | None = None) -> tuple[Usage, bool]:
    """Blocking: `root`'s usage, measured again (a walk) when it is due; and whether it
    was."""
    found = peek(root, limit, now=now)
    if found is not None:
        return found, False
    return recalculate(root, limit), True


def recalculate(root: str, limit: int) -> Usage:
    """Blocking: measure `root` (every folder's ``new/`` and ``cur/``) and write a new
    quota file saying so (after ``sansmail-trio mailbox resync`` rebuilt an index, the
    next reader does: the resync drops the file, `invalidate`)."""
    octets = messages = 0
    for folder in _folders(root):
        for sub in ("new", "cur"):
            directory = os.path.join(folder, sub)
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                continue
            for name in names:
                if name.startswith("."):
                    continue
                wire = _WIRE_SIZE.search(name.partition(":")[0])
                if wire is not None:
                    size = int(wire[1])
                else:
                    # Another tool's file: measured as the IMAP index measures it.
                    try:
                        size = crlf_size(os.path.join(directory, name))
                    except (FileNotFoundError, IsADirectoryError):
                        continue
                octets += size
                messages += 1
    found = Usage(octets, messages)
    _write(root, limit, found)
    return found


def crlf_size(path: str) -> int:
    """Octets of file `path` with every LF, CRLF and bare CR made one CRLF: the rule of
    `_imapmaildir.crlf_size` (which this package's delivery module cannot import: that
    module imports it), and a test checks that both agree."""
    size = 0
    held = False  # the last chunk ended with a CR that may start a CRLF
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(_READ_CHUNK):
            data = b"\r" + chunk if held else chunk
            held = data.endswith(b"\r")
            if held:
                data = data[:-1]
            lf = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            size += len(lf) + lf.count(b"\n")
    return size + 2 if held else size


def _folders(root: str) -> list[str]:
    try:
        entries = os.scandir(root)
    except FileNotFoundError:
        return []
    with entries:
        # Maildir++ folders are the ".Name" directories (".", ".." are never listed).
        return [root, *(e.path for e in entries if e.name.startswith(".") and e.is_dir())]


def _write(root: str, limit: int, found: Usage) -> None:
    path = os.path.join(root, QUOTA_NAME)
    tmp = os.path.join(root, f".{QUOTA_NAME}.{os.getpid()}.{next(_tmp_counter)}")
    data = b"%dS\n%d %d\n" % (limit, found.octets, found.messages)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, _FILE_MODE)
    except FileNotFoundError:
        return  # no Maildir yet: nothing to keep
    try:
        write_all(fd, data)
    finally:
        os.close(fd)
    # No fsync: a file lost in a crash is measured again, as one too big is.
    try:
        os.rename(tmp, path)
    except OSError:
        unlink_quietly(tmp)
        raise


def _read(path: str, limit: int, now: int) -> Usage | None:
    """The usage in the file at `path`; None if there is none, `_DUE` if it is to be
    measured again."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
            return None
        raise
    try:
        data = os.read(fd, _READ_MAX)
        if len(data) > RECALC_SIZE:
            return _DUE
        mtime = os.fstat(fd).st_mtime_ns
    finally:
        os.close(fd)
    if not data.endswith(b"\n"):
        return _DUE  # empty, or a last line without its end
    # Run for every RCPT to a limited mailbox, on the event loop. The file only grows
    # until it is replaced, so what this process summed last time is reused when the
    # file still starts with the very octets it summed (a byte comparison), and only
    # the lines after them are parsed: parsing them all was 13% of the server's CPU.
    seen = _SEEN.get(path)
    if seen is not None and seen[0] == limit and data.startswith(seen[1]):
        start, octets, messages = len(seen[1]), seen[2], seen[3]
    else:
        first, _, _rest = data.partition(b"\n")
        definition = _FIRST_LINE.fullmatch(first)
        if definition is None or int(definition[1]) != limit:
            return _DUE  # another limit, or not ours
        start, octets, messages = len(first) + 1, 0, 0
    rest = data[start:]
    fields = rest.split()
    if len(fields) != 2 * rest.count(b"\n"):
        return _DUE
    try:
        values = list(map(int, fields))
    except ValueError:
        return _DUE
    octets += sum(values[0::2])
    messages += sum(values[1::2])
    if octets < 0 or messages < 0:
        return _DUE
    if len(_SEEN) >= _SEEN_MAX:
        _SEEN.clear()
    _SEEN[path] = (limit, data, octets, messages)
    if limit and octets >= limit and now - mtime > STALE_NS:
        return _DUE
    return Usage(octets, messages)
