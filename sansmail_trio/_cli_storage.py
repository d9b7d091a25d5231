"""`sansmail-trio storage migrate|export|import`: the PostgreSQL backend's schema, and
moving mail between the two backends.

- ``storage migrate`` creates or upgrades the schema of ``[storage] dsn``
  (`sansmail.storage.pg.migrate`), safe to run from several nodes at once.
- ``storage import --from maildir DIR`` copies a data directory laid out as the Maildir
  backend keeps it into the database (`sansmail.storage.pg._transfer`);
  ``storage export --to maildir DIR`` writes the database's mailboxes out as such a
  directory. Both keep each folder's UIDVALIDITY and every message's UID, flags and
  INTERNALDATE, so IMAP clients keep their caches across the move.

psycopg is imported only here, when one of these runs: the other commands, and a site on
the Maildir backend, need no PostgreSQL driver (the ``postgresql`` extra).
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import sqlite3
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

# A module import, not its names: _cli imports this module while it is being made.
from sansmail_trio import _cli

if TYPE_CHECKING:
    from sansmail.config import Config
    from sansmail.storage.pg import Database
    from sansmail.storage.pg._transfer import FolderMoved, Moved

__all__ = ["add_commands"]

# _cli.PROG is not made yet when _cli imports this module.
_PROG: Final = "sansmail-trio"

_STORAGE_HELP: Final = f"""\
The PostgreSQL storage backend ([storage] backend = "postgresql"): its schema, and
moving mail between it and Maildirs.

  storage migrate                  create or upgrade the database's schema
  storage import --from maildir DIR
                                   copy the mailboxes of a Maildir data directory
                                   (DIR/mail/<domain>/<local>/) into the database
  storage export --to maildir DIR  write the database's mailboxes out as Maildirs
                                   under DIR/mail/

Import and export keep each folder's UIDVALIDITY and every message's UID, flags,
keywords and INTERNALDATE, so IMAP clients keep their caches across the move.

examples:
  {_PROG} storage migrate --config /etc/sansmail.toml
  {_PROG} storage import --from maildir /var/lib/sansmail --config /etc/sansmail.toml
  {_PROG} storage export --to maildir /srv/backup/sansmail --config /etc/sansmail.toml
"""

_MIGRATE_HELP: Final = f"""\
Create the schema of the database named by [storage] dsn, or upgrade it to the
version this sansmail uses. Run it once before the first `serve` on PostgreSQL and
after each upgrade; running it again, or from several nodes at once, is harmless
(one waits for the other under a lock, then finds nothing to do).

output:
  schema version 0 -> 1
  already at version 1

examples:
  {_PROG} storage migrate --config /etc/sansmail.toml
"""

_EXPORT_HELP: Final = f"""\
Write every mailbox of the database out as Maildirs, laid out as the Maildir backend
keeps them: DIR/mail/<domain>/<local>/ with a Maildir++ folder per IMAP folder and each
folder's index, and the users (DIR/users.json, their password hashes and SCRAM keys
as they are) and Sieve scripts (DIR/sieve/). Every folder keeps its UIDVALIDITY and
every message its UID, flags, keywords and INTERNALDATE, so `serve` with backend =
"maildir" and data_dir = DIR shows IMAP clients the very mailboxes they knew. Each
mailbox is written beside its place, every file on disk, then moved into place in one
step. A mailbox or Sieve directory that exists and is not empty, or a users.json, is
refused before anything is written. Special use follows the folder's name, as the
Maildir backend gives it. The aliases stay in the aliases file of the configuration.

Run it while no server writes to the database, or what arrives meanwhile may be left
out.

output (one line per folder, then a total):
  alice@example.test INBOX: 1204 messages, UIDVALIDITY 1765090800
  exported 2 users, 1 Sieve script, 2 mailboxes, 12 folders, 1311 messages
  (85012993 octets) to /srv/backup

examples:
  {_PROG} storage export --to maildir /srv/backup/sansmail --config /etc/sansmail.toml
"""

_IMPORT_HELP: Final = f"""\
Bring the users (DIR/users.json), Sieve scripts (DIR/sieve/) and every mailbox
(DIR/mail/<domain>/<local>/, as the Maildir backend keeps it, or as Dovecot left it:
its dovecot-uidlist UIDs are kept) of a Maildir data directory to the database. Each
folder keeps its UIDVALIDITY and every message its UID, flags, keywords and
INTERNALDATE, so IMAP clients keep their caches when the site moves to PostgreSQL;
subscriptions go too, and passwords work as before. Each folder is copied in one
transaction: it is in the database whole or not at all. A folder that already holds
messages in the database, or a user or script it holds otherwise, refuses the whole
import before anything is written; an empty folder (an INBOX a delivery made) takes
the imported folder's numbers. The aliases come from the configuration's aliases file:
run `newaliases` for them.

Each folder's index is brought up to date with its files first (mail delivered and not
yet seen by IMAP gets its UID), as when IMAP opens it. Stop the Maildir server first:
mail delivered after its folder was copied would stay behind.

output (one line per folder, then a total):
  alice@example.test INBOX: 1204 messages, UIDVALIDITY 1765090800
  imported 2 users, 1 Sieve script, 2 mailboxes, 12 folders, 1311 messages
  (85012993 octets) from /var/lib/sansmail

examples:
  {_PROG} storage migrate --config /etc/sansmail.toml
  {_PROG} storage import --from maildir /var/lib/sansmail --config /etc/sansmail.toml
