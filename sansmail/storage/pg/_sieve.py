"""`PgSieveStore`: every user's Sieve scripts, and what vacation and the duplicate test
remember, in the ``sieve_scripts`` and ``sieve_duplicates`` tables (`_schema_accounts`),
so that every node runs the same scripts and sends a vacation reply once, whichever
node delivers.

Theory of operation
-------------------
The same rules as the file store (`sansmail.storage.sieve`): names checked by
`valid_script_name`, the quota by `check_space`, at most one active script per mailbox
(a partial unique index makes it so whatever a writer does), the active script never
deleted, a rename keeping the script active. Each change is one transaction that first
takes the mailbox's advisory lock (``pg_advisory_xact_lock`` of a hash of its key), as
the file store takes the user's ``flock``: two ManageSieve sessions on two nodes cannot
both pass a quota check and both write, or activate a script being deleted. Reads take
no lock. Each change notifies ``sieve:<mailbox>`` for whoever keeps scripts in memory;
this store keeps none (delivery reads the active script, one indexed row, per message).

Duplicates (`PgDuplicates`): one row per (mailbox, key) with its expiry; a record
replaces the row and deletes up to `SWEEP_ROWS` expired rows of any mailbox, the oldest
first through the expiry index, skipping rows another transaction holds.

The database away: every call raises `SieveStoreUnavailableError` (ManageSieve answers
TRYLATER; delivery keeps the message and says so), except `has_active`, which says True
so that the mail goes to delivery, where the failure is reported where it matters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

from sansmail.mail.address import MailboxId
from sansmail.storage.pg._db import Cursor, Database, DatabaseError
from sansmail.storage.pg._mailrows import mailbox_key, notify
from sansmail.storage.sieve import (
    ActiveScriptError,
    InvalidScriptNameError,
    NoSuchScriptError,
    ScriptExistsError,
    SieveQuota,
    SieveStoreUnavailableError,
    check_space,
    valid_script_name,
)

__all__ = ["SWEEP_ROWS", "PgDuplicates", "PgSieveStore", "sieve_key"]

#: Expired duplicate rows deleted at most per record.
SWEEP_ROWS: Final = 256
_DEFAULT_QUOTA: Final = SieveQuota()
# Module-level: inside the class, `list` is the method of that name.
_Rows = list[tuple[Any, ...]]
_Sizes = list[tuple[str, int]]


def sieve_key(mailbox: MailboxId) -> str:
    """The notification payload of a change to `mailbox`'s scripts."""
    return f"sieve:{mailbox_key(mailbox)}"


