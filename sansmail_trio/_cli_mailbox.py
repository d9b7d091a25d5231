"""`sansmail-trio mailbox list|status|resync|expunge`: a user's folders, looked at and
repaired from the command line, as ``doveadm mailbox list``, ``doveadm mailbox status``,
``doveadm force-resync`` and ``doveadm expunge`` do for Dovecot.

Like doveadm, these work on the storage directly, not through the running server: the
Maildir store (`MaildirAccount.folder_status`, `resync`, `expunge_before`) takes the same
folder and account locks the IMAP sessions take, so they are safe beside a running
`serve`, whose sessions see the changes as they see another client's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final, Protocol

import attrs

from sansmail.config._values import duration as parse_duration
from sansmail.mail.address import MailboxId
from sansmail.storage.maildir import (
    FolderInfo,
    FolderStatus,
    ImapStoreError,
    InvalidFolderNameError,
    MaildirImapStore,
    NoSuchFolderError,
    QuotaLimits,
    Resynced,
)

# A module import, not its names: _cli imports this module while it is being made.
from sansmail_trio import _cli
from sansmail_trio._cli_admin import print_table

__all__ = ["add_commands"]

# _cli.PROG is not made yet when _cli imports this module.
_PROG: Final = "sansmail-trio"


_EXAMPLES: Final = f"""\
examples:
  {_PROG} mailbox list alice@example.test
  {_PROG} mailbox status alice@example.test
  {_PROG} mailbox status alice@example.test INBOX --json
  {_PROG} mailbox resync alice@example.test Archive
  {_PROG} mailbox expunge alice@example.test Trash --before 30d
  {_PROG} mailbox expunge alice@example.test "Old mail" --before 2024-01-01
"""

_LIVE: Final = """\
These work on the user's Maildir directly, as doveadm does, taking the locks the IMAP
sessions take, so they are safe while the server runs. A running session sees what they
change as it sees another client's changes: an IMAP client idling on the folder at once,
any other at its next command (NOOP, FETCH, ...). With [storage] backend = "postgresql"
they work on the database, and every node's sessions see the change the same way; resync
there only checks (the rows are the index: there is nothing to rebuild).
"""

_MAILBOX_HELP: Final = f"""\
Look at and repair users' mailboxes, like doveadm mailbox / force-resync / expunge.

  mailbox list USER                 the user's folders, as IMAP LIST names them, with
                                    their subscription and special use (RFC 6154)
  mailbox status USER [FOLDER]      per folder (all, or one): messages, unseen, recent,
                                    vsize (octets, as RFC822.SIZE counts them),
                                    UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ: the numbers
                                    IMAP STATUS gives
  mailbox resync USER [FOLDER]      check each folder's index (all, or one) against the
                                    Maildir and rebuild it where it must be
                                    (doveadm force-resync)
  mailbox expunge USER FOLDER --before DATE
                                    delete the messages received before DATE

{_LIVE}
{_EXAMPLES}"""

_STATUS_HELP: Final = f"""\
The counts of a user's folders (all, or FOLDER), one row each: MESSAGES, UNSEEN,
RECENT (not yet seen by any read-write IMAP session), VSIZE (the messages' octets with
CRLF line ends, as RFC822.SIZE and STATUS SIZE count them), UIDVALIDITY, UIDNEXT and
HIGHESTMODSEQ (RFC 7162). They are the numbers an IMAP STATUS command gets, after the
same look at the Maildir (mail delivered a moment ago is counted).

{_LIVE}
output:
  FOLDER   MESSAGES  UNSEEN  RECENT  VSIZE  UIDVALIDITY  UIDNEXT  HIGHESTMODSEQ
  INBOX           2       1       0   1850   1765090800        3              4
  Sent            0       0       0      0   1765090800        1              1

{_EXAMPLES}"""

_LIST_HELP: Final = f"""\
A user's folders, one row each: the name as IMAP LIST shows it (UTF-8, "/" between
levels), whether the user is subscribed to it, and its special use (RFC 6154).

