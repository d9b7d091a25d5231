"""Fault injection for the storage's system calls: `Faults` makes os.write, fsync,
rename, link, replace, unlink, open(O_CREAT) and SQLite's commits fail with a chosen errno for
the paths a test picks, as a full disk or a dying one would, in-process (no root, no
mount), so the session tests run everywhere."""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest

#: The calls that write; `unlink` is left to the tests that ask for it, since a
#: cleanup that cannot unlink would hide the cleanup under test.
WRITES = frozenset({"write", "pwrite", "fsync", "fdatasync", "rename", "replace", "link", "open"})


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


class Faults:
    """While `on`, every write-like call on a path for which `where(path)` holds fails
    with `code`; `hits` counts the failures, so a test can tell that it failed
    something. SQLite commits fail with SQLITE_FULL when `sqlite` is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.on = False
        self.code = errno.ENOSPC
        self.where: Callable[[str], bool] = lambda path: True
        self.sqlite = False
        self.hits = 0
        self.calls = WRITES
        self._patch(monkeypatch)

    def fail(
        self,
        code: int = errno.ENOSPC,
        where: Callable[[str], bool] | None = None,
        calls: frozenset[str] = WRITES,
    ) -> Faults:
        """Fail the `calls` (os function names) on the paths `where` picks."""
        self.on = True
        self.code = code
        self.where = where or (lambda path: True)
        self.calls = calls
        return self

    def heal(self) -> None:
        self.on = False
        self.sqlite = False

    def _check(self, call: str, *paths: str) -> None:
        if self.on and call in self.calls and any(self.where(p) for p in paths if p):
            self.hits += 1
            raise OSError(self.code, os.strerror(self.code))

    def _patch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_write, real_fsync, real_fdatasync = os.write, os.fsync, os.fdatasync
        real_pwrite = os.pwrite
        real_rename, real_replace, real_link = os.rename, os.replace, os.link
        real_open = os.open
        real_unlink = os.unlink

        def write(fd: int, data: Any) -> int:
            self._check("write", _fd_path(fd))
            return real_write(fd, data)

        def pwrite(fd: int, data: Any, offset: int) -> int:
            self._check("pwrite", _fd_path(fd))
            return real_pwrite(fd, data, offset)

        def fsync(fd: Any) -> None:
            fd = fd if isinstance(fd, int) else fd.fileno()
            self._check("fsync", _fd_path(fd))
            real_fsync(fd)

        def fdatasync(fd: Any) -> None:
            fd = fd if isinstance(fd, int) else fd.fileno()
            self._check("fdatasync", _fd_path(fd))
            real_fdatasync(fd)

        def rename(src: Any, dst: Any, **kw: Any) -> None:
            self._check("rename", os.fspath(dst))
            real_rename(src, dst, **kw)

        def replace(src: Any, dst: Any, **kw: Any) -> None:
            self._check("replace", os.fspath(dst))
            real_replace(src, dst, **kw)

        def link(src: Any, dst: Any, **kw: Any) -> None:
            self._check("link", os.fspath(dst))
            real_link(src, dst, **kw)

        def unlink(path: Any, **kw: Any) -> None:
            self._check("unlink", os.fspath(path))
            real_unlink(path, **kw)

        def open_(path: Any, flags: int, *args: Any, **kw: Any) -> int:
            if flags & os.O_CREAT and isinstance(path, str | os.PathLike):
                text = os.fspath(path)
                if isinstance(text, str) and not os.path.exists(text):
                    self._check("open", text)
            return real_open(path, flags, *args, **kw)

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "pwrite", pwrite)
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        monkeypatch.setattr(os, "rename", rename)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "link", link)
        monkeypatch.setattr(os, "open", open_)
        monkeypatch.setattr(os, "unlink", unlink)


class FullConnection(sqlite3.Connection):
    """A connection whose write transactions fail at COMMIT as SQLite's do on a full
    disk (SQLITE_FULL), while `full(path)` holds for its database file; read
    transactions commit as ever."""

    full: Callable[[str], bool] = staticmethod(lambda path: False)  # type: ignore[assignment]
    writing = False

    def __init__(self, database: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(database, *args, **kwargs)
        self.path = os.fspath(database)

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        verb = sql.strip().upper()
        if verb.startswith("BEGIN IMMEDIATE"):
            self.writing = True
        elif verb in ("COMMIT", "ROLLBACK"):
            writing, self.writing = self.writing, False
            if verb == "COMMIT" and writing and type(self).full(self.path):
                error = sqlite3.OperationalError("database or disk is full")
                error.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
                error.sqlite_errorname = "SQLITE_FULL"  # type: ignore[attr-defined]
                raise error
        return super().execute(sql, *args)
