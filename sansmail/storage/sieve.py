"""Users' Sieve scripts on disk: the store that ManageSieve, the CLI and local delivery
share, and each user's duplicate-tracking database. Blocking file I/O for worker threads.

Theory of operation
-------------------
Layout, Pigeonhole's ``sieve_dir`` per mailbox: ``<data_dir>/sieve/<domain>/<local>/``
(each component escaped as the Maildir store escapes it, so no address climbs out), not
inside the Maildir, where a dot entry would be a Maildir++ folder. In it:

* ``NAME.sieve``: one script per file, mode 0600. A script's name never starts with "."
  (`valid_script_name`), so every dot entry below is the store's own;
* ``.dovecot.sieve``: the active script, a *relative* symlink to ``NAME.sieve``; no link,
  no active script;
* ``.duplicates.db``: SQLite, the keys vacation (RFC 5230 ``:days``) and the duplicate
  test (RFC 7352) remember, with their expiry (`DuplicateStore`);
* ``.sieve.lock``: `flock`'d around every change, so two ManageSieve sessions and the CLI
  cannot interleave a quota check with another's write, or activate a script being
  deleted. Reads take no lock: every change is a rename, so a reader sees before or after.
  Temporary files (``.tmp.*``) are made only under it, so any found by the next holder
  is a crashed writer's, and removed.

Durability: a script is written to a dot-named temporary file, fsync'd, renamed onto
``NAME.sieve``, and the directory fsync'd before `put` returns. Activation makes a
temporary symlink and renames it over ``.dovecot.sieve`` (never a moment with no link
when one script replaces another), then fsyncs the directory. A rename links the new
name (fsync) before the active link moves to it and the old name goes, so a crash leaves
the script under one name or both, and the link on one of them.

What a hand may leave there:

* a *dangling* ``.dovecot.sieve`` (its script deleted by hand): no active script
  (`active` is None, `list` marks none); `has_active` (one stat, which follows the link)
  says False too;
* a ``.dovecot.sieve`` that points outside the directory, or at something that is not a
  ``NAME.sieve`` with a valid name: not ours to follow, so no active script either; but
  `has_active` may say True when its target exists. Delivery then finds no script and
  keeps the message, which is what no script means;
* a *regular file* ``.dovecot.sieve`` (a script put there before ManageSieve was in
  use): as Pigeonhole does, it is taken into the store as the script ``dovecot.orig``
  (``dovecot.orig-2`` and so on if that name is taken) and made the active script, the
  first time the store looks at it (`list`, `active`, or any change), with a warning on
  ``sansmail.repair``. Nothing is lost and it stays active.

Quota (RFC 5804 §2.3 HAVESPACE, Pigeonhole's ``sieve_quota_*``): `SieveQuota` bounds the
number of scripts, one script's size, and the total of a user's scripts; a script being
replaced does not count against its replacement.

`DuplicateStore`: one table of (key, expires) in ``.duplicates.db``, opened per use
(vacation is rare; one user's file is small). ``synchronous=FULL`` (a reply suppressed
is a promise to the sender not to repeat it), a busy timeout so two deliveries to one user
wait for each other instead of failing, expired rows deleted at each record, a
bounded number at a time through an index on the expiry. A damaged file is set aside as
``.duplicates.db.corrupt`` (under the user's lock, unless a fresh look finds another
process repaired it first) with a warning on ``sansmail.repair`` and a fresh one made:
only memory of replies sent is lost, so a sender may get one vacation reply more.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import sqlite3
import stat
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from typing import Final, Protocol, TypeVar

import attrs

from sansmail.mail.address import MailboxId
from sansmail.storage.durable import fsync_dir, unlink_quietly, write_all
from sansmail.storage.maildir._maildir import _escape_component

__all__ = [
    "ACTIVE_LINK",
    "ADOPTED_NAME",
    "DUPLICATES_NAME",
    "LOCK_NAME",
    "SCRIPT_SUFFIX",
    "SIEVE_DIR",
    "ActiveScriptError",
    "DuplicateStore",
    "Duplicates",
    "InvalidScriptNameError",
    "NoSuchScriptError",
    "ScriptExistsError",
    "SieveQuota",
    "SieveQuotaError",
    "SieveScripts",
    "SieveStore",
    "SieveStoreError",
    "SieveStoreUnavailableError",
    "check_space",
    "valid_script_name",
]

#: The directory under data_dir that holds every user's scripts.
SIEVE_DIR: Final = "sieve"
SCRIPT_SUFFIX: Final = ".sieve"
ACTIVE_LINK: Final = ".dovecot.sieve"
DUPLICATES_NAME: Final = ".duplicates.db"
LOCK_NAME: Final = ".sieve.lock"
#: The name a hand-made regular ``.dovecot.sieve`` is kept under (as Pigeonhole does).
ADOPTED_NAME: Final = "dovecot.orig"
MAX_NAME_OCTETS: Final = 200
_TMP_PREFIX: Final = ".tmp."
_DAMAGED: Final = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})
_SWEEP_ROWS: Final = 256
_log = logging.getLogger("sansmail.repair")
_T = TypeVar("_T")


class SieveStoreError(Exception):
    """A script store operation failed; str() says why (fit for a client or the log)."""


class NoSuchScriptError(SieveStoreError):
    """No script by that name (ManageSieve's NONEXISTENT)."""


class ScriptExistsError(SieveStoreError):
    """A script by that name already exists (ManageSieve's ALREADYEXISTS)."""


class ActiveScriptError(SieveStoreError):
    """The active script cannot be deleted (ManageSieve's ACTIVE)."""


class InvalidScriptNameError(SieveStoreError):
    """The name cannot be a script's (`valid_script_name` says why)."""


class SieveStoreUnavailableError(SieveStoreError):
    """The store cannot be reached for now (its database is away): a temporary failure
    (ManageSieve's TRYLATER)."""


class SieveQuotaError(SieveStoreError):
    """Over a `SieveQuota` limit; `kind` is ManageSieve's QUOTA sub-code:
    "maxscripts", "maxsize" or "maxstorage" (RFC 5804 §1.3)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@attrs.frozen
class SieveQuota:
    """Per-user limits on scripts (Pigeonhole's ``sieve_quota_max_scripts``,
    ``sieve_max_script_size``, ``sieve_quota_max_storage``)."""

    max_scripts: int = 100
    max_script_size: int = 1 << 20  # octets
    max_storage: int = 10 << 20  # octets, all of one user's scripts


def valid_script_name(name: str) -> str | None:
    """None if `name` can be a script's name, else why not: RFC 5804 §1.6 (non-empty,
    Unicode NFC, no control characters, no U+2028/U+2029), and for the file system no
    "/", no leading "." and at most 200 octets of UTF-8."""
    if not name:
        return "a script name must not be empty"
    try:
        octets = name.encode("utf-8")
    except UnicodeEncodeError:
        return "a script name must be UTF-8"
    if len(octets) > MAX_NAME_OCTETS:
        return f"a script name must be at most {MAX_NAME_OCTETS} octets"
    for char in name:
        code = ord(char)
        if code < 0x20 or 0x7F <= code <= 0x9F or code in (0x2028, 0x2029):
            return "a script name must not contain control characters"
    if "/" in name:
        return 'a script name must not contain "/"'
    if name.startswith("."):
        return 'a script name must not start with "."'
    if not unicodedata.is_normalized("NFC", name):
        return "a script name must be in Unicode NFC"
    return None


def check_space(
    quota: SieveQuota, name: str, size: int, scripts: Iterable[tuple[str, int]]
) -> None:
    """Raise SieveQuotaError if a script of `size` octets named `name` would not fit
    beside a user's `scripts` (name, size), one of which it may replace."""
    if size > quota.max_script_size:
        raise SieveQuotaError(
            "maxsize", f"a script may have at most {quota.max_script_size} octets"
        )
    count = 0
    storage = 0
    replaced = False
    for other, other_size in scripts:
        if other == name:
            replaced = True
            continue
        count += 1
        storage += other_size
    if not replaced and count >= quota.max_scripts:
        raise SieveQuotaError("maxscripts", f"a user may have at most {quota.max_scripts} scripts")
    if storage + size > quota.max_storage:
        raise SieveQuotaError(
            "maxstorage", f"a user's scripts may have at most {quota.max_storage} octets in all"
        )


