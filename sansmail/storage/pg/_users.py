"""`PgUserStore`: the users of every node in the ``users`` table (`_schema_accounts`),
the same records and secrets as ``users.json`` (`sansmail.storage.users`).

Theory of operation
-------------------
A row per user: the key (`Address.key`) and the JSON record the file holds for that
user, decoded by the same code (`users.user_of`), so a password set on one backend is
checked the same way on the other, and fields a later release adds survive a rewrite.

Lookups from memory. A login or an RCPT asks `get`, ``in``, `get_scram` on the event
loop, where no query may run (a database that hangs would hang the node). So the store
keeps a snapshot of every user, read whole by `reload_if_changed` (blocking, a worker
thread), and lookups read the snapshot. It is re-read when it is stale: at first use,
and after `changed`, which the node's listener (`sansmail_trio._pgnotify`) calls when a
``users`` notification arrives: every write here sends one (``pg_notify``, delivered
when the transaction commits) to every node, whose listener has the store reloaded at
once, in a worker thread; and after a lost listener connection, when notifications may
have been missed. `verify_password` runs in a worker thread already and re-reads a
stale snapshot first, so a password changed on another node is in force for the next
login that reaches it after the notification, even before the listener's reload ran.
A change whose notice has not arrived yet is caught by the serial in
``account_changes`` (`_changes`): `verify_password` and `catch_up` (a RCPT's lookups in
a worker thread) read it first, one statement in one round trip, and re-read the users
when it moved, so a change committed before they began is in force for them on every
node.

A snapshot is tagged with the number of `changed` calls seen before its query, as the
file store tags its table with the generation: a notice arriving during a read leaves
the snapshot stale, and the next reload reads again. A re-read fetches every row's
version (its ``xmin``, which any write changes) and the records of the rows whose
version moved only: users whose row did not change keep their `User` objects, and
their JSON is not decoded again (10,000 users: 20 ms instead of 171 ms after one
change).

The database down. A reload that fails keeps the users read before (stale, so retried
at the next call) and raises UserError once per failure, which the server logs. A store
that never read its users (the database was down from the start) is *unavailable*:
logins fail and ``in`` raises `UsersUnavailableError`, answered with 451, so no mail to
a local user bounces. Writes raise UserError with the database's reason.

The SCRAM secret lives in ``sansmail_secrets`` (row ``scram``), made by the first node
that needs it (``INSERT ... ON CONFLICT DO NOTHING``, then read back: two racing nodes
end up with the one that won), so every node invents the same salts for unknown users.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from psycopg.types.json import Jsonb

from sansmail.mail.address import Address
from sansmail.sasl import SCRAM_MIN_ITERATIONS, CramMD5Credentials, ScramCredentials
from sansmail.storage.pg._changes import announce, catch_up, read_serial
from sansmail.storage.pg._db import Cursor, Database, DatabaseError
from sansmail.storage.users import (
    SCRAM_HASHES,
    User,
    UserError,
    UsersUnavailableError,
    check_password,
    new_record,
    password_fields,
    replace_password,
    replace_quota,
    user_of,
)

__all__ = ["USERS_KEY", "PgUserStore"]

#: The notification payload of a change to the users.
USERS_KEY: Final = "users"
_SCRAM_ROW: Final = "scram"
_SECRET_OCTETS: Final = 32
_WHERE: Final = "database table users"


@attrs.frozen
class _Snapshot:
    """One read of the table: the notices seen before it, each row's version (its
    ``xmin``: a row's next read fetches and decodes its record only if it changed), the
    users, and the ``account_changes`` serial it was tagged with (`_changes`)."""

    notices: int
    versions: Mapping[str, str]
    users: dict[str, User]
    serial: int = -1
    #: Why no users are known (never read: the database is down), or None.
    unavailable: str | None = None


class PgUserStore:
    """The users in the database `db` (see the module docstring); a `Users`.

    `hasher`, `cram_md5` and `scram_iterations` mean what they mean for `UserStore`.
    """

    def __init__(
        self,
        db: Database,
        *,
        hasher: PasswordHasher | None = None,
        cram_md5: bool = False,
        scram_iterations: int = SCRAM_MIN_ITERATIONS,
    ) -> None:
        if scram_iterations < SCRAM_MIN_ITERATIONS:
            raise ValueError(f"scram_iterations must be at least {SCRAM_MIN_ITERATIONS}")
        self._db = db
        self._hasher = hasher if hasher is not None else PasswordHasher()
        self._cram_md5 = cram_md5
        self._scram_iterations = scram_iterations
        self._dummy_hash: str | None = None
        self._secret: bytes | None = None
        # Bumped by `changed` (any thread: one int assignment); a snapshot whose count
        # differs is stale. It starts ahead of the empty snapshot, which is never read.
        self._notices = 1
        self._snapshot = _Snapshot(0, {}, {}, unavailable="the users were not read yet")
        self._reloaded = False
        self._error: UserError | None = None

    # -- freshness ------------------------------------------------------------------

    def changed(self) -> None:
        """Mark the snapshot stale: another node (or this one) changed the users, or
        notifications may have been missed. Cheap, for the event loop; the next
        `reload_if_changed` (or `verify_password`) reads the table again."""
        self._notices += 1

    @property
    def stale(self) -> bool:
        """Whether the snapshot is older than the last `changed`."""
        return self._snapshot.notices != self._notices

    def reload_if_changed(self) -> bool:
        """Blocking: re-read the users if the snapshot is stale; True when they were
        re-read, here or by `verify_password`, since the last call. UserError (once per
        failure) when the database could not be read; the users read before stay."""
        if self.stale:
            self._reload()
        error, self._error = self._error, None
        if error is not None:
            raise error
        reloaded, self._reloaded = self._reloaded, False
        return reloaded

    def _reload(self, *, report: bool = True) -> _Snapshot:
        notices = self._notices  # before the query: a change meanwhile leaves us stale
        previous = self._snapshot
        try:
            with self._db.transaction() as cur:
                serial = read_serial(cur, USERS_KEY)
                versions, users = _read_changed(cur, previous)
        except (DatabaseError, UserError) as exc:
            self._error = exc if isinstance(exc, UserError) else UserError(str(exc))
            return previous
        if self._snapshot.notices > notices:
            # Another thread's re-read, begun after ours, landed first: it may have
            # seen a change ours did not (a deleted user), so it stays.
            return self._snapshot
        snapshot = _Snapshot(notices, versions, users, serial)
        self._snapshot = snapshot
        self._reloaded = self._reloaded or report
        return snapshot

    def _current(self) -> _Snapshot:
        """The snapshot; read at first use (the CLI's store, or a server that did not
        call `reload_if_changed` before serving)."""
        snapshot = self._snapshot
        if snapshot.notices == 0:
            snapshot = self._reload(report=False)
        return snapshot

    def _fresh(self) -> _Snapshot:
        """The snapshot, re-read first when stale: for calls made in a worker thread."""
        if self.stale:
            return self._reload()
        return self._snapshot

    def catch_up(self, serial: int) -> bool:
        """Blocking: re-read the users if the database's `serial` is not the one the
        snapshot was read at (`_changes`: a change whose notice has not arrived yet);
        True when they were."""
        if serial == self._snapshot.serial:
            return False
        self.changed()
        self._reload()
        return True

    def _latest(self) -> _Snapshot:
        """The snapshot, caught up with every change committed before the call (one
        query, `_changes`): for calls made in a worker thread."""
        catch_up(self._db, {USERS_KEY: self})
        return self._fresh()

    # -- lookups --------------------------------------------------------------------

    @property
    def unavailable(self) -> str | None:
        """Why no user can be recognised (the database was never read), or None."""
        return self._current().unavailable

    def get(self, key: str) -> User | None:
        return self._current().users.get(key)

    def own_quota(self, key: str) -> int | None:
        """User `key`'s own storage limit (0: none); None for ``[quota] storage``, also
        for no such user."""
        user = self.get(key)
        return None if user is None else user.quota

    def __contains__(self, key: object) -> bool:
        """Whether `key` is a user; `UsersUnavailableError` when that cannot be told."""
        snapshot = self._current()
        if snapshot.unavailable is not None:
            raise UsersUnavailableError(snapshot.unavailable)
        return key in snapshot.users

    def list(self) -> list[User]:
        """Every user, sorted by key."""
        users = self._current().users
        return [users[key] for key in sorted(users)]

    def verify_password(self, key: str, password: str) -> bool:
        """Blocking: argon2id verification; an unknown user costs the same and yields
        False."""
        user = self._latest().users.get(key)
        encoded = self._dummy() if user is None else user.password_hash
        try:
            ok = self._hasher.verify(encoded, password)
        except (VerificationError, InvalidHashError):
            return False
        return ok and user is not None

    def get_scram(self, key: str, hash_name: str) -> ScramCredentials | None:
        """The user's SCRAM credentials for `hash_name` (``"sha1"`` or ``"sha256"``);
        None for an unknown user or one whose password predates SCRAM keys."""
        if hash_name not in SCRAM_HASHES:
            raise ValueError(f"hash_name must be one of {SCRAM_HASHES}")
        user = self.get(key)
        if user is None:
            return None
        return user.scram_sha1 if hash_name == "sha1" else user.scram_sha256

    def get_cram_md5(self, key: str) -> CramMD5Credentials | None:
        user = self.get(key)
        return None if user is None else user.cram_md5

    @property
    def scram_iterations(self) -> int:
        return self._scram_iterations

    def scram_secret(self) -> bytes:
        """Blocking: the secret every node invents unknown users' SCRAM salts from (see
        the module docstring); UserError when the database cannot give it."""
        if self._secret is None:
            self._secret = self._read_or_make_secret()
        return self._secret

    # -- writing --------------------------------------------------------------------

    def add(self, address: Address, password: str, *, quota: int | None = None) -> User:
        """Blocking: create a user; UserError if it exists or the password is unusable."""
        check_password(password)
        key = address.key
        record = new_record(address, self._password_fields(password), quota)
        user = user_of(key, record, _WHERE)

        def change(cur: Cursor) -> None:
            cur.execute(
                "INSERT INTO users (key, record) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
                (key, Jsonb(record)),
            )
            if cur.rowcount == 0:
                raise UserError(f"{key}: user already exists")

        self._write(change)
        return user

    def set_password(self, key: str, password: str) -> None:
        """Blocking: replace a user's password and every credential derived from it;
        UserError if the user does not exist or the password is unusable."""
        check_password(password)
        fields = self._password_fields(password)
        self._update(key, lambda record: replace_password(record, fields))

    def set_quota(self, key: str, octets: int | None) -> None:
        """Blocking: give a user their own storage limit (0: none), or None to follow
        ``[quota] storage`` again; UserError if the user does not exist."""
        replace_quota({}, octets)  # refuses a bad value before any query
        self._update(key, lambda record: replace_quota(record, octets))

    def delete(self, key: str) -> None:
        """Blocking: remove a user; UserError if the user does not exist."""

        def change(cur: Cursor) -> None:
            cur.execute("DELETE FROM users WHERE key = %s", (key,))
            if cur.rowcount == 0:
                raise UserError(f"{key}: no such user")

        self._write(change)

    # -- inside ---------------------------------------------------------------------

    def _update(self, key: str, edit: Callable[[dict[str, Any]], None]) -> None:
        def change(cur: Cursor) -> None:
            # FOR UPDATE: two writers of one user take turns, neither losing the
            # other's fields.
            cur.execute("SELECT record FROM users WHERE key = %s FOR UPDATE", (key,))
            row = cur.fetchone()
            if row is None:
                raise UserError(f"{key}: no such user")
            record = dict(row[0])
            edit(record)
            user_of(key, record, _WHERE)
            cur.execute("UPDATE users SET record = %s WHERE key = %s", (Jsonb(record), key))

        self._write(change)

    def _write(self, change: Callable[[Cursor], None]) -> None:
        """Run `change` and tell every node, in one transaction; then this store's own
        snapshot is stale, so its next lookup in a worker thread (or reload) sees it."""
        try:
            with self._db.transaction() as cur:
                change(cur)
                announce(cur, USERS_KEY)
        except DatabaseError as exc:
            raise UserError(str(exc)) from exc
        self.changed()
        if self._snapshot.notices != 0:
            # The writer's own store (the CLI's) answers from its snapshot at once.
            self._reload(report=False)
            self._error = None

    def _password_fields(self, password: str) -> dict[str, Any]:
        # CPU-bound: done before the transaction, so no row waits for our hashing.
        return password_fields(
            password, self._hasher, cram_md5=self._cram_md5, iterations=self._scram_iterations
        )

    def _read_or_make_secret(self) -> bytes:
        try:
            with self._db.transaction() as cur:
                cur.execute(
                    "INSERT INTO sansmail_secrets (name, value) VALUES (%s, %s)"
                    " ON CONFLICT (name) DO NOTHING",
                    (_SCRAM_ROW, secrets.token_bytes(_SECRET_OCTETS)),
                )
                cur.execute("SELECT value FROM sansmail_secrets WHERE name = %s", (_SCRAM_ROW,))
                row = cur.fetchone()
        except DatabaseError as exc:
            raise UserError(str(exc)) from exc
        secret = bytes(row[0]) if row else b""
        if len(secret) != _SECRET_OCTETS:
            raise UserError(f"sansmail_secrets {_SCRAM_ROW!r}: expected {_SECRET_OCTETS} octets")
        return secret

    def _dummy(self) -> str:
        # Made on first need with the same hasher, so it costs what a real check costs.
        if self._dummy_hash is None:
            self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))
        return self._dummy_hash


def _read_changed(cur: Cursor, previous: _Snapshot) -> tuple[dict[str, str], dict[str, User]]:
    """Every row's version, and the users: the records of the rows whose version is not
    the one `previous` read are fetched and decoded, the others keep their `User`.

    Decoding the JSON records was most of a whole read (py-spy: 39% of a re-read of
    10,000 users, in ``json.loads``); a row's ``xmin`` (the transaction that wrote this
    version of it) changes with every write, whoever makes it, an admin's UPDATE by
    hand included, so comparing it finds every change without reading the records."""
    old_versions, old_users = previous.versions, previous.users
    fetched: dict[str, User] = {}
    if not old_versions:
        # Nothing to keep (the first read): every record, in one query.
        cur.execute("SELECT key, xmin::text, record FROM users")
        rows = cur.fetchall()
        versions = {str(key): str(version) for key, version, _record in rows}
        fetched = {str(key): user_of(str(key), record, _WHERE) for key, _v, record in rows}
        return versions, fetched
    cur.execute("SELECT key, xmin::text FROM users")
    versions = {str(key): str(version) for key, version in cur.fetchall()}
    wanted = {key for key, version in versions.items() if old_versions.get(key) != version}
    if wanted:
        cur.execute(
            "SELECT key, xmin::text, record FROM users WHERE key = ANY(%s)", (list(wanted),)
        )
        for key, version, record in cur.fetchall():
            # Read committed: a row written since the first query is read as it is now.
            versions[str(key)] = str(version)
            fetched[str(key)] = user_of(str(key), record, _WHERE)
    users = {}
    for key in versions:
        user = fetched.get(key)
        if user is None:
            user = old_users.get(key) if key not in wanted else None
        if user is not None:
            users[key] = user
    # Deleted between the two queries: gone from the next snapshot's versions too.
    return {key: versions[key] for key in users}, users