class PgSieveStore:
    """Every user's scripts in the database `db` (see the module docstring); a
    `SieveScripts`."""

    def __init__(self, db: Database, *, quota: SieveQuota = _DEFAULT_QUOTA) -> None:
        self._db = db
        self.quota = quota

    # -- reading ----------------------------------------------------------------------

    def list(self, mailbox: MailboxId) -> list[tuple[str, bool]]:
        """The user's scripts as (name, active), sorted by name (code points, as the
        file store sorts, whatever the database's collation)."""
        rows = self._read(
            "SELECT name, active FROM sieve_scripts WHERE mailbox = %s", mailbox_key(mailbox)
        )
        return sorted((str(name), bool(active)) for name, active in rows)

    def get(self, mailbox: MailboxId, name: str) -> bytes:
        _check_name(name)
        rows = self._read(
            "SELECT script FROM sieve_scripts WHERE mailbox = %s AND name = %s",
            mailbox_key(mailbox),
            name,
        )
        if not rows:
            raise NoSuchScriptError(f"no script named {name!r}")
        return bytes(rows[0][0])

    def active(self, mailbox: MailboxId) -> tuple[str, bytes] | None:
        rows = self._read(
            "SELECT name, script FROM sieve_scripts WHERE mailbox = %s AND active",
            mailbox_key(mailbox),
        )
        return (str(rows[0][0]), bytes(rows[0][1])) if rows else None

    def has_active(self, mailbox: MailboxId) -> bool:
        """Whether the user has an active script (one indexed row); True when the
        database cannot say (see the module docstring)."""
        try:
            rows = self._read(
                "SELECT 1 FROM sieve_scripts WHERE mailbox = %s AND active",
                mailbox_key(mailbox),
            )
        except SieveStoreUnavailableError:
            return True
        return bool(rows)

    def have_space(self, mailbox: MailboxId, name: str, size: int) -> None:
        _check_name(name)
        check_space(self.quota, name, size, self._sizes(mailbox))

    # -- changing ---------------------------------------------------------------------

    def put(self, mailbox: MailboxId, name: str, text: bytes) -> None:
        """Store `text` as script `name`, replacing one of that name; quota checked
        under the mailbox's lock. The syntax is the caller's to check."""
        _check_name(name)

        def change(cur: Cursor, key: str) -> None:
            cur.execute(
                "SELECT name, octet_length(script) FROM sieve_scripts WHERE mailbox = %s",
                (key,),
            )
            check_space(self.quota, name, len(text), cur.fetchall())
            cur.execute(
                "INSERT INTO sieve_scripts (mailbox, name, script) VALUES (%s, %s, %s)"
                " ON CONFLICT (mailbox, name) DO UPDATE SET script = EXCLUDED.script",
                (key, name, text),
            )

        self._change(mailbox, change)

    def activate(self, mailbox: MailboxId, name: str | None) -> None:
        """Make script `name` the active one (NoSuchScriptError if there is none), or
        with None leave the user with no active script."""
        if name is not None:
            _check_name(name)

        def change(cur: Cursor, key: str) -> None:
            if name is not None:
                cur.execute(
                    "SELECT 1 FROM sieve_scripts WHERE mailbox = %s AND name = %s", (key, name)
                )
                if cur.fetchone() is None:
                    raise NoSuchScriptError(f"no script named {name!r}")
            # Two statements: the unique index is checked row by row, so the old active
            # row must be cleared before the new one is set.
            cur.execute(
                "UPDATE sieve_scripts SET active = false WHERE mailbox = %s AND active"
                " AND name IS DISTINCT FROM %s",
                (key, name),
            )
            if name is not None:
                cur.execute(
                    "UPDATE sieve_scripts SET active = true WHERE mailbox = %s AND name = %s",
                    (key, name),
                )

        self._change(mailbox, change)

    def delete(self, mailbox: MailboxId, name: str) -> None:
        """Delete script `name`: NoSuchScriptError if there is none, ActiveScriptError if
        it is the active one (RFC 5804 §2.10)."""
        _check_name(name)

        def change(cur: Cursor, key: str) -> None:
            cur.execute(
                "DELETE FROM sieve_scripts WHERE mailbox = %s AND name = %s RETURNING active",
                (key, name),
            )
            row = cur.fetchone()
            if row is None:
                raise NoSuchScriptError(f"no script named {name!r}")
            if row[0]:
                # Raising rolls the delete back.
                raise ActiveScriptError(f"script {name!r} is active: deactivate it first")

        self._change(mailbox, change)

    def rename(self, mailbox: MailboxId, old: str, new: str) -> None:
        """Rename script `old` to `new` (NoSuchScriptError, ScriptExistsError); if `old`
        was active, `new` is (the flag moves with the row)."""
        _check_name(old)
        _check_name(new)

        def change(cur: Cursor, key: str) -> None:
            cur.execute(
                "SELECT name FROM sieve_scripts WHERE mailbox = %s AND name IN (%s, %s)",
                (key, old, new),
            )
            found = {str(row[0]) for row in cur.fetchall()}
            if old not in found:
                raise NoSuchScriptError(f"no script named {old!r}")
            if new in found:
                raise ScriptExistsError(f"a script named {new!r} exists")
            cur.execute(
                "UPDATE sieve_scripts SET name = %s WHERE mailbox = %s AND name = %s",
                (new, key, old),
            )

        self._change(mailbox, change)

    def duplicates(self, mailbox: MailboxId) -> PgDuplicates:
        """The user's remembered keys; close() it (it holds nothing, but the callers of
        the file store's do)."""
        return PgDuplicates(self._db, mailbox)

    # -- inside -----------------------------------------------------------------------

    def _sizes(self, mailbox: MailboxId) -> _Sizes:
        rows = self._read(
            "SELECT name, octet_length(script) FROM sieve_scripts WHERE mailbox = %s",
            mailbox_key(mailbox),
        )
        return [(str(name), int(size)) for name, size in rows]

    def _read(self, query: str, *params: object) -> _Rows:
        with _unavailable(), self._db.transaction() as cur:
            cur.execute(query, params)
            return cur.fetchall()

    def _change(self, mailbox: MailboxId, change: Callable[[Cursor, str], None]) -> None:
        key = mailbox_key(mailbox)
        with _unavailable(), self._db.transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"sieve:{key}",))
            change(cur, key)
            notify(cur, sieve_key(mailbox))


class PgDuplicates:
    """One user's remembered keys in ``sieve_duplicates``; a `Duplicates`. Blocking;
    `SieveStoreUnavailableError` when the database is away."""

    def __init__(self, db: Database, mailbox: MailboxId) -> None:
        self._db = db
        self._key = mailbox_key(mailbox)

    def seen(self, key: str, *, now: float) -> bool:
        with _unavailable(), self._db.transaction() as cur:
            cur.execute(
                "SELECT 1 FROM sieve_duplicates WHERE mailbox = %s AND key = %s AND expires > %s",
                (self._key, key, now),
            )
            return cur.fetchone() is not None

    def record(self, key: str, seconds: int, *, now: float) -> None:
        """Remember `key` until `now` + `seconds` (replacing what was remembered)."""
        with _unavailable(), self._db.transaction() as cur:
            cur.execute(
                "INSERT INTO sieve_duplicates (mailbox, key, expires) VALUES (%s, %s, %s)"
                " ON CONFLICT (mailbox, key) DO UPDATE SET expires = EXCLUDED.expires",
                (self._key, key, now + seconds),
            )
            cur.execute(
                "DELETE FROM sieve_duplicates WHERE ctid IN (SELECT ctid FROM sieve_duplicates"
                " WHERE expires <= %s ORDER BY expires LIMIT %s FOR UPDATE SKIP LOCKED)",
                (now, SWEEP_ROWS),
            )

    def close(self) -> None:
        """Nothing to close: each call took a pooled connection and gave it back."""

    def __enter__(self) -> PgDuplicates:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _check_name(name: str) -> None:
    why = valid_script_name(name)
    if why is not None:
        raise InvalidScriptNameError(why)


@contextmanager
def _unavailable() -> Iterator[None]:
    try:
        yield
    except DatabaseError as exc:
        raise SieveStoreUnavailableError(str(exc)) from exc