class Duplicates(Protocol):
    """One user's remembered keys (`DuplicateStore`, or the database's); blocking."""

    def seen(self, key: str, *, now: float) -> bool: ...

    def record(self, key: str, seconds: int, *, now: float) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Duplicates: ...

    def __exit__(self, *exc_info: object) -> None: ...


class SieveScripts(Protocol):
    """What ManageSieve, the CLI and local delivery need of a script store: `SieveStore`
    (files) and `sansmail.storage.pg._sieve.PgSieveStore` (the database) are both.
    Blocking; failures are `SieveStoreError` (`SieveStoreUnavailableError`: try later)."""

    quota: SieveQuota

    def list(self, mailbox: MailboxId) -> list[tuple[str, bool]]: ...

    def get(self, mailbox: MailboxId, name: str) -> bytes: ...

    def active(self, mailbox: MailboxId) -> tuple[str, bytes] | None: ...

    def has_active(self, mailbox: MailboxId) -> bool: ...

    def have_space(self, mailbox: MailboxId, name: str, size: int) -> None: ...

    def put(self, mailbox: MailboxId, name: str, text: bytes) -> None: ...

    def activate(self, mailbox: MailboxId, name: str | None) -> None: ...

    def delete(self, mailbox: MailboxId, name: str) -> None: ...

    def rename(self, mailbox: MailboxId, old: str, new: str) -> None: ...

    def duplicates(self, mailbox: MailboxId) -> Duplicates: ...


