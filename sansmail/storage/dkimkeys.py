"""DKIM signing keys under ``data_dir``: ``dkim/<domain>/<selector>.key`` (PEM, mode 0600)
with the TXT record to publish beside it in ``<selector>.txt``.

Blocking file I/O. `write_key` is for ``sansmail-trio dkim keygen``; `DkimKeys` is what
the queue runner reads keys through, in its worker threads: each key is read once and
read again only when its file changes (a new keygen --force, a key put there by hand),
which is looked for at most once per `RECHECK` seconds per domain, so a message costs
no system call. A domain without a key costs the same; so a server that signs nothing
pays for nothing.
"""

from __future__ import annotations

import os
import pathlib
import re
import time
from collections.abc import Callable
from typing import Final

import attrs

from sansmail.storage.durable import fsync_dir, unlink_quietly, write_all

__all__ = ["RECHECK", "DkimKeys", "KeyExistsError", "key_path", "write_key"]

#: Seconds between two looks at one domain's key file.
RECHECK: Final = 1.0
_FILE_MODE: Final = 0o600
_DIR_MODE: Final = 0o700
# A selector or domain becomes a path component: DNS labels only, never "..", "/".
_NAME: Final = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\Z"
)


class KeyExistsError(FileExistsError):
    """A key is there already and --force was not given; str() names the file."""


def _check_name(kind: str, name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"{name!r} is not a valid DKIM {kind} (letters, digits, '-', '_', '.')")
    return name.lower()


def key_path(data_dir: pathlib.Path, domain: str, selector: str) -> pathlib.Path:
    """Where the key of `domain` under `selector` lives; ValueError for a name that is
    no DNS name (which could otherwise walk out of ``data_dir``)."""
    domain = _check_name("domain", domain.rstrip("."))
    selector = _check_name("selector", selector)
    return data_dir / "dkim" / domain / f"{selector}.key"


def write_key(
    data_dir: pathlib.Path,
    domain: str,
    selector: str,
    private_key: bytes,
    txt: str,
    *,
    force: bool = False,
) -> pathlib.Path:
    """Store `private_key` (PEM) and its TXT record value `txt`, each durable (written
    to a temporary file, fsync'd, renamed over, the directory fsync'd) before this
    returns; the key's path. An existing key is kept (`KeyExistsError`) unless `force`:
    replacing a published key breaks the signatures of mail still in transit."""
    path = key_path(data_dir, domain, selector)
    if path.exists() and not force:
        raise KeyExistsError(
            f"{path} exists: a key is published for it already (--force replaces it)"
        )
    for directory in (data_dir, data_dir / "dkim", path.parent):
        if not directory.is_dir():
            directory.mkdir(mode=_DIR_MODE)
            fsync_dir(directory.parent)
    # The record first: a key whose record is missing would leave the admin nothing
    # to publish, a record without its key only a file to overwrite.
    _write_durably(path.with_suffix(".txt"), txt.encode("ascii") + b"\n", 0o644)
    _write_durably(path, private_key, _FILE_MODE)
    fsync_dir(path.parent)
    return path


def _write_durably(path: pathlib.Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow it
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        unlink_quietly(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)


@attrs.define
class _Cached:
    key: bytes | None
    stamp: tuple[int, int, int] | None  # (inode, size, mtime_ns) of the file read
    checked: float


class DkimKeys:
    """The signing keys under ``data_dir/dkim`` for one selector (see the module
    docstring). Safe to share between worker threads without a lock: each cache entry
    is replaced whole, so two threads that race only both read the file."""

    def __init__(
        self,
        data_dir: pathlib.Path,
        selector: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = data_dir / "dkim"
        self.selector = _check_name("selector", selector)
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        self._root_checked: float | None = None
        self._root_exists = False

    def any(self) -> bool:
        """BLOCKING (at most once per `RECHECK`). Whether there is a key directory at
        all: without one, the runner skips every signing step."""
        now = self._clock()
        if self._root_checked is None or now - self._root_checked >= RECHECK:
            self._root_exists = self.root.is_dir()
            self._root_checked = now
        return self._root_exists

    def key_for(self, domain: str) -> bytes | None:
        """BLOCKING. The PEM key of `domain`, or None when there is none (or its name
        could not be a key's). An unreadable file counts as none."""
        domain = domain.lower().rstrip(".")
        now = self._clock()
        cached = self._cache.get(domain)
        if cached is not None and now - cached.checked < RECHECK:
            return cached.key
        try:
            path = key_path(self.root.parent, domain, self.selector)
        except ValueError:
            return None
        key, stamp = self._read(path, cached)
        self._cache[domain] = _Cached(key, stamp, now)
        return key

    @staticmethod
    def _read(
        path: pathlib.Path, cached: _Cached | None
    ) -> tuple[bytes | None, tuple[int, int, int] | None]:
        try:
            st = path.stat()
        except OSError:
            return None, None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if cached is not None and cached.stamp == stamp:
            return cached.key, stamp
        try:
            return path.read_bytes(), stamp
        except OSError:
            return None, None
