"""Users and Sieve scripts moved between a Maildir data directory and the database, for
`sansmail.storage.pg._transfer` (``storage import`` / ``storage export``).

What moves. Users: each record of ``users.json`` as it is (the argon2 hash, the SCRAM
keys, the CRAM-MD5 half-states, the quota, fields a later release added) into the
``users`` table, whose rows hold the very same JSON (`_users`), and back; and the
secret unknown users' SCRAM salts are made from (``users.json.scram-secret`` / the
``scram`` row of ``sansmail_secrets``), so a client probing for names sees the same
salts before and after. Sieve scripts: every script of every user, and which one is
active (``<data_dir>/sieve/<domain>/<local>/``, `sansmail.storage.sieve`) into
``sieve_scripts``, and back. What vacation remembers (``.duplicates.db``) stays behind:
at worst a sender gets one vacation reply more. The aliases are the configuration's
file, put in the database by ``newaliases``, not part of a data directory.

Refusals, decided before anything is written (by the caller, with the mailboxes'):
importing, a user whose key the database holds with another record, or a script the
database holds with another text (or another active script for that user); exporting,
a ``users.json`` already in the target, or a user's non-empty Sieve directory there.
What the database holds already, the same, is left as it is.
"""

from __future__ import annotations

import json
import os
import pathlib
import urllib.parse
from typing import Any, Final

import attrs
from psycopg.types.json import Jsonb

from sansmail.mail.address import MailboxId
from sansmail.storage.durable import write_file_atomically
from sansmail.storage.pg._changes import announce
from sansmail.storage.pg._db import Cursor, Database
from sansmail.storage.pg._mailrows import mailbox_key, notify
from sansmail.storage.pg._users import USERS_KEY
from sansmail.storage.sieve import SIEVE_DIR, SieveQuota, SieveStore
from sansmail.storage.users import FORMAT_VERSION, UserError, user_of

__all__ = [
    "Accounts",
    "export_accounts",
    "export_refusals",
    "mailbox_dirs",
    "mailbox_id",
    "read_accounts",
    "read_database_accounts",
    "refuse_taken",
    "write_accounts",
]

_USERS_NAME: Final = "users.json"
# users.json's SCRAM secret file, and its row in sansmail_secrets (`_users`): names.
_SECRET_SUFFIX: Final = ".scram-secret"  # noqa: S105
_SECRET_ROW: Final = "scram"  # noqa: S105
_SECRET_OCTETS: Final = 32


@attrs.frozen
class Accounts:
    """What a data directory holds besides mail."""

    #: Address.key -> the record, as ``users.json`` holds it.
    users: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    #: The SCRAM secret, or None when the directory has none yet.
    secret: bytes | None = None
    #: "local@domain" -> {script name: (text, active)}.
    scripts: dict[str, dict[str, tuple[bytes, bool]]] = attrs.field(factory=dict)

    @property
    def script_count(self) -> int:
        return sum(len(s) for s in self.scripts.values())


# --- import --------------------------------------------------------------------------


def read_accounts(data_dir: pathlib.Path) -> Accounts:
    """The users and Sieve scripts of `data_dir` (`UserError` for a ``users.json`` or
    secret that does not read)."""
    users: dict[str, dict[str, Any]] = {}
    path = data_dir / _USERS_NAME
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        document = {"users": {}}
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON: {exc}") from None
    found = document.get("users") if isinstance(document, dict) else None
    if not isinstance(found, dict):
        raise UserError(f"{path}: 'users' must be an object keyed by address")
    for key, record in found.items():
        user_of(key, record, str(path))  # refuses a record no store could decode
        users[key] = record
    secret = None
    secret_path = data_dir / (_USERS_NAME + _SECRET_SUFFIX)
    try:
        text = secret_path.read_bytes().strip()
    except FileNotFoundError:
        pass
    else:
        try:
            secret = bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            secret = b""
        if len(secret) != _SECRET_OCTETS:
            raise UserError(f"{secret_path}: expected {2 * _SECRET_OCTETS} hex digits")
    return Accounts(users=users, secret=secret, scripts=_read_scripts(data_dir))


def _read_scripts(data_dir: pathlib.Path) -> dict[str, dict[str, tuple[bytes, bool]]]:
    root = data_dir / SIEVE_DIR
    store = SieveStore(data_dir)
    scripts: dict[str, dict[str, tuple[bytes, bool]]] = {}
    for mailbox in mailbox_dirs(root):
        listed = store.list(mailbox)
        if listed:
            scripts[mailbox_key(mailbox)] = {
                name: (store.get(mailbox, name), active) for name, active in listed
            }
    return scripts


def refuse_taken(cur: Cursor, accounts: Accounts) -> list[str]:
    """What of `accounts` the database holds otherwise: one phrase each."""
    problems = []
    cur.execute(
        "SELECT key, record FROM users WHERE key = ANY(%s) ORDER BY key", (list(accounts.users),)
    )
    problems += [
        f"user {key} (another record)"
        for key, record in cur.fetchall()
        if record != accounts.users[key]
    ]
    cur.execute(
        "SELECT mailbox, name, script, active FROM sieve_scripts WHERE mailbox = ANY(%s)"
        " ORDER BY mailbox, name",
        (list(accounts.scripts),),
    )
    for mailbox, name, script, active in cur.fetchall():
        mine = accounts.scripts[mailbox]
        wanted = mine.get(name)
        if wanted is not None and wanted != (bytes(script), active):
            problems.append(f"Sieve script {name!r} of {mailbox} (another text)")
        elif active and any(a for n, (_t, a) in mine.items() if n != name):
            problems.append(f"Sieve scripts of {mailbox} (another one active)")
    return problems


