"""The user store: who may log in, and with which password, in one JSON file.

The file (``<data_dir>/users.json``, mode 0600) looks like::

    {"version": 2,
     "users": {"alice@example.test": {
         "address": "Alice@example.test",
         "password_hash": "$argon2id$v=19$m=65536,t=3,p=4$...",
         "scram-sha-1":   {"salt": "<base64>", "iterations": 4096,
                           "stored_key": "<base64>", "server_key": "<base64>"},
         "scram-sha-256": {...the same, with 32-byte keys...},
         "cram-md5": "<64 hex digits>",
         "quota": 10737418240}}}

keyed by `Address.key` (lower-cased local part, canonical domain). Fields this version
does not know, at the top or per user, are kept when the file is rewritten, so a later
release can add its own and an older CLI will not erase them; a file whose version is
newer than ours is read but never rewritten.

``quota`` (optional) is the user's own storage limit in octets, 0 for none; without it
the user has ``[quota] storage`` (`set_quota`, ``sansmail-trio user quota``).

What a password yields. Every password set by `add` or `set_password` is stored four ways,
and all four are replaced together so that an old password never survives in one of them:

- ``password_hash``, argon2id, checked for PLAIN and LOGIN (`verify_password`);
- ``scram-sha-1`` and ``scram-sha-256``, the RFC 5802 §3 server keys (16 random salt
  bytes per hash, `SCRAM_MIN_ITERATIONS` by default), handed to the SCRAM mechanisms by
  `get_scram`. SCRAM hashes the SASLprep'd password (RFC 5802 §2.2), so passwords that
  SASLprep refuses (RFC 4013 §2.3: control characters, unassigned code points ...) are
  refused here, at `add`/`set_password`, rather than leaving a user who can never use
  SCRAM;
- ``cram-md5``, the HMAC-MD5 half-states (Dovecot's layout), only when the store was made
  with ``cram_md5=True``. They are password-equivalent for CRAM-MD5, which is why they are
  kept only where that mechanism is enabled. They can only be computed from the password,
  so turning CRAM-MD5 on later takes effect for each user at their next password change
  (as with Dovecot's CRAM-MD5 scheme); turning it off removes them at the next change.

Users written before SCRAM keys existed (format version 1) have only the argon2 hash: they
keep working for PLAIN and LOGIN, and `get_scram` answers None for them until their next
password change. Writing the keys bumped the format to version 2, so that an older sansmail,
which would change ``password_hash`` and leave stale SCRAM keys behind, refuses to rewrite
the file instead.

Unknown users and SCRAM. The SCRAM server answers an unknown user with a salt derived from
the name and a server secret (RFC 5802 §5.1), so that the answer is stable and looks real.
That secret is `scram_secret`: 32 random bytes in ``users.json.scram-secret`` (hex, mode
0600), made on first use and kept across restarts; without it the invented salts would
change at each restart and betray that the name is unknown.

Writers (the CLI's ``user add/passwd/del``, possibly while the server runs) take an
exclusive ``flock`` on ``users.json.lock``, re-read the file, change it and replace it
atomically: a temporary file in the same directory, fsync, ``os.replace``, fsync of the
directory. Readers take no lock: a rename is atomic, so they see the old file or the new
one.

In force when the writer returns. After its durable write a writer bumps the users
counter of `sansmail.storage.generations` (``<data_dir>/generations``, next to
``users.json``). A store made with ``generations=`` (the server's) compares that counter,
a word of shared memory, with the one it saw before it last read the file, at every
lookup; when it moved, the lookup re-reads the file first. So the next RCPT or login
after ``user add/passwd/del`` exits sees the change, in every server process, and no
lookup costs a system call otherwise. That re-read happens on the thread of the lookup:
the event loop's for an RCPT (``in``) or a SCRAM lookup, a worker thread's for
`verify_password`. It costs one read and one JSON parse of the file; users whose record
did not change keep their `User` object, so it is about 5 ms per thousand users, paid
once per change per process. The server's once-a-second `reload_if_changed`, run in a
worker thread, also follows the counter, so a change not looked up at once is read off
the loop; and it compares one ``stat`` with what was read, for edits made by hand (a
restored backup) rather than through this class.

A broken file never stops the server. Every write also leaves its document in
``users.json.bak``, and a server store (one made with ``generations=``) keeps that copy
equal to the last ``users.json`` it read whole, so a valid edit by hand is kept too. A
server starting on a file that does not parse (or finding it gone while the copy is
there) serves the copy's users and says so at warning level, once; the broken file is
left as it is, for the admin to mend or replace (``cp users.json.bak users.json``), and
is read again as soon as it changes. With no good copy either, the store is
*unavailable*: every login fails and ``in`` raises `UsersUnavailableError`, which the
SMTP server answers with a temporary failure (451 4.3.0), so no mail to a local user
bounces while the file is broken. A running server that finds the file broken keeps the
users it has (`reload_if_changed`). The CLI's store (no ``generations``) raises
UserError instead: ``sansmail-trio user ...`` prints one line and changes nothing.

Passwords are hashed with argon2id (argon2-cffi's `PasswordHasher`, whose defaults are
RFC 9106 §4's second recommended option). Checking a password for an unknown user costs
the same as for a known one: it is verified against a dummy hash, so timing does not tell
which addresses exist.

Writing, reloading, `verify_password` and `scram_secret` block (file I/O, argon2, PBKDF2):
call them from a worker thread. The lookups (`get`, `get_scram`, `get_cram_md5`, ``in``)
only read memory, except for the one re-read after a change described above. A reload
swaps in a whole new table, tagged with the counter it was read under, so lookups are
safe while a reload runs in another thread; two reloads racing may leave the older table
in place, but then its counter is the older too, and the next lookup reads again.
Writers serialise through the file lock; one instance should not be written to from two
threads at once (the CLI never does, the server never writes).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import pathlib
import secrets
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, Protocol

import attrs
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from sansmail.mail.address import Address
from sansmail.sasl import (
    SCRAM_MIN_ITERATIONS,
    CramMD5Credentials,
    SASLError,
    ScramCredentials,
    decode_base64_strict,
    derive_cram_md5_credentials,
    derive_scram_credentials,
    encode_base64,
    saslprep,
)
from sansmail.storage.durable import fsync_dir, unlink_quietly, write_all
from sansmail.storage.generations import Counter, Generations, bump

__all__ = [
    "MAX_PASSWORD_OCTETS",
    "SCRAM_HASHES",
    "User",
    "UserError",
    "UserStore",
    "Users",
    "UsersUnavailableError",
    "check_password",
    "new_record",
    "password_fields",
    "replace_password",
    "replace_quota",
    "user_of",
]

FORMAT_VERSION: Final = 2
#: The longest password accepted, in UTF-8 octets. A PLAIN message carries authzid,
#: authcid and password in at most 4096 octets (`sansmail.sasl.MAX_MESSAGE_OCTETS`), so a
#: password near that size could be set but never sent; 1024 leaves room for two
#: 254-octet addresses (RFC 5321 §4.5.3.1.3) and is longer than any passphrase.
MAX_PASSWORD_OCTETS: Final = 1024
#: The SCRAM hashes every password gets keys for (SCRAM-SHA-1, SCRAM-SHA-256).
SCRAM_HASHES: Final = ("sha1", "sha256")
_SCRAM_FIELDS: Final = {"sha1": "scram-sha-1", "sha256": "scram-sha-256"}
_CRAM_MD5_FIELD: Final = "cram-md5"
_QUOTA_FIELD: Final = "quota"
# The length the SCRAM mechanism gives the salts it invents for unknown users, so that
# real and invented salts look alike.
_SALT_OCTETS: Final = 16
_SECRET_OCTETS: Final = 32
_FILE_MODE: Final = 0o600
_DIR_MODE: Final = 0o700

_log = logging.getLogger("sansmail.repair")

# (device, inode, size, mtime): every write replaces the file, so the inode changes even
# when two writes land within one mtime tick.
_Signature = tuple[int, int, int, int]


class UserError(Exception):
    """A user-level failure (unknown user, existing user, unusable password, broken
    file); str() is one line fit for the CLI's stderr."""


