"""The small file-system steps every durable writer here repeats (the Maildir store, the
queue, the user store, the generated TLS certificate).

A new or renamed name is on disk only once the directory that holds it has been fsync'd;
a file's bytes only once the file has. These helpers are blocking and loop-agnostic.
"""

from __future__ import annotations

import contextlib
import os

__all__ = ["fsync_dir", "unlink_quietly", "write_all"]

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


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