class SieveStore:
    """Every user's scripts under ``<data_dir>/sieve/``; see the module docstring."""

    def __init__(
        self, data_dir: str | os.PathLike[str], *, quota: SieveQuota = SieveQuota()
    ) -> None:
        self.root = os.path.join(os.fspath(data_dir), SIEVE_DIR)
        self.quota = quota

    def directory(self, mailbox: MailboxId) -> str:
        """The directory that holds `mailbox`'s scripts (it may not exist yet)."""
        return os.path.join(
            self.root, _escape_component(mailbox.domain), _escape_component(mailbox.local)
        )

    # -- reading ----------------------------------------------------------------------

    def list(self, mailbox: MailboxId) -> list[tuple[str, bool]]:
        """The user's scripts as (name, active), sorted by name."""
        directory = self._adopted(mailbox)
        try:
            entries = os.listdir(directory)
        except FileNotFoundError:
            return []
        active = _link_target(directory)
        names = [
            entry.removesuffix(SCRIPT_SUFFIX)
            for entry in entries
            if entry.endswith(SCRIPT_SUFFIX) and not entry.startswith(".")
        ]
        return [(name, name == active) for name in sorted(names)]

    def get(self, mailbox: MailboxId, name: str) -> bytes:
        """The script's text; NoSuchScriptError if there is none by that name."""
        path = self._script(mailbox, name)
        try:
            with open(path, "rb") as file:
                return file.read()
        except FileNotFoundError:
            raise NoSuchScriptError(f"no script named {name!r}") from None

    def active(self, mailbox: MailboxId) -> tuple[str, bytes] | None:
        """The active script's name and text, or None (no link, a dangling one, or one
        that points elsewhere than at one of the user's scripts)."""
        directory = self._adopted(mailbox)
        name = _link_target(directory)
        if name is None:
            return None
        try:
            with open(os.path.join(directory, name + SCRIPT_SUFFIX), "rb") as file:
                return name, file.read()
        except FileNotFoundError:
            return None

    def has_active(self, mailbox: MailboxId) -> bool:
        """Whether the user seems to have an active script: one stat (of the link's
        target), fit for routing mail at RCPT or DATA time. False for no link or a
        dangling one; may be True when `active` then finds none (a link to elsewhere)."""
        try:
            os.stat(os.path.join(self.directory(mailbox), ACTIVE_LINK))
        except OSError:
            return False
        return True

    def have_space(self, mailbox: MailboxId, name: str, size: int) -> None:
        """Raise SieveQuotaError if a script of `size` octets named `name` (replacing
        one of that name) would not fit; InvalidScriptNameError for a bad name."""
        self._check_name(name)
        check_space(self.quota, name, size, self._sizes(self.directory(mailbox)))

    # -- changing ---------------------------------------------------------------------

    def put(self, mailbox: MailboxId, name: str, text: bytes) -> None:
        """Store `text` as script `name`, replacing one of that name, durably; quota is
        checked under the user's lock. The syntax is the caller's to check."""
        self._check_name(name)
        with self._locked(mailbox, create=True) as directory:
            self.have_space(mailbox, name, len(text))
            tmp = os.path.join(directory, f"{_TMP_PREFIX}{secrets.token_hex(8)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                try:
                    write_all(fd, text)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, os.path.join(directory, name + SCRIPT_SUFFIX))
            except BaseException:
                unlink_quietly(tmp)
                raise
            fsync_dir(directory)

    def activate(self, mailbox: MailboxId, name: str | None) -> None:
        """Make script `name` the active one (NoSuchScriptError if there is none), or
        with None leave the user with no active script."""
        if name is not None:
            self._check_name(name)
        with self._locked(mailbox, create=False) as directory:
            link = os.path.join(directory, ACTIVE_LINK)
            if name is None:
                try:
                    os.unlink(link)
                except FileNotFoundError:
                    return
            else:
                if not os.path.isfile(os.path.join(directory, name + SCRIPT_SUFFIX)):
                    raise NoSuchScriptError(f"no script named {name!r}")
                _point_link(directory, name)
            fsync_dir(directory)

    def delete(self, mailbox: MailboxId, name: str) -> None:
        """Delete script `name`: NoSuchScriptError if there is none, ActiveScriptError if
        it is the active one (RFC 5804 §2.10)."""
        self._check_name(name)
        with self._locked(mailbox, create=False) as directory:
            if _link_target(directory) == name:
                raise ActiveScriptError(f"script {name!r} is active: deactivate it first")
            try:
                os.unlink(os.path.join(directory, name + SCRIPT_SUFFIX))
            except FileNotFoundError:
                raise NoSuchScriptError(f"no script named {name!r}") from None
            fsync_dir(directory)

    def rename(self, mailbox: MailboxId, old: str, new: str) -> None:
        """Rename script `old` to `new` (NoSuchScriptError, ScriptExistsError); if `old`
        was active, `new` is (RFC 5804 §2.11.1)."""
        self._check_name(old)
        self._check_name(new)
        with self._locked(mailbox, create=False) as directory:
            source = os.path.join(directory, old + SCRIPT_SUFFIX)
            target = os.path.join(directory, new + SCRIPT_SUFFIX)
            try:
                # A hard link refuses an existing target atomically, which rename would
                # replace; and the script is never without a name on disk.
                os.link(source, target)
            except FileNotFoundError:
                raise NoSuchScriptError(f"no script named {old!r}") from None
            except FileExistsError:
                raise ScriptExistsError(f"a script named {new!r} exists") from None
            fsync_dir(directory)
            if _link_target(directory) == old:
                _point_link(directory, new)
                fsync_dir(directory)
            os.unlink(source)
            fsync_dir(directory)

    def duplicates(self, mailbox: MailboxId) -> DuplicateStore:
        """The user's duplicate-tracking database (made on first use); close() it."""
        directory = self.directory(mailbox)
        _makedirs(directory)
        return DuplicateStore(os.path.join(directory, DUPLICATES_NAME))

    # -- inside -----------------------------------------------------------------------

    def _check_name(self, name: str) -> None:
        why = valid_script_name(name)
        if why is not None:
            raise InvalidScriptNameError(why)

    def _script(self, mailbox: MailboxId, name: str) -> str:
        self._check_name(name)
        return os.path.join(self.directory(mailbox), name + SCRIPT_SUFFIX)

    def _sizes(self, directory: str) -> Iterator[tuple[str, int]]:
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.endswith(SCRIPT_SUFFIX):
                continue
            try:
                size = entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue  # deleted since the listing
            yield entry.name.removesuffix(SCRIPT_SUFFIX), size

    @contextlib.contextmanager
    def _locked(self, mailbox: MailboxId, *, create: bool) -> Iterator[str]:
        """The user's directory, under its lock (made first when `create`; without it a
        missing directory means no scripts: NoSuchScriptError for the callers here,
        except deactivation, which has nothing to do)."""
        directory = self.directory(mailbox)
        if create:
            _makedirs(directory)
        try:
            fd = os.open(
                os.path.join(directory, LOCK_NAME),
                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                0o600,
            )
        except FileNotFoundError:
            if create:
                raise
            fd = -1
        try:
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_EX)
                _clean_tmp(directory)
                _adopt(directory)
            yield directory
        finally:
            if fd >= 0:
                os.close(fd)

    def _adopted(self, mailbox: MailboxId) -> str:
        # The common case is one lstat; only a regular .dovecot.sieve takes the lock.
        directory = self.directory(mailbox)
        try:
            mode = os.lstat(os.path.join(directory, ACTIVE_LINK)).st_mode
        except OSError:
            return directory
        if stat.S_ISREG(mode):
            with self._locked(mailbox, create=False):
                pass
        return directory