class UsersUnavailableError(UserError):
    """No users can be told apart from strangers: the file is broken and there is no
    good copy (see the module docstring). Answer with a temporary failure."""


@attrs.frozen(kw_only=True)
class User:
    """One account. `address` as it was added (case kept), `key` its lookup form; the
    SCRAM and CRAM-MD5 credentials are None for users who have none (see the module
    docstring)."""

    address: str
    key: str
    password_hash: str
    scram_sha1: ScramCredentials | None = None
    scram_sha256: ScramCredentials | None = None
    cram_md5: CramMD5Credentials | None = None
    #: The user's own storage limit in octets (0: none); None: ``[quota] storage``.
    quota: int | None = None


@attrs.frozen
class _Loaded:
    """One read of the file: the users counter seen before it, what was read, the raw
    records (to keep the `User` of an unchanged record at the next read) and the users."""

    generation: int
    signature: _Signature | None
    records: Mapping[str, Any]
    users: dict[str, User]
    #: Why no users are known (the file and its copy are broken), or None.
    unavailable: str | None = None


def check_password(password: str) -> None:
    """Refuse a password no login could send or SCRAM could hash: empty; with NUL, CR or
    LF (SASL PLAIN separates fields with NUL; POP3 and IMAP are line-based); not UTF-8;
    longer than `MAX_PASSWORD_OCTETS`; or refused by SASLprep (RFC 4013, which SCRAM
    applies to passwords, RFC 5802 §2.2)."""
    if not password:
        raise UserError("the password is empty")
    if any(ch in password for ch in "\x00\r\n"):
        raise UserError("the password contains NUL, CR or LF")
    try:
        octets = len(password.encode("utf-8"))
    except UnicodeEncodeError:
        raise UserError("the password is not valid UTF-8 text") from None
    if octets > MAX_PASSWORD_OCTETS:
        raise UserError(f"the password is longer than {MAX_PASSWORD_OCTETS} octets")
    try:
        prepared = saslprep(password)
    except SASLError as exc:
        raise UserError(
            f"the password cannot be used with SCRAM (RFC 4013 {exc}); "
            "avoid control characters and unassigned or private-use code points"
        ) from None
    if not prepared:
        raise UserError("the password is empty once invisible characters are removed")