output:
  FOLDER   SUBSCRIBED  SPECIAL-USE
  INBOX    yes
  Archive  yes         \\Archive

{_EXAMPLES}"""

_RESYNC_HELP: Final = f"""\
Check a folder's index (each folder's, without FOLDER) against its Maildir and rebuild
it where it must be, like doveadm force-resync. Messages (the files), their flags (the
letters in the file names) and keywords are always kept. What happens to the UIDs:

  checked      the index was sound: it is kept, compared with the Maildir in full
               (files added or removed by hand are found) and its FETCH/SEARCH caches
               are dropped. UIDs and UIDVALIDITY unchanged.
  rebuilt      the index was damaged but its header still read: a new index under the
               SAME UIDVALIDITY, every message row that could be read keeps its UID;
               a message whose row was lost gets a new UID.
  renumbered   the index was lost (deleted, emptied, unreadable): the UIDs were in it
               only, so the messages are numbered again under a NEW UIDVALIDITY, and
               IMAP clients download the folder again (as Dovecot does when its
               dovecot-uidlist is lost).
  made         the folder had never been indexed (a Maildir from Dovecot keeps the UIDs
               of its dovecot-uidlist).

{_LIVE}A session on a folder whose UIDVALIDITY changed is told the folder is gone (the
client selects it again).

output:
  INBOX: checked: 2 messages, UIDVALIDITY 1765090800 kept
  Archive: renumbered: 12 messages, UIDVALIDITY 1765090800 -> 1765094411

{_EXAMPLES}"""

_EXPUNGE_HELP: Final = f"""\
Delete the messages of FOLDER received before DATE (their IMAP INTERNALDATE: when the
message arrived, or the date an IMAP client gave with APPEND), like
doveadm expunge mailbox FOLDER before DATE (not savedbefore: APPENDed mail
carries its own date), whatever their flags. The files are removed and the removal
is on disk before the command prints; the user's quota usage drops with them.

DATE is YYYY-MM-DD (midnight UTC starting that day), or an age: a number and a unit,
s, m, h, d or w (30d: received more than 30 days ago).

{_LIVE}An IMAP client with the folder open gets EXPUNGE for each.

output:
  expunged 3 messages from Trash of alice@example.test (received before 2026-11-07 18:02:11 UTC)

