"""The user store: who may log in, and with which password, in one JSON file.

The file (``<data_dir>/users.json``, mode 0600) looks like::

    {"version": 1,
     "users": {"alice@example.test": {"address": "Alice@example.test",
                                       "password_hash": "$argon2id$v=19$m=65536,t=3,p=4$..."}}}

keyed by `Address.key` (lower-cased local part, canonical domain). Fields this version
does not know, at the top or per user, are kept when the file is rewritten, so a later
release can add its own (SCRAM keys, quotas) and an older CLI will not erase them; a file
whose version is newer than ours is read but never rewritten.

Writers (the CLI's ``user add/passwd/del``, possibly while the server runs) take an
exclusive ``flock`` on ``users.json.lock``, re-read the file, change it and replace it
atomically: a temporary file in the same directory, fsync, ``os.replace``, fsync of the
directory. Readers take no lock: a rename is atomic, so they see the old file or the new
one. The server polls `reload_if_changed` (one stat) about every second.

Passwords are hashed with argon2id (argon2-cffi's `PasswordHasher`, whose defaults are
RFC 9106 §4's second recommended option). Checking a password for an unknown user costs
the same as for a known one: it is verified against a dummy hash, so timing does not tell
which addresses exist.

All methods are blocking (file I/O, argon2); call them from a worker thread. They are safe
to call from several threads at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import secrets
import threading
from collections.abc import Callable, Iterator
from typing import Any, Final

import attrs
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from sansmail.address import Address

__all__ = ["User", "UserError", "UserStore", "check_password"]

FORMAT_VERSION: Final = 1
_FILE_MODE: Final = 0o600
_DIR_MODE: Final = 0o700

# (device, inode, size, mtime): every write replaces the file, so the inode changes even
# when two writes land within one mtime tick.
_Signature = tuple[int, int, int, int]


class UserError(Exception):
    """A user-level failure (unknown user, existing user, unusable password, broken
    file); str() is one line fit for the CLI's stderr."""


@attrs.frozen(kw_only=True)
class User:
    """One account. `address` as it was added (case kept), `key` its lookup form."""

    address: str
    key: str
    password_hash: str


def check_password(password: str) -> None:
    """Refuse what no login could ever send: an empty password, or one with NUL, CR or LF
    (SASL PLAIN separates fields with NUL; POP3 and IMAP are line-based)."""
    if not password:
        raise UserError("the password is empty")
    if any(ch in password for ch in "\x00\r\n"):
        raise UserError("the password contains NUL, CR or LF")


