"""Secret keys the server makes once and keeps under ``data_dir``: the SRS key.

Blocking file I/O; the adapter calls it at start, off the event loop.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
from typing import Final

from sansmail.mail.srs import KEY_OCTETS
from sansmail.storage.durable import fsync_dir, write_all

__all__ = ["SRSKeyError", "load_or_create_srs_key"]

_FILE_MODE: Final = 0o600
_DIR_MODE: Final = 0o700


class SRSKeyError(ValueError):
    """The key file exists but does not hold a key; str() names the file."""


def _read_key(path: pathlib.Path) -> bytes:
    text = path.read_bytes().strip()
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != KEY_OCTETS:
        raise SRSKeyError(f"{path}: expected {2 * KEY_OCTETS} hex digits (the SRS key)")
    return key


def load_or_create_srs_key(path: pathlib.Path) -> bytes:
    """The SRS key in `path` (hex, one line), made on first use: `KEY_OCTETS` random
    bytes, mode 0600, on disk (file and directory fsync'd) before it is returned, so a
    crash cannot lose a key that addresses already carry. Blocking file I/O.

    Two processes starting at once both end up with the one key that was published
    first. Raises `SRSKeyError` for a file that holds something else, OSError when it
    cannot be read or written."""
    path = pathlib.Path(path)
    with contextlib.suppress(FileNotFoundError):
        return _read_key(path)
    path.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    # Written whole under a unique name, then published with link(), which (unlike
    # rename) fails if the name exists: a racing process's key is never overwritten
    # after it may have been used, and nobody reads a half-written file.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, _FILE_MODE
    )
    try:
        try:
            write_all(fd, secrets.token_bytes(KEY_OCTETS).hex().encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    fsync_dir(path.parent)
    return _read_key(path)