def _link_target(directory: str) -> str | None:
    """The script name ``.dovecot.sieve`` points at, if it points at one of ours."""
    try:
        target = os.readlink(os.path.join(directory, ACTIVE_LINK))
    except OSError:
        return None  # no link, or not a link
    if not target.endswith(SCRIPT_SUFFIX):
        return None
    name = target.removesuffix(SCRIPT_SUFFIX)
    if valid_script_name(name) is not None:
        return None  # a path elsewhere, or a name we would not have made
    return name


def _point_link(directory: str, name: str) -> None:
    """Make ``.dovecot.sieve`` point at `name`'s file, atomically: a new symlink
    renamed over the old one. The caller fsyncs the directory."""
    tmp = os.path.join(directory, f"{_TMP_PREFIX}{secrets.token_hex(8)}")
    os.symlink(name + SCRIPT_SUFFIX, tmp)
    try:
        os.rename(tmp, os.path.join(directory, ACTIVE_LINK))
    except BaseException:
        unlink_quietly(tmp)
        raise


def _clean_tmp(directory: str) -> None:
    """Remove temporary files a crashed writer left. Under the user's lock: every
    temporary file is made under it, so none found there is still being written."""
    for entry in os.listdir(directory):
        if entry.startswith(_TMP_PREFIX):
            unlink_quietly(os.path.join(directory, entry))