def write_accounts(db: Database, accounts: Accounts) -> None:
    """`accounts` into the database, in one transaction, telling every node."""
    with db.transaction() as cur:
        cur.executemany(
            "INSERT INTO users (key, record) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
            [(key, Jsonb(record)) for key, record in accounts.users.items()],
        )
        if accounts.secret is not None:
            # A secret the database holds already stays: nodes may be using it.
            cur.execute(
                "INSERT INTO sansmail_secrets (name, value) VALUES (%s, %s)"
                " ON CONFLICT (name) DO NOTHING",
                (_SECRET_ROW, accounts.secret),
            )
        rows = [
            (mailbox, name, text, active)
            for mailbox, scripts in accounts.scripts.items()
            for name, (text, active) in scripts.items()
        ]
        # Inactive first: the partial unique index allows one active row per mailbox.
        rows.sort(key=lambda row: row[3])
        cur.executemany(
            "INSERT INTO sieve_scripts (mailbox, name, script, active) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (mailbox, name) DO NOTHING",
            rows,
        )
        if accounts.users:
            announce(cur, USERS_KEY)
        for mailbox in accounts.scripts:
            notify(cur, f"sieve:{mailbox}")


# --- export --------------------------------------------------------------------------


def read_database_accounts(db: Database) -> Accounts:
    """The users, the SCRAM secret and the Sieve scripts the database holds."""
    with db.transaction() as cur:
        cur.execute("SELECT key, record FROM users ORDER BY key")
        users = {key: dict(record) for key, record in cur.fetchall()}
        cur.execute("SELECT value FROM sansmail_secrets WHERE name = %s", (_SECRET_ROW,))
        row = cur.fetchone()
        cur.execute("SELECT mailbox, name, script, active FROM sieve_scripts ORDER BY 1, 2")
        scripts: dict[str, dict[str, tuple[bytes, bool]]] = {}
        for mailbox, name, script, active in cur.fetchall():
            scripts.setdefault(mailbox, {})[name] = (bytes(script), bool(active))
    return Accounts(users=users, secret=bytes(row[0]) if row else None, scripts=scripts)


def export_refusals(data_dir: pathlib.Path, accounts: Accounts) -> list[str]:
    """What of `data_dir` exporting `accounts` would overwrite: one phrase each."""
    problems = []
    if accounts.users and (data_dir / _USERS_NAME).exists():
        problems.append(f"{data_dir / _USERS_NAME} exists")
    store = SieveStore(data_dir)
    for mailbox in accounts.scripts:
        directory = store.directory(mailbox_id(mailbox))
        try:
            if os.listdir(directory):
                problems.append(f"{directory} exists and is not empty")
        except FileNotFoundError:
            pass
    return problems


def export_accounts(data_dir: pathlib.Path, accounts: Accounts) -> None:
    """Write `accounts` under `data_dir` as the file stores keep them, durably."""
    os.makedirs(data_dir, 0o700, exist_ok=True)
    if accounts.users:
        document = {"version": FORMAT_VERSION, "users": accounts.users}
        text = json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
        write_file_atomically(data_dir / _USERS_NAME, text.encode())
    if accounts.secret is not None and not (data_dir / (_USERS_NAME + _SECRET_SUFFIX)).exists():
        write_file_atomically(
            data_dir / (_USERS_NAME + _SECRET_SUFFIX), accounts.secret.hex().encode() + b"\n"
        )
    # Limits no script the database took can be over: the site's may be above the default.
    sizes = [len(t) for s in accounts.scripts.values() for t, _a in s.values()]
    roomy = SieveQuota(
        max_scripts=max((len(s) for s in accounts.scripts.values()), default=0) + 1,
        max_script_size=max(sizes, default=0) + 1,
        max_storage=max(
            (sum(len(t) for t, _a in s.values()) for s in accounts.scripts.values()), default=0
        )
        + 1,
    )
    store = SieveStore(data_dir, quota=roomy)
    for key, scripts in accounts.scripts.items():
        mailbox = mailbox_id(key)
        for name, (script, _active) in scripts.items():
            store.put(mailbox, name, script)
        for name, (_text, active) in scripts.items():
            if active:
                store.activate(mailbox, name)


def mailbox_dirs(root: pathlib.Path) -> list[MailboxId]:
    """The mailboxes of the ``<domain>/<local>`` directories under `root` (names
    unescaped, dot entries skipped: no mailbox has one), sorted."""
    found: list[MailboxId] = []
    try:
        domains = sorted(os.listdir(root))
    except FileNotFoundError:
        return found
    for domain in domains:
        if domain.startswith(".") or not (root / domain).is_dir():
            continue
        for local in sorted(os.listdir(root / domain)):
            if local.startswith(".") or not (root / domain / local).is_dir():
                continue
            found.append(MailboxId(domain=_unescape(domain), local=_unescape(local)))
    return found


def mailbox_id(key: str) -> MailboxId:
    """The mailbox of a ``mailbox`` column's value, "local@domain"."""
    local, _, domain = key.rpartition("@")
    return MailboxId(domain=domain, local=local)


def _unescape(component: str) -> str:
    # The stores escape "%" as %25, "/" as %2F and a leading "." as %2E: every "%" in a
    # name they made starts an escape.
    return urllib.parse.unquote(component)
