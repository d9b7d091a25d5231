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
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

# A module import, not its names: _cli imports this module while it is being made.
from sansmail_trio import _cli

if TYPE_CHECKING:
    from sansmail.config import Config
    from sansmail.storage.pg import Database

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

_NOT_POSTGRESQL: Final = (
    '[storage] backend is "maildir" in {where}: these commands work on a PostgreSQL'
    ' database; set backend = "postgresql" and dsn = "postgresql://..."'
)


def add_commands(
    command: Callable[..., argparse.ArgumentParser],
    group: Callable[..., _cli.Subcommands],
    not_built: Callable[..., argparse.ArgumentParser],
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
    for action, summary in (
        ("export", "copy every mailbox out, as Maildirs"),
        ("import", "copy Maildirs in"),
    ):
        sub = not_built(storage, action, summary, parent="storage")
        where = sub.add_mutually_exclusive_group()
        where.add_argument("--to", nargs=2, metavar=("maildir", "DIR"), help="into Maildirs")
        where.add_argument("--from", nargs=2, metavar=("maildir", "DIR"), help="from Maildirs")


# --- the commands -------------------------------------------------------------------------


def _migrate(args: argparse.Namespace) -> int:
    config = _cli._load(args, as_owner=False)
    db = _database(config)
    from sansmail.storage.pg import DatabaseError, migrate  # noqa: PLC0415

    try:
        before, after = migrate(db)
    except DatabaseError as exc:
        raise _cli.CommandError(_first_line(exc)) from None
    finally:
        db.close()
    if before == after:
        print(f"already at version {after}")
    else:
        print(f"schema version {before} -> {after}")
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