"""

_NOT_POSTGRESQL: Final = (
    '[storage] backend is "maildir" in {where}: these commands work on a PostgreSQL'
    ' database; set backend = "postgresql" and dsn = "postgresql://..."'
)


def add_commands(
    command: Callable[..., argparse.ArgumentParser],
    group: Callable[..., _cli.Subcommands],
) -> None:
    """Add ``storage`` and its actions with `_cli._build_parser`'s own makers."""
    storage = group(
        "storage", "the PostgreSQL backend's schema; move mail between backends", _STORAGE_HELP
    )
    command(
        storage,
        "migrate",
        "create or upgrade the PostgreSQL schema",
        _migrate,
        _MIGRATE_HELP,
        parent="storage",
    )
    export = command(
        storage,
        "export",
        "write the database's mailboxes out as Maildirs",
        _export,
        _EXPORT_HELP,
        parent="storage",
    )
    export.add_argument(
        "--to",
        nargs=2,
        metavar=("maildir", "DIR"),
        required=True,
        help="the data directory to write (DIR/mail/<domain>/<local>/, DIR/users.json)",
    )
    importing = command(
        storage,
        "import",
        "copy a Maildir data directory's mailboxes into the database",
        _import,
        _IMPORT_HELP,
        parent="storage",
    )
    importing.add_argument(
        "--from",
        dest="source",
        nargs=2,
        metavar=("maildir", "DIR"),
        required=True,
        help="the data directory to read (DIR/mail/<domain>/<local>/, DIR/users.json)",
    )


# --- the commands -------------------------------------------------------------------------


def _migrate(args: argparse.Namespace) -> int:
    config = _cli._load(args, as_owner=False)
    db = _database(config)
    from sansmail.storage.pg import DatabaseError, migrate  # noqa: PLC0415
    from sansmail.storage.pg._db import first_line  # noqa: PLC0415

    try:
        before, after = migrate(db)
    except DatabaseError as exc:
        raise _cli.CommandError(first_line(exc)) from None
    finally:
        db.close()
    if before == after:
        print(f"already at version {after}")
    else:
        print(f"schema version {before} -> {after}")
    return 0


def _export(args: argparse.Namespace) -> int:
    target = _maildir_dir(args.to, "--to")
    config = _cli._load(args)
    db = _database(config)
    from sansmail.storage.pg._transfer import export_maildir  # noqa: PLC0415

    try:
        with _failures("nothing more exported"):
            moved = export_maildir(db, target, hostname=config.hostname, progress=_show)
    finally:
        db.close()
    print(f"exported {_counts(moved)} to {target}")
    return 0


def _import(args: argparse.Namespace) -> int:
    source = _maildir_dir(args.source, "--from")
    config = _cli._load(args)
    db = _database(config)
    from sansmail.storage.pg._transfer import import_maildir  # noqa: PLC0415

    try:
        with _failures("the folders listed above are in the database; nothing more imported"):
            moved = import_maildir(db, source, hostname=config.hostname, progress=_show)
    finally:
        db.close()
    print(f"imported {_counts(moved)} from {source}")
    return 0


# --- helpers --------------------------------------------------------------------------


def _database(config: Config) -> Database:
    """A `Database` on the configuration's DSN, after checking that it names one and that
    the driver is installed (nothing connects yet)."""
    where = config.source_name
    if config.storage.backend != "postgresql":
        raise _cli.CommandError(_NOT_POSTGRESQL.format(where=where))
    if not config.storage.dsn:
        raise _cli.CommandError(f"[storage] dsn is empty in {where}")
    try:
        from sansmail.storage.pg import Database  # noqa: PLC0415
    except ImportError:
        raise _cli.CommandError(
            "PostgreSQL support is not installed: install sansmail[postgresql] (psycopg)"
        ) from None
    return Database(config.storage.dsn, idle=2, application_name="sansmail-trio")


def _maildir_dir(value: list[str], option: str) -> pathlib.Path:
    kind, where = value
    if kind != "maildir":
        raise _cli.CommandError(f"{option} {kind}: the only kind is maildir: {option} maildir DIR")
    return pathlib.Path(where)


def _show(moved: FolderMoved) -> None:
    print(
        f"{moved.mailbox} {moved.name}: {_plural(moved.messages, 'message')},"
        f" UIDVALIDITY {moved.uidvalidity}",
        flush=True,
    )


def _counts(moved: Moved) -> str:
    return (
        f"{_plural(moved.users, 'user')}, {_plural(moved.scripts, 'Sieve script')},"
        f" {_plural(moved.mailboxes, 'mailbox', 'mailboxes')},"
        f" {_plural(moved.folders, 'folder')}, {_plural(moved.messages, 'message')}"
        f" ({moved.octets} octets)"
    )


def _plural(count: int, singular: str, plural: str | None = None) -> str:
    return f"{count} {singular if count == 1 else plural or singular + 's'}"


@contextlib.contextmanager
def _failures(after: str) -> Iterator[None]:
    """A refusal or a failure half-way as one line (a `_cli.CommandError`)."""
    from sansmail.storage.maildir import ImapStoreError  # noqa: PLC0415
    from sansmail.storage.pg import DatabaseError, SchemaError  # noqa: PLC0415
    from sansmail.storage.pg._db import first_line  # noqa: PLC0415
    from sansmail.storage.pg._transfer import TransferError  # noqa: PLC0415

    try:
        yield
    except (TransferError, SchemaError) as exc:  # before anything was written
        raise _cli.CommandError(str(exc)) from None
    except DatabaseError as exc:
        raise _cli.CommandError(f"{first_line(exc)} ({after})") from None
    except ImapStoreError as exc:
        raise _cli.CommandError(f"{exc} ({after})") from None
    except sqlite3.Error as exc:
        raise _cli.CommandError(f"a folder index failed: {exc} ({after})") from None