{_EXAMPLES}"""

#: An age for --before: a duration of the config's units, the unit required (a bare
#: number would read as seconds).
_AGE: Final = re.compile(r"[0-9]{1,9}[smhdw]\Z")
_DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
_EARLIEST: Final = int(datetime.datetime(1, 1, 1, tzinfo=datetime.UTC).timestamp())


def add_commands(
    command: Callable[..., argparse.ArgumentParser],
    group: Callable[..., _cli.Subcommands],
) -> None:
    """Add ``mailbox`` and its actions with `_cli._build_parser`'s own `command` and
    `group` makers."""
    mailbox = group("mailbox", "look at and repair users' mailboxes (doveadm)", _MAILBOX_HELP)

    def user(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("user", metavar="USER", help="the user's address")

    listing = command(
        mailbox,
        "list",
        "list a user's folders",
        _list,
        _LIST_HELP,
        parent="mailbox",
    )
    user(listing)
    listing.add_argument(
        "--json",
        action="store_true",
        help='one JSON array: [{"name": ..., "subscribed": true|false, "special_use": '
        '"\\\\Sent"|null}, ...]',
    )
    status = command(
        mailbox,
        "status",
        "messages, unseen, recent, size, UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ of folders",
        _status,
        _STATUS_HELP,
        parent="mailbox",
    )
    user(status)
    status.add_argument("folder", metavar="FOLDER", nargs="?", help="one folder (default: all)")
    status.add_argument(
        "--json",
        action="store_true",
        help='one JSON array: [{"name": "INBOX", "messages": 2, "unseen": 1, "recent": 0, '
        '"deleted": 0, "vsize": 1850, "uidvalidity": ..., "uidnext": 3, '
        '"highestmodseq": 4}, ...]',
    )
    resync = command(
        mailbox,
        "resync",
        "rebuild folders' indexes from the Maildir (doveadm force-resync)",
        _resync,
        _RESYNC_HELP,
        parent="mailbox",
    )
    user(resync)
    resync.add_argument("folder", metavar="FOLDER", nargs="?", help="one folder (default: all)")
    resync.add_argument("--json", action="store_true", help="one JSON array, an object a folder")
    expunge = command(
        mailbox,
        "expunge",
        "delete a folder's messages received before --before DATE",
        _expunge,
        _EXPUNGE_HELP,
        parent="mailbox",
    )
    user(expunge)
    expunge.add_argument("folder", metavar="FOLDER", help="the folder")
    expunge.add_argument(
        "--before",
        metavar="DATE",
        required=True,
        help="YYYY-MM-DD (midnight UTC) or an age such as 30d, 12h, 2w",
    )
    expunge.add_argument(
        "--json",
        action="store_true",
        help='one JSON object: {"folder": ..., "before": "<RFC 3339>", "expunged": N, '
        '"uids": [...]}',
    )


# --- the commands -------------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    address, account = _account(args)
    with _errors(address):
        folders = [info for info in account.list_folders() if info.exists]
    if args.json:
        print(
            json.dumps(
                [
                    {"name": f.name, "subscribed": f.subscribed, "special_use": f.special_use}
                    for f in folders
                ],
                ensure_ascii=False,
            )
        )
        return 0
    rows: list[tuple[str, ...]] = [("FOLDER", "SUBSCRIBED", "SPECIAL-USE")]
    rows += [(f.name, "yes" if f.subscribed else "no", f.special_use or "") for f in folders]
    print_table(rows)
    return 0


def _status(args: argparse.Namespace) -> int:
    address, account = _account(args)
    with _errors(address):
        names = [args.folder] if args.folder is not None else _folders(account)
        found = [account.folder_status(name) for name in names]
    if args.json:
        print(json.dumps([attrs.asdict(s) for s in found], ensure_ascii=False))
        return 0
    rows: list[tuple[str, ...]] = [
        (
            "FOLDER",
            "MESSAGES",
            "UNSEEN",
            "RECENT",
            "VSIZE",
            "UIDVALIDITY",
            "UIDNEXT",
            "HIGHESTMODSEQ",
        )
    ]
    for f in found:
        numbers = (f.messages, f.unseen, f.recent, f.vsize, f.uidvalidity, f.uidnext)
        rows.append((f.name, *(str(n) for n in (*numbers, f.highestmodseq))))
    print_table(rows, numeric=range(1, 8))
    return 0


def _resync(args: argparse.Namespace) -> int:
    # The store logs each repair for a server's log; here the line printed says it.
    logging.getLogger("sansmail.repair").addHandler(logging.NullHandler())
    address, account = _account(args)
    done: list[Resynced] = []
    with _errors(address):
        names = [args.folder] if args.folder is not None else _folders(account)
        for name in names:
            result = account.resync(name)
            done.append(result)
            if not args.json:
                print(_resynced_line(result), flush=True)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": r.name,
                        "outcome": r.outcome,
                        "uidvalidity_before": r.uidvalidity_before,
                        "uidvalidity": r.uidvalidity,
                        "messages": r.messages,
                        "added": r.added,
                        "expunged": r.expunged,
                    }
                    for r in done
                ],
                ensure_ascii=False,
            )
        )
    return 0


def _resynced_line(r: Resynced) -> str:
    messages = f"{r.messages} message{'' if r.messages == 1 else 's'}"
    if r.uidvalidity_before == r.uidvalidity:
        validity = f"UIDVALIDITY {r.uidvalidity} kept"
    else:
        validity = f"UIDVALIDITY {r.uidvalidity_before or 'unknown'} -> {r.uidvalidity}"
    changes = []
    if r.added and r.outcome == "checked":
        changes.append(f"{r.added} new files indexed")
    elif r.added and r.outcome == "rebuilt":
        changes.append(f"{r.added} whose index entry was lost given new UIDs")
    if r.expunged:
        changes.append(f"{r.expunged} index entries without a file dropped")
    extra = f" ({', '.join(changes)})" if changes else ""
    return f"{r.name}: {r.outcome}: {messages}, {validity}{extra}"


def _expunge(args: argparse.Namespace) -> int:
    before = _cutoff(args.before, time.time())
    address, account = _account(args)
    with _errors(address):
        uids = account.expunge_before(args.folder, before)
    when = datetime.datetime.fromtimestamp(before, datetime.UTC)
    if args.json:
        print(
            json.dumps(
                {
                    "folder": args.folder,
                    "before": when.isoformat().replace("+00:00", "Z"),
                    "expunged": len(uids),
                    "uids": uids,
                },
                ensure_ascii=False,
            )
        )
        return 0
    count = f"{len(uids)} message{'' if len(uids) == 1 else 's'}"
    print(
        f"expunged {count} from {args.folder} of {address} "
        f"(received before {when:%Y-%m-%d %H:%M:%S} UTC)"
    )
    return 0


# --- helpers --------------------------------------------------------------------------


def _cutoff(text: str, now: float) -> int:
    """Seconds since the epoch of --before: a date (midnight UTC) or an age."""
    if _AGE.match(text):
        cutoff = int(now) - parse_duration(text)
        # The line printed after the expunge shows it as a date: one before year 1
        # (999999999w) would fail there, with the command's work already done.
        if cutoff >= _EARLIEST:
            return cutoff
        raise _cli.CommandError(f"--before {text!r}: an age reaching back before year 1")
    if _DATE.match(text):
        try:
            day = datetime.date.fromisoformat(text)
        except ValueError:
            pass
        else:
            return int(
                datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC).timestamp()
            )
    raise _cli.CommandError(f"--before {text!r}: expected YYYY-MM-DD or an age such as 30d")


class _Admin(Protocol):
    """What these commands use of an account: `MaildirAccount`, or
    `sansmail.storage.pg._admin.PgAccountAdmin` on the PostgreSQL backend."""

    def list_folders(self) -> list[FolderInfo]: ...

    def folder_status(self, name: str) -> FolderStatus: ...

    def resync(self, name: str) -> Resynced: ...

    def expunge_before(self, name: str, before: int) -> list[int]: ...


def _account(args: argparse.Namespace) -> tuple[str, _Admin]:
    """USER (who must be a user) and their account, opened as IMAP opens it, but
    without touching INBOX's index (a resync reads a damaged one before anything
    replaces it)."""
    config = _cli._load(args)
    address = _cli._local_address(config, args.user)
    users = _cli._user_store(config)
    if address.key not in users:
        raise _cli.CommandError(f"no such user: {address}")
    mailbox = MailboxId(domain=address.domain, local=address.local_part.lower())
    if config.storage.backend == "postgresql":
        # Imported here: psycopg is there only with the postgresql extra.
        from sansmail.storage.pg._admin import PgAccountAdmin  # noqa: PLC0415
        from sansmail.storage.pg._imapstore import PgImapStore  # noqa: PLC0415

        pg_store = PgImapStore(_cli._database(config), hostname=config.hostname)
        return str(address), PgAccountAdmin(pg_store.account(mailbox))
    store = MaildirImapStore(
        config.data_dir,
        hostname=config.hostname,
        quota=QuotaLimits(config.quota.storage, users.own_quota),
    )
    return str(address), store.account(mailbox, open_inbox=False)


def _folders(account: _Admin) -> list[str]:
    return [info.name for info in account.list_folders() if info.exists]


@contextmanager
def _errors(address: str) -> Iterator[None]:
    """The store's refusals as one line each (a `_cli.CommandError`)."""
    error = _cli.CommandError
    try:
        yield
    except NoSuchFolderError as exc:
        raise error(f"{address}: {exc}") from None
    except InvalidFolderNameError as exc:
        raise error(f"{address}: not a folder name: {exc}") from None
    except ImapStoreError as exc:
        raise error(f"{address}: {exc}") from None
    except sqlite3.Error as exc:
        raise error(f"{address}: the folder index failed: {exc}") from None