def password_fields(
    password: str, hasher: PasswordHasher, *, cram_md5: bool, iterations: int
) -> dict[str, Any]:
    """The record fields a password yields (see the module docstring): the argon2id
    hash, fresh SCRAM keys for every hash in `SCRAM_HASHES`, and the CRAM-MD5 half-states
    when `cram_md5`. CPU-bound: argon2 and two PBKDF2 runs of `iterations`."""
    fields: dict[str, Any] = {"password_hash": hasher.hash(password)}
    for hash_name, field in _SCRAM_FIELDS.items():
        salt = secrets.token_bytes(_SALT_OCTETS)
        keys = derive_scram_credentials(password, salt, iterations, hash_name)
        fields[field] = _scram_to_json(keys)
    if cram_md5:
        fields[_CRAM_MD5_FIELD] = derive_cram_md5_credentials(password).to_hex()
    return fields


def replace_password(record: dict[str, Any], fields: Mapping[str, Any]) -> None:
    """Put a new password's `fields` in `record`: fields we do not know stay; every one
    derived from the password is replaced or removed, or the old password would still
    open that door."""
    record.update(fields)
    if _CRAM_MD5_FIELD not in fields:
        record.pop(_CRAM_MD5_FIELD, None)


def replace_quota(record: dict[str, Any], octets: int | None) -> None:
    """Give `record` its own storage limit `octets`, or with None none of its own."""
    _check_quota(octets)
    if octets is None:
        record.pop(_QUOTA_FIELD, None)
    else:
        record[_QUOTA_FIELD] = octets


