"""The small file-system steps every durable writer here repeats (the Maildir store, the
queue, the user store, the generated TLS certificate, the IMAP index's small files, the
MTA-STS policy cache).

A new or renamed name is on disk only once the directory that holds it has been fsync'd;
a file's bytes only once the file has. These helpers are blocking and loop-agnostic.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from typing import Final

__all__ = ["fsync_dir", "unlink_quietly", "write_all", "write_file_atomically"]

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_TMP_COUNTER: Final = itertools.count()


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the entries of directory `path` (creations, renames, links) durable."""
    fd = os.open(path, _O_DIR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """`os.write` until every byte is written (it may write fewer than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def unlink_quietly(path: str | os.PathLike[str]) -> None:
    """Remove `path` if it is there; clean-up must not mask the error being handled."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def write_file_atomically(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace `path` with `data` so that readers see the old or the new file, never a
    part (write a sibling, fsync, rename, fsync the directory)."""
    path = os.fspath(path)
    directory = os.path.dirname(path)
    # Unique per writer, so two threads of one process never share a temporary file.
    tmp = f"{path}.tmp.{os.getpid()}.{next(_TMP_COUNTER)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        unlink_quietly(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(directory)