def _adopt(directory: str) -> None:
    """Take a regular ``.dovecot.sieve`` into the store (see the module docstring).
    Under the user's lock."""
    link = os.path.join(directory, ACTIVE_LINK)
    try:
        if not stat.S_ISREG(os.lstat(link).st_mode):
            return
    except FileNotFoundError:
        return
    for number in range(1, 1000):
        name = ADOPTED_NAME if number == 1 else f"{ADOPTED_NAME}-{number}"
        try:
            os.link(link, os.path.join(directory, name + SCRIPT_SUFFIX))
        except FileExistsError:
            continue
        break
    else:
        raise SieveStoreError(f"{directory}: no free name to keep {ACTIVE_LINK} under")
    fsync_dir(directory)
    _point_link(directory, name)
    fsync_dir(directory)
    _log.warning(
        "%s: the regular file %s was taken in as the script %r and kept active",
        directory,
        ACTIVE_LINK,
        name,
    )


def _makedirs(directory: str) -> None:
    """Make `directory` and its missing parents (mode 0700), each new entry durable."""
    parent = os.path.dirname(directory)
    if os.path.isdir(directory):
        return
    _makedirs(parent)
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        return
    fsync_dir(parent)


class DuplicateStore:
    """Keys remembered until they expire, in one user's ``.duplicates.db``: vacation's
    once per ``:days`` (RFC 5230 §4.2) and the duplicate test's ids (RFC 7352). Opened by
    `SieveStore.duplicates`; blocking; close() it. Failures of the database other than a
    damaged file (repaired on the spot) raise SieveStoreError."""

    def __init__(self, path: str, *, busy_timeout: float = 10.0) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._run(lambda conn: None)  # open (and repair) now

    def seen(self, key: str, *, now: float) -> bool:
        """Whether `key` was recorded and has not expired at `now`."""
        return self._run(
            lambda conn: (
                conn.execute(
                    "SELECT 1 FROM duplicates WHERE key = ? AND expires > ?", (key, now)
                ).fetchone()
                is not None
            )
        )

    def record(self, key: str, seconds: int, *, now: float) -> None:
        """Remember `key` until `now` + `seconds` (replacing what was remembered)."""

        def write(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.execute(
                    "INSERT OR REPLACE INTO duplicates (key, expires) VALUES (?, ?)",
                    (key, now + seconds),
                )
                # Through the index, so cheap when nothing has expired, and bounded.
                _sweep(conn, now)

        self._run(write)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> DuplicateStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self, step: Callable[[sqlite3.Connection], _T]) -> _T:
        for attempt in range(2):
            try:
                if self._conn is None:
                    self._conn = self._open()
                return step(self._conn)
            except (sqlite3.Error, OSError) as exc:
                self.close()
                if attempt or not _damaged(exc):
                    raise SieveStoreError(f"{self.path}: {exc}") from exc
                self._set_aside(exc)
        raise AssertionError("unreachable")

    def _set_aside(self, exc: BaseException) -> None:
        # Under the user's lock, and only if a fresh look still finds it damaged: two
        # deliveries that both hit the damage must not set aside each other's repair.
        lock = os.path.join(os.path.dirname(self.path), LOCK_NAME)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if _sound(self.path):
                    return  # repaired by another process meanwhile
                os.replace(self.path, self.path + ".corrupt")
                for suffix in ("-journal", "-wal", "-shm"):
                    unlink_quietly(self.path + suffix)
            finally:
                os.close(fd)
        except OSError as again:
            raise SieveStoreError(f"{self.path}: {exc}") from again
        _log.warning(
            "duplicates database %s was damaged (%s): set aside as %s.corrupt and started"
            " afresh (a sender may get one vacation reply more)",
            self.path,
            exc,
            self.path,
        )

    def _open(self) -> sqlite3.Connection:
        # Made by us first, so that SQLite never makes it world-readable (it holds
        # correspondents' addresses).
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        conn = sqlite3.connect(
            self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA synchronous=FULL")
            with _transaction(conn):
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS duplicates"
                    " (key TEXT PRIMARY KEY NOT NULL, expires REAL NOT NULL)"
                )
                conn.execute(
                    "CREATE INDEX IF NOT EXISTS duplicates_expires ON duplicates (expires)"
                )
        except BaseException:
            conn.close()
            raise
        return conn


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    # The write lock first (IMMEDIATE), so two deliveries to one user are ordered by
    # the busy timeout instead of one failing half-way with SQLITE_BUSY.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _sweep(conn: sqlite3.Connection, now: float) -> None:
    conn.execute(
        "DELETE FROM duplicates WHERE rowid IN"
        " (SELECT rowid FROM duplicates WHERE expires <= ? ORDER BY expires LIMIT ?)",
        (now, _SWEEP_ROWS),
    )


def _sound(path: str) -> bool:
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            return bool(conn.execute("PRAGMA quick_check").fetchone()[0] == "ok")
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return False


def _damaged(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.DatabaseError) and (
        getattr(exc, "sqlite_errorname", "") in _DAMAGED
    )