def new_record(address: Address, fields: Mapping[str, Any], quota: int | None) -> dict[str, Any]:
    """The record of a user added with the password `fields` and `quota`."""
    _check_quota(quota)
    record = {"address": str(address), **fields}
    if quota is not None:
        record[_QUOTA_FIELD] = quota
    return record


def user_of(key: str, record: dict[str, Any], where: str) -> User:
    """The `User` of `record`; UserError (naming `where`) for a malformed one."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: user {key!r}: expected an object")
    for field in ("address", "password_hash"):
        if not isinstance(record.get(field), str):
            raise UserError(f"{where}: user {key!r}: {field!r} must be a string")
    return _user_of(key, record, where)


class Users(Protocol):
    """What the sessions, the queue runner and the CLI need of a user store: `UserStore`
    (``users.json``) and `sansmail.storage.pg._users.PgUserStore` (the database) are
    both. The lookups (`get`, `own_quota`, ``in``, `get_scram`, `get_cram_md5`,
    `unavailable`) may be called on the event loop; the rest block (a worker thread)."""

    def get(self, key: str) -> User | None: ...

    def own_quota(self, key: str) -> int | None: ...

    def __contains__(self, key: object) -> bool: ...

    def list(self) -> list[User]: ...

    def verify_password(self, key: str, password: str) -> bool: ...

    def get_scram(self, key: str, hash_name: str) -> ScramCredentials | None: ...

    def get_cram_md5(self, key: str) -> CramMD5Credentials | None: ...

    @property
    def scram_iterations(self) -> int: ...

    @property
    def unavailable(self) -> str | None: ...

    def scram_secret(self) -> bytes: ...

    def reload_if_changed(self) -> bool: ...

    def add(self, address: Address, password: str, *, quota: int | None = None) -> User: ...

    def set_password(self, key: str, password: str) -> None: ...

    def set_quota(self, key: str, octets: int | None) -> None: ...

    def delete(self, key: str) -> None: ...


class UserStore:
    """The users of one server, backed by the JSON file at `path`.

    `hasher` is injectable so tests can use cheap argon2 parameters. `cram_md5` says
    whether CRAM-MD5 is enabled, and so whether passwords set through this object also
    store CRAM-MD5 credentials. `scram_iterations` is the PBKDF2 count for new SCRAM
    keys (at least `SCRAM_MIN_ITERATIONS`, RFC 7677 §4). `generations` (the server's)
    makes every lookup follow the changes other processes announce (see the module
    docstring); without it the store changes only through `reload_if_changed`.
    """

    def __init__(
        self,
        path: pathlib.Path,
        *,
        hasher: PasswordHasher | None = None,
        cram_md5: bool = False,
        scram_iterations: int = SCRAM_MIN_ITERATIONS,
        generations: Generations | None = None,
    ) -> None:
        if scram_iterations < SCRAM_MIN_ITERATIONS:
            raise ValueError(f"scram_iterations must be at least {SCRAM_MIN_ITERATIONS}")
        self.path = pathlib.Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._backup_path = self.path.with_name(self.path.name + ".bak")
        self._tmp_path = self.path.with_name("." + self.path.name + ".tmp")
        self._secret_path = self.path.with_name(self.path.name + ".scram-secret")
        self._hasher = hasher if hasher is not None else PasswordHasher()
        self._cram_md5 = cram_md5
        self._scram_iterations = scram_iterations
        self._generations = generations
        self._dummy_hash: str | None = None
        self._secret: bytes | None = None
        # A reload done by a lookup is reported by the next `reload_if_changed`: a
        # success as its True, a broken file as its UserError.
        self._reloaded = False
        self._error: UserError | None = None
        self._serving = generations is not None
        try:
            self._loaded = self._load(None, self._generation())
        except UserError as exc:
            if not self._serving:
                raise
            self._loaded = self._fall_back(exc)

    # -- reading --------------------------------------------------------------------

    def reload_if_changed(self) -> bool:
        """Re-read the file if it changed since we last read it: its users counter
        moved, or (an edit by hand) its ``stat`` differs. True when the file was
        re-read, here or by a lookup, since the last call.

        A broken file raises UserError once per change and the users read before stay in
        force, so a half-edited file does not lock everybody out.
        """
        signature = _stat_signature(self.path)
        loaded = self._loaded
        if self._generation() != loaded.generation or signature != loaded.signature:
            self._reload(signature)
        error, self._error = self._error, None
        if error is not None:
            raise error
        reloaded, self._reloaded = self._reloaded, False
        return reloaded

    def _current(self) -> _Loaded:
        """What is in force, re-read first if another process announced a change."""
        loaded = self._loaded
        generations = self._generations
        if generations is not None and generations[Counter.USERS] != loaded.generation:
            loaded = self._reload(None)
        return loaded

    def _users(self) -> dict[str, User]:
        return self._current().users

    @property
    def unavailable(self) -> str | None:
        """Why no user can be recognised (a broken file without a good copy), or None."""
        return self._current().unavailable

    def _generation(self) -> int:
        return 0 if self._generations is None else self._generations[Counter.USERS]

    def _reload(self, signature: _Signature | None) -> _Loaded:
        # The counter is read before the file: a write landing meanwhile bumps it again,
        # and the next lookup reads once more.
        generation = self._generation()
        previous = self._loaded
        try:
            loaded = self._load(previous, generation)
        except UserError as exc:
            # Keep the users; remember what failed so that it is reported (and retried)
            # once per change, not at every lookup.
            if signature is None:
                signature = _stat_signature(self.path)
            loaded = attrs.evolve(previous, generation=generation, signature=signature)
            self._error = exc
        else:
            self._reloaded = True
        self._loaded = loaded
        return loaded

    def get(self, key: str) -> User | None:
        return self._users().get(key)

    def own_quota(self, key: str) -> int | None:
        """User `key`'s own storage limit (0: none); None for ``[quota] storage``, also
        for no such user. `QuotaLimits` takes it as its lookup."""
        user = self.get(key)
        return None if user is None else user.quota

    def __contains__(self, key: object) -> bool:
        """Whether `key` is a user; `UsersUnavailableError` when that cannot be told."""
        loaded = self._current()
        if loaded.unavailable is not None:
            raise UsersUnavailableError(loaded.unavailable)
        return key in loaded.users

    def list(self) -> list[User]:
        """Every user, sorted by key."""
        users = self._users()
        return [users[key] for key in sorted(users)]

    def verify_password(self, key: str, password: str) -> bool:
        """argon2id verification; an unknown user costs the same and yields False."""
        user = self._users().get(key)
        if user is None:
            encoded = self._dummy()
        else:
            encoded = user.password_hash
        try:
            ok = self._hasher.verify(encoded, password)
        except (VerificationError, InvalidHashError):
            return False
        return ok and user is not None

    def get_scram(self, key: str, hash_name: str) -> ScramCredentials | None:
        """The user's SCRAM credentials for `hash_name` (``"sha1"`` or ``"sha256"``);
        None for an unknown user or one whose password predates SCRAM keys."""
        field = _SCRAM_FIELDS.get(hash_name)
        if field is None:
            raise ValueError(f"hash_name must be one of {SCRAM_HASHES}")
        user = self._users().get(key)
        if user is None:
            return None
        return user.scram_sha1 if hash_name == "sha1" else user.scram_sha256

    def get_cram_md5(self, key: str) -> CramMD5Credentials | None:
        """The user's CRAM-MD5 credentials; None for an unknown user or one whose password
        was last set while CRAM-MD5 was disabled."""
        user = self._users().get(key)
        return None if user is None else user.cram_md5

    @property
    def scram_iterations(self) -> int:
        """The iteration count of new SCRAM keys; give it to the SCRAM server as
        ``fake_iterations`` so an unknown user's answer looks like a known one's."""
        return self._scram_iterations

    def scram_secret(self) -> bytes:
        """The server-wide secret (32 bytes) from which SCRAM invents salts for unknown
        users: read from ``<path>.scram-secret``, created there (mode 0600) on first use.
        UserError if the file exists but does not hold 64 hex digits."""
        if self._secret is None:
            self._secret = self._read_or_make_secret()
        return self._secret

    # -- writing --------------------------------------------------------------------

    def add(self, address: Address, password: str, *, quota: int | None = None) -> User:
        """Create a user (with their own storage limit `quota`, see `set_quota`);
        UserError if it exists or the password is unusable."""
        check_password(password)
        _check_quota(quota)
        key = address.key
        record = new_record(address, self._password_fields(password), quota)

        def change(users: dict[str, Any]) -> None:
            if key in users:
                raise UserError(f"{key}: user already exists")
            users[key] = record

        self._modify(change)
        return _user_of(key, record, self.path)

    def set_password(self, key: str, password: str) -> None:
        """Replace a user's password and every credential derived from it; UserError if
        the user does not exist or the password is unusable."""
        check_password(password)
        fields = self._password_fields(password)

        def change(users: dict[str, Any]) -> None:
            record = users.get(key)
            if record is None:
                raise UserError(f"{key}: no such user")
            replace_password(record, fields)

        self._modify(change)

    def set_quota(self, key: str, octets: int | None) -> None:
        """Give a user their own storage limit (0: none), or None to follow ``[quota]
        storage`` again; UserError if the user does not exist."""
        _check_quota(octets)

        def change(users: dict[str, Any]) -> None:
            record = users.get(key)
            if record is None:
                raise UserError(f"{key}: no such user")
            replace_quota(record, octets)

        self._modify(change)

    def delete(self, key: str) -> None:
        """Remove a user; UserError if the user does not exist."""

        def change(users: dict[str, Any]) -> None:
            if users.pop(key, None) is None:
                raise UserError(f"{key}: no such user")

        self._modify(change)

    # -- the file ---------------------------------------------------------------------

    def _password_fields(self, password: str) -> dict[str, Any]:
        # CPU-bound (argon2, two PBKDF2 runs): done before taking the file lock, so a
        # concurrent writer waits for one file update, not for our hashing.
        return password_fields(
            password, self._hasher, cram_md5=self._cram_md5, iterations=self._scram_iterations
        )

    def _read_or_make_secret(self) -> bytes:
        try:
            return self._read_secret()
        except FileNotFoundError:
            pass
        except UserError:
            if not self._serving:
                raise
            self._set_secret_aside()
        self.path.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        # Written under a unique name, then published with link(), which (unlike
        # rename) fails if the name exists: when two processes race, both end up
        # reading the one that won, and nobody ever reads a half-written file.
        tmp = self.path.with_name(f".{self._secret_path.name}.{secrets.token_hex(8)}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, _FILE_MODE)
        try:
            try:
                os.write(fd, secrets.token_bytes(_SECRET_OCTETS).hex().encode() + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, self._secret_path)
        finally:
            os.unlink(tmp)
        fsync_dir(self.path.parent)
        return self._read_secret()

    def _set_secret_aside(self) -> None:
        """A server meeting a damaged secret file: renamed ``.broken`` (under the file
        lock, so that two processes do not set aside each other's new one) for a new one
        to be made. Only the salts invented for unknown users change with it."""
        with self._file_lock():
            try:
                self._read_secret()
            except FileNotFoundError:
                return
            except UserError as exc:
                broken = self._secret_path.with_name(self._secret_path.name + ".broken")
                os.replace(self._secret_path, broken)
                _log.warning("%s; set aside as %s, and a new secret made", exc, broken.name)

    def _read_secret(self) -> bytes:
        try:
            text = self._secret_path.read_bytes().strip()
        except FileNotFoundError:
            raise  # the caller makes one
        except OSError as exc:
            raise UserError(f"{self._secret_path}: cannot read: {exc.strerror}") from exc
        try:
            secret = bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            secret = b""
        if len(secret) != _SECRET_OCTETS:
            raise UserError(f"{self._secret_path}: expected {2 * _SECRET_OCTETS} hex digits")
        return secret

    def _dummy(self) -> str:
        # Made on first need with the same hasher, so it costs what a real check costs.
        # Two threads racing here both make a valid hash; either will do.
        if self._dummy_hash is None:
            self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))
        return self._dummy_hash

    def _read(self) -> tuple[_Signature | None, dict[str, Any], bytes]:
        try:
            signature, document, data = _read_document(self.path)
        except FileNotFoundError:
            if self._serving and self._backup_path.exists():
                # Users do not vanish by themselves: `del` of the last one leaves an
                # empty list. Serving nobody would bounce every local recipient.
                raise UserError(f"{self.path}: missing") from None
            return None, {"version": FORMAT_VERSION, "users": {}}, b""
        return signature, document, data

    def _load(self, previous: _Loaded | None, generation: int) -> _Loaded:
        signature, document, data = self._read()
        users = _users_of(document, self.path, previous)
        if self._serving and signature is not None:
            self._keep_copy(data)
        return _Loaded(
            generation=generation,
            signature=signature,
            records=document["users"],
            users=users,
        )

    def _fall_back(self, broken: UserError) -> _Loaded:
        """At start, with `broken` the failure to read the file: the users of the last
        good copy, or none at all (unavailable). The broken file is left as it is; its
        signature is kept so that mending it is noticed at once."""
        generation = self._generation()
        signature = _stat_signature(self.path)
        try:
            _signature, document, _data = _read_document(self._backup_path)
            users = _users_of(document, self._backup_path)
        except FileNotFoundError:
            why = f"{broken}; there is no {self._backup_path.name} to serve instead"
        except UserError as exc:
            why = f"{broken}; and the copy is no good either ({exc})"
        else:
            _log.warning(
                "%s; serving the %d user(s) of %s, the last good copy, until it is mended"
                " (it is left as it is)",
                broken,
                len(users),
                self._backup_path,
            )
            return _Loaded(generation, signature, document["users"], users)
        _log.error(
            "%s: logins fail and mail to local users is deferred (451) until it is mended",
            why,
        )
        return _Loaded(generation, signature, {}, {}, unavailable=why)

    def _keep_copy(self, data: bytes) -> None:
        """Make ``users.json.bak`` hold `data` (a whole, valid file), unless it does."""
        try:
            if self._backup_path.read_bytes() == data:
                return
        except OSError:
            pass
        tmp = self.path.with_name(f".{self._backup_path.name}.{secrets.token_hex(8)}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, _FILE_MODE)
            try:
                write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self._backup_path)
        except OSError as exc:
            # Only the copy is at stake, never the users in force: say so and go on.
            unlink_quietly(tmp)
            _log.warning("cannot keep %s: %s", self._backup_path, exc.strerror or exc)

    def _modify(self, change: Callable[[dict[str, Any]], None]) -> None:
        with self._file_lock():
            generation = self._generation()
            _signature, document, _data = self._read()
            if document["version"] > FORMAT_VERSION:
                raise UserError(
                    f"{self.path}: written by a newer sansmail (format version "
                    f"{document['version']}); refusing to rewrite it"
                )
            change(document["users"])
            # Whatever we wrote may hold version-2 fields (see the module docstring).
            document["version"] = FORMAT_VERSION
            users = _users_of(document, self.path, self._loaded)
            signature = self._write(document)
            self._loaded = _Loaded(
                generation=generation, signature=signature, records=document["users"], users=users
            )
            self._announce()

    def _announce(self) -> None:
        # After the durable write: whoever sees the counter move reads the new file.
        try:
            if self._generations is not None:
                self._generations.bump(Counter.USERS)
            else:
                bump(self.path.parent, Counter.USERS)
        except OSError as exc:
            raise UserError(
                f"{self.path} is written, but running servers could not be told at once "
                f"({exc.filename}: {exc.strerror}); they see the change within a second"
            ) from exc

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
            write_all(fd, data)
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        os.replace(self._tmp_path, self.path)
        self._keep_copy(data)
        fsync_dir(self.path.parent)
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _read_document(path: pathlib.Path) -> tuple[_Signature, dict[str, Any], bytes]:
    """The checked document of the file at `path`; FileNotFoundError, or UserError."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON: {exc}") from exc
    _check_document(document, path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns), document, data


def _check_quota(octets: int | None) -> None:
    if octets is not None and (type(octets) is not int or octets < 0):
        raise UserError("a quota is a number of octets, 0 or more")


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


def _users_of(
    document: dict[str, Any], path: pathlib.Path, previous: _Loaded | None = None
) -> dict[str, User]:
    _check_document(document, path)
    if previous is None:
        return {key: _user_of(key, record, path) for key, record in document["users"].items()}
    # Decoding the credentials is most of a reload's cost (about 15 µs a user); a record
    # equal to the one read last time keeps the User made from it.
    old_records, old_users = previous.records, previous.users
    users = {}
    for key, record in document["users"].items():
        user = old_users.get(key)
        if user is None or old_records.get(key) != record:
            user = _user_of(key, record, path)
        users[key] = user
    return users


def _stat_signature(path: pathlib.Path) -> _Signature | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _user_of(key: str, record: dict[str, Any], path: pathlib.Path | str) -> User:
    scram = {
        hash_name: _scram_from_json(record[field], hash_name, f"{path}: user {key!r}: {field!r}")
        for hash_name, field in _SCRAM_FIELDS.items()
        if field in record
    }
    cram_md5 = None
    if _CRAM_MD5_FIELD in record:
        text = record[_CRAM_MD5_FIELD]
        try:
            if not isinstance(text, str):
                raise SASLError("not a string")
            cram_md5 = CramMD5Credentials.from_hex(text)
        except SASLError:
            raise UserError(
                f"{path}: user {key!r}: {_CRAM_MD5_FIELD!r} must be 64 hex digits"
            ) from None
    quota = record.get(_QUOTA_FIELD)
    if quota is not None and (type(quota) is not int or quota < 0):
        raise UserError(f"{path}: user {key!r}: {_QUOTA_FIELD!r} must be a number of octets")
    return User(
        address=record["address"],
        key=key,
        password_hash=record["password_hash"],
        scram_sha1=scram.get("sha1"),
        scram_sha256=scram.get("sha256"),
        cram_md5=cram_md5,
        quota=quota,
    )


def _scram_to_json(keys: ScramCredentials) -> dict[str, Any]:
    def b64(data: bytes) -> str:
        return encode_base64(data).decode("ascii")

    return {
        "salt": b64(keys.salt),
        "iterations": keys.iterations,
        "stored_key": b64(keys.stored_key),
        "server_key": b64(keys.server_key),
    }


def _scram_from_json(value: object, hash_name: str, where: str) -> ScramCredentials:
    expected = "an object with salt, iterations, stored_key and server_key"
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected {expected}")
    try:
        salt, stored_key, server_key = (
            _base64_field(value.get(name)) for name in ("salt", "stored_key", "server_key")
        )
        iterations = value.get("iterations")
        if not isinstance(iterations, int) or isinstance(iterations, bool):
            raise SASLError("iterations is not an integer")
        # ScramCredentials accepts either digest size; the field says which one it is.
        if len(stored_key) != hashlib.new(hash_name).digest_size:
            raise SASLError("key of the wrong size")
        return ScramCredentials(
            salt=salt, iterations=iterations, stored_key=stored_key, server_key=server_key
        )
    except SASLError as exc:
        raise UserError(f"{where}: expected {expected} ({exc})") from None


def _base64_field(value: object) -> bytes:
    if not isinstance(value, str) or not value.isascii():
        raise SASLError("not a base64 string")
    return decode_base64_strict(value.encode("ascii"))