class UserStore:
    """The users of one server, backed by the JSON file at `path`.

    `hasher` is injectable so tests can use cheap argon2 parameters.
    """

    def __init__(self, path: pathlib.Path, *, hasher: PasswordHasher | None = None) -> None:
        self.path = pathlib.Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._tmp_path = self.path.with_name("." + self.path.name + ".tmp")
        self._hasher = hasher if hasher is not None else PasswordHasher()
        self._mutex = threading.Lock()  # in-process writers and reloads
        self._signature: _Signature | None = None
        self._users: dict[str, User] = {}
        self._dummy_hash: str | None = None
        with self._mutex:
            self._signature, document = self._read()
            self._users = _users_of(document, self.path)

    # -- reading --------------------------------------------------------------------

    def reload_if_changed(self) -> bool:
        """Re-read the file if it changed since we last read it; True when we did.

        A broken file raises UserError once per change and the users read before stay in
        force, so a half-edited file does not lock everybody out.
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            signature = None
        else:
            signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if signature == self._signature:
            return False
        with self._mutex:
            if signature == self._signature:
                return False
            try:
                read_signature, document = self._read()
                users = _users_of(document, self.path)
            except UserError:
                self._signature = signature
                raise
            self._signature = read_signature
            self._users = users
        return True

    def get(self, key: str) -> User | None:
        return self._users.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._users

    def list(self) -> list[User]:
        """Every user, sorted by key."""
        users = self._users
        return [users[key] for key in sorted(users)]

    def verify_password(self, key: str, password: str) -> bool:
        """argon2id verification; an unknown user costs the same and yields False."""
        user = self._users.get(key)
        if user is None:
            encoded = self._dummy()
        else:
            encoded = user.password_hash
        try:
            ok = self._hasher.verify(encoded, password)
        except (VerificationError, InvalidHashError):
            return False
        return ok and user is not None

    # -- writing --------------------------------------------------------------------

    def add(self, address: Address, password: str) -> User:
        """Create a user; UserError if it exists or the password is unusable."""
        check_password(password)
        key = address.key
        encoded = self._hasher.hash(password)

        def change(users: dict[str, Any]) -> None:
            if key in users:
                raise UserError(f"{key}: user already exists")
            users[key] = {"address": str(address), "password_hash": encoded}

        self._modify(change)
        return User(address=str(address), key=key, password_hash=encoded)

    def set_password(self, key: str, password: str) -> None:
        """Replace a user's password; UserError if the user does not exist."""
        check_password(password)
        encoded = self._hasher.hash(password)

        def change(users: dict[str, Any]) -> None:
            record = users.get(key)
            if record is None:
                raise UserError(f"{key}: no such user")
            # Other fields stay: those derived from the password (the SCRAM keys to
            # come) are the business of whoever adds them and must be replaced here too.
            record["password_hash"] = encoded

        self._modify(change)

    def delete(self, key: str) -> None:
        """Remove a user; UserError if the user does not exist."""

        def change(users: dict[str, Any]) -> None:
            if users.pop(key, None) is None:
                raise UserError(f"{key}: no such user")

        self._modify(change)

    # -- the file ---------------------------------------------------------------------

    def _dummy(self) -> str:
        # Made on first need with the same hasher, so it costs what a real check costs.
        # Two threads racing here both make a valid hash; either will do.
        if self._dummy_hash is None:
            self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))
        return self._dummy_hash

    def _read(self) -> tuple[_Signature | None, dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read()
        except FileNotFoundError:
            return None, {"version": FORMAT_VERSION, "users": {}}
        except OSError as exc:
            raise UserError(f"{self.path}: cannot read: {exc.strerror}") from exc
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise UserError(f"{self.path}: not valid JSON: {exc}") from exc
        _check_document(document, self.path)
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns), document

    def _modify(self, change: Callable[[dict[str, Any]], None]) -> None:
        with self._mutex, self._file_lock():
            _signature, document = self._read()
            if document["version"] > FORMAT_VERSION:
                raise UserError(
                    f"{self.path}: written by a newer sansmail (format version "
                    f"{document['version']}); refusing to rewrite it"
                )
            change(document["users"])
            users = _users_of(document, self.path)
            self._signature = self._write(document)
            self._users = users

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        # flock, not fcntl locks: those vanish when any fd of the file in the process is
        # closed, and are shared between threads.
        self.path.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _write(self, document: dict[str, Any]) -> _Signature:
        # Version first, users sorted: the file is also read by people and diffed.
        users = document["users"]
        ordered = {"version": document["version"]}
        ordered.update((k, document[k]) for k in sorted(document) if k not in ("version", "users"))
        ordered["users"] = {key: users[key] for key in sorted(users)}
        data = (json.dumps(ordered, indent=2, ensure_ascii=False) + "\n").encode()
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self._tmp_path, flags, _FILE_MODE)
        try:
            os.fchmod(fd, _FILE_MODE)  # a stale temp file may have had another mode
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        os.replace(self._tmp_path, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _check_document(document: object, path: pathlib.Path) -> None:
    if not isinstance(document, dict):
        raise UserError(f"{path}: expected a JSON object at the top")
    version = document.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UserError(f"{path}: 'version' must be a positive integer")
    users = document.get("users")
    if not isinstance(users, dict):
        raise UserError(f"{path}: 'users' must be an object keyed by address")
    for key, record in users.items():
        if not isinstance(record, dict):
            raise UserError(f"{path}: user {key!r}: expected an object")
        for field in ("address", "password_hash"):
            if not isinstance(record.get(field), str):
                raise UserError(f"{path}: user {key!r}: {field!r} must be a string")


def _users_of(document: dict[str, Any], path: pathlib.Path) -> dict[str, User]:
    _check_document(document, path)
    return {
        key: User(address=record["address"], key=key, password_hash=record["password_hash"])
        for key, record in document["users"].items()
    }
