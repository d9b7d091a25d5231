"""Moving mailboxes between the Maildir backend and PostgreSQL, both ways, keeping what
IMAP clients cache by: ``sansmail-trio storage import --from maildir DIR`` and
``storage export --to maildir DIR``.

Theory of operation
-------------------
What must survive the move. A client that synchronised a folder before knows it by its
UIDVALIDITY and its messages by UID (RFC 9051 §2.3.1.1); if either changed, it would drop
its cache and download the folder again. So each folder keeps its UIDVALIDITY and UIDNEXT,
each message its UID (gaps where messages were expunged included), its flags and
keywords, its INTERNALDATE with the zone it was given in, and its mod-sequence (RFC 7162:
a CONDSTORE client asks for changes since the HIGHESTMODSEQ it saw); the folder's
tombstones of expunged UIDs go along, for QRESYNC's VANISHED. Subscriptions, special use
and, once the accounts tables exist, users and Sieve scripts go too.

Import (Maildir -> database). Each mailbox under ``DIR/mail/<domain>/<local>/`` is opened
with the Maildir store's own code (`MaildirImapStore`), so that each folder's index is
first brought up to date with its files (a message delivered but never seen by IMAP gets
its UID then, as it would at the next SELECT; a folder Dovecot served keeps the UIDs of
its ``dovecot-uidlist``), and read through a read-only view: nothing of the source is
changed but what such a SELECT would change. Each folder is one transaction: its row with
the Maildir's counters, its messages in batches (contents once by digest, rows by COPY),
its tombstones, the mailbox's usage, and a notification; a folder is either all there or
not at all. Before anything is written, every folder to import is looked up: one that
exists in the database with messages in it is refused, and nothing is written (an empty
one, say INBOX made by a delivery, is taken over with the imported counters).

Export (database -> Maildir). Each mailbox is written into a staging directory beside
its target (``DIR/mail/<domain>/.sansmail-export.<local>.<pid>``, a dot name no mailbox
can have, on the same file system), then renamed into place in one step: a crash leaves a
staging directory to remove, never half a mailbox. Message files go into ``cur/`` with
their flag letters (``dovecot-keywords`` for the keywords), each fsync'd, the directory
fsync'd once per folder; then the folder's SQLite index is made by the index's own code
(`FolderIndex`, with the database's UIDVALIDITY) and its rows are written with the UIDs,
zones and mod-sequences, so the Maildir store opens the folder exactly as it was.
(Writing a ``dovecot-uidlist`` instead, which the index adopts on a folder's first sync,
would keep the UIDs too, but not the zones, the mod-sequences nor the tombstones.) A
target that exists and is not empty is refused before anything is written.

Everything blocks (file and database I/O); these run from the command line.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import hashlib
import os
import pathlib
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

import attrs

from sansmail.mail.address import MailboxId
from sansmail.storage.durable import fsync_dir, write_all, write_file_atomically
from sansmail.storage.maildir import (
    DEFAULT_SPECIAL_USE,
    FolderInfo,
    MaildirAccount,
    MaildirImapStore,
    MaildirStore,
    TooManyKeywordsError,
)
from sansmail.storage.maildir._imapindex import FolderIndex
from sansmail.storage.maildir._imapmaildir import bits_of, info_letters, to_crlf
from sansmail.storage.maildir._imapnames import INBOX, folder_dir, write_subscriptions
from sansmail.storage.maildir._imapschema import INSERT_MESSAGE
from sansmail.storage.maildir._maildir import _escape_hostname
from sansmail.storage.pg._db import Cursor, Database
from sansmail.storage.pg._mailrows import folder_key, mailbox_key, notify
from sansmail.storage.pg._schema import require_current
from sansmail.storage.pg._transfer_accounts import (
    Accounts,
    export_accounts,
    export_refusals,
    mailbox_dirs,
    mailbox_id,
    read_accounts,
    read_database_accounts,
    refuse_taken,
    write_accounts,
)
from sansmail.storage.users import UserError

__all__ = ["FolderMoved", "Moved", "TransferError", "export_maildir", "import_maildir"]

#: Octets of message content sent to the database per batch (and messages at most).
BATCH_OCTETS: Final = 8 * 1024 * 1024
BATCH_MESSAGES: Final = 1000
#: Rows a named cursor fetches from the database at a time, when exporting.
_FETCH_ROWS: Final = 200
_STAGING_PREFIX: Final = ".sansmail-export."
_DIR_MODE: Final = 0o700
_FILE_MODE: Final = 0o600
_O_CREATE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
# Account files of the Maildir store (`_imapaccount`).
_UIDVALIDITY_NAME: Final = "sansmail.uidvalidity"
_SUBSCRIPTIONS_NAME: Final = "subscriptions"


class TransferError(Exception):
    """A move refused before it began (or a folder that cannot be moved): str() is the
    one line to show."""


@attrs.frozen
class FolderMoved:
    """One folder copied."""

    mailbox: str  # "local@domain"
    name: str
    uidvalidity: int
    messages: int
    octets: int


@attrs.frozen
class Moved:
    """What a whole import or export copied."""

    mailboxes: int = 0
    folders: int = 0
    messages: int = 0
    octets: int = 0
    users: int = 0
    scripts: int = 0


# --- import --------------------------------------------------------------------------


def import_maildir(
    db: Database,
    data_dir: pathlib.Path,
    *,
    hostname: str,
    special_use: Mapping[str, str] = DEFAULT_SPECIAL_USE,
    progress: Callable[[FolderMoved], None] = lambda moved: None,
) -> Moved:
    """Copy every mailbox of the Maildir data directory `data_dir` into the database
    (see the module docstring); `progress` hears of each folder once it committed.
    `TransferError` before anything is written when a folder to import exists in the
    database with messages; `DatabaseError` from the database."""
    require_current(db)
    try:
        accounts = read_accounts(data_dir)
    except UserError as exc:
        raise TransferError(str(exc)) from None
    if not (data_dir / "mail").is_dir() and not accounts.users:
        raise TransferError(
            f"{data_dir}: neither mail/ nor users.json: not a sansmail data directory"
        )
    store = MaildirImapStore(data_dir, hostname=hostname, special_use=special_use)
    plans: list[tuple[MailboxId, list[FolderInfo]]] = []
    for mailbox in mailbox_dirs(data_dir / "mail"):
        with _closing(store.account(mailbox)) as account:
            plans.append((mailbox, account.list_folders()))
    _refuse_taken(db, plans, accounts)
    write_accounts(db, accounts)
    total = Moved(users=len(accounts.users), scripts=accounts.script_count)
    for mailbox, infos in plans:
        key = mailbox_key(mailbox)
        with _closing(store.account(mailbox)) as account:
            for info in infos:
                if not info.exists:
                    continue
                moved = _import_folder(db, account, key, info)
                total = attrs.evolve(
                    total,
                    folders=total.folders + 1,
                    messages=total.messages + moved.messages,
                    octets=total.octets + moved.octets,
                )
                progress(moved)
        _import_account(db, key, [info.name for info in infos if info.subscribed])
        total = attrs.evolve(total, mailboxes=total.mailboxes + 1)
    return total


def _refuse_taken(
    db: Database, plans: Sequence[tuple[MailboxId, list[FolderInfo]]], accounts: Accounts
) -> None:
    keys = [mailbox_key(m) for m, infos in plans for info in infos if info.exists]
    names = [info.name for _m, infos in plans for info in infos if info.exists]
    with db.transaction() as cur:
        cur.execute(
            "SELECT f.mailbox, f.name FROM mail_folders f"
            " JOIN unnest(%s::text[], %s::text[]) AS w (mailbox, name)"
            " ON f.mailbox = w.mailbox AND f.name = w.name"
            " WHERE EXISTS (SELECT 1 FROM mail_messages m WHERE m.folder_id = f.id)"
            " ORDER BY 1, 2",
            (keys, names),
        )
        taken = cur.fetchall()
        otherwise = refuse_taken(cur, accounts)
    problems = []
    if taken:
        shown = _some([f"{mailbox} {name}" for mailbox, name in taken])
        problems.append(
            f"{len(taken)} folder{'s' if len(taken) > 1 else ''} to import already hold"
            f" messages in the database ({shown})"
        )
    if otherwise:
        problems.append(f"the database holds otherwise {_some(otherwise)}")
    if problems:
        raise TransferError("; ".join(problems) + ": nothing imported")


def _some(items: Sequence[str]) -> str:
    more = f" and {len(items) - 3} more" if len(items) > 3 else ""
    return ", ".join(items[:3]) + more


def _import_folder(
    db: Database, account: MaildirAccount, key: str, info: FolderInfo
) -> FolderMoved:
    view = account.select(info.name, readonly=True)
    try:
        index = account.index_for(info.name)
        with index.read() as conn:
            header = index.header(conn)
            tombstones = conn.execute("SELECT uid, modseq FROM expunged ORDER BY uid").fetchall()
        uids = list(view.uids)
        states = view.flag_states(uids)
        dates = {m.uid: m.internaldate for m in view.messages}
        messages = octets = 0
        with db.transaction() as cur:
            folder_id = _claim_folder(
                cur,
                key,
                info.name,
                uidvalidity=view.uidvalidity,
                uidnext=view.uidnext,
                # The flags and tombstones were read after the view's sync: a change
                # made since carries a greater mod-sequence than the view's.
                highestmodseq=max(
                    (
                        view.highestmodseq,
                        *(modseq for modseq, _flags in states.values()),
                        *(modseq for _uid, modseq in tombstones),
                    )
                ),
                recent_uid=min(header.recent_uid, view.uidnext),
                keywords=list(view.keywords),
                special_use=info.special_use,
            )
            batch: list[tuple[int, bytes, int, frozenset[str], datetime.datetime]] = []
            size = 0
            for uid, content in view.contents(uids):
                state = states.get(uid)
                if content is None or state is None:
                    continue  # expunged since the listing: its UID stays a gap
                modseq, flags = state
                batch.append((uid, content, modseq, flags, dates[uid]))
                size += len(content)
                if size >= BATCH_OCTETS or len(batch) >= BATCH_MESSAGES:
                    _insert_messages(cur, folder_id, batch)
                    messages, octets = messages + len(batch), octets + size
                    batch, size = [], 0
            _insert_messages(cur, folder_id, batch)
            messages, octets = messages + len(batch), octets + size
            cur.execute(
                "INSERT INTO mail_expunged (folder_id, uid, modseq)"
                " SELECT %s, u, m FROM unnest(%s::bigint[], %s::bigint[]) AS t (u, m)",
                (folder_id, [t[0] for t in tombstones], [t[1] for t in tombstones]),
            )
            cur.execute(
                "INSERT INTO mail_usage (mailbox, octets, messages) VALUES (%s, %s, %s)"
                " ON CONFLICT (mailbox) DO UPDATE SET"
                " octets = mail_usage.octets + EXCLUDED.octets,"
                " messages = mail_usage.messages + EXCLUDED.messages",
                (key, octets, messages),
            )
            notify(cur, folder_key(folder_id))
        return FolderMoved(key, info.name, view.uidvalidity, messages, octets)
    finally:
        view.close()


def _claim_folder(
    cur: Cursor,
    key: str,
    name: str,
    *,
    uidvalidity: int,
    uidnext: int,
    highestmodseq: int,
    recent_uid: int,
    keywords: list[str],
    special_use: str | None,
) -> int:
    """The folder row for `name` with the imported counters: a new row, or an existing
    one with no messages (checked again under its lock: `_refuse_taken` looked before)."""
    values = (uidvalidity, uidnext, highestmodseq, recent_uid, keywords, special_use)
    cur.execute(
        "SELECT id FROM mail_folders WHERE mailbox = %s AND name = %s FOR UPDATE", (key, name)
    )
    row = cur.fetchone()
    if row is None:
        cur.execute(
            "INSERT INTO mail_folders (mailbox, name, uidvalidity, uidnext, highestmodseq,"
            " recent_uid, keywords, special_use) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " RETURNING id",
            (key, name, *values),
        )
        row = cur.fetchone()
        assert row is not None
        folder_id = int(row[0])
    else:
        folder_id = int(row[0])
        cur.execute(
            "SELECT EXISTS (SELECT 1 FROM mail_messages WHERE folder_id = %s)", (folder_id,)
        )
        taken = cur.fetchone()
        if taken and taken[0]:
            raise TransferError(f"{key} {name}: the folder holds messages in the database now")
        cur.execute(
            "UPDATE mail_folders SET uidvalidity = %s, uidnext = %s, highestmodseq = %s,"
            " recent_uid = %s, keywords = %s, special_use = coalesce(%s, special_use)"
            " WHERE id = %s",
            (*values, folder_id),
        )
        cur.execute("DELETE FROM mail_expunged WHERE folder_id = %s", (folder_id,))
    # A folder made later must still get a greater UIDVALIDITY than any imported.
    cur.execute(
        "SELECT setval('mail_uidvalidity', %s) FROM mail_uidvalidity WHERE last_value < %s",
        (uidvalidity, uidvalidity),
    )
    return folder_id


def _insert_messages(
    cur: Cursor,
    folder_id: int,
    batch: Sequence[tuple[int, bytes, int, frozenset[str], datetime.datetime]],
) -> None:
    """Contents once by digest (the no-op update locks an existing row, as
    `_mailrows.store_content` does), then the rows by COPY."""
    if not batch:
        return
    digests = [hashlib.sha256(content).digest() for _uid, content, *_ in batch]
    cur.executemany(
        "INSERT INTO mail_contents (digest, size, content) VALUES (%s, %s, %s)"
        " ON CONFLICT (digest) DO UPDATE SET size = EXCLUDED.size",
        [(d, len(content), content) for d, (_uid, content, *_) in zip(digests, batch, strict=True)],
    )
    with cur.copy(
        "COPY mail_messages (folder_id, uid, digest, size, internaldate, zone, flags, modseq)"
        " FROM STDIN"
    ) as copy:
        copy.set_types(["int8", "int8", "bytea", "int8", "timestamptz", "int4", "text[]", "int8"])
        for digest, (uid, content, modseq, flags, when) in zip(digests, batch, strict=True):
            offset = when.utcoffset()
            zone = int(offset.total_seconds()) // 60 if offset else 0
            copy.write_row(
                (folder_id, uid, digest, len(content), when, zone, sorted(flags), modseq)
            )


def _import_account(db: Database, key: str, subscribed: Iterable[str]) -> None:
    """The mailbox's subscriptions; and its mark as opened by IMAP before, so the first
    IMAP session does not make the special-use folders the user may have deleted."""
    names = sorted(set(subscribed))
    with db.transaction() as cur:
        cur.execute(
            "INSERT INTO mail_subscriptions (mailbox, name) SELECT %s, n FROM unnest(%s::text[])"
            " AS n ON CONFLICT DO NOTHING",
            (key, names),
        )
        cur.execute(
            "INSERT INTO mail_imap_accounts (mailbox) VALUES (%s) ON CONFLICT DO NOTHING", (key,)
        )


# --- export --------------------------------------------------------------------------


@attrs.frozen
class _Folder:
    id: int
    mailbox: str
    name: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    recent_uid: int
    keywords: tuple[str, ...]


def export_maildir(
    db: Database,
    data_dir: pathlib.Path,
    *,
    hostname: str,
    progress: Callable[[FolderMoved], None] = lambda moved: None,
) -> Moved:
    """Write every mailbox of the database as Maildirs under ``data_dir/mail/`` (see
    the module docstring); `progress` hears of each folder once it is on disk.
    `TransferError` before anything is written when a target Maildir exists and is not
    empty, or a folder holds more keywords than a Maildir can name (26)."""
    require_current(db)
    with db.transaction() as cur:
        cur.execute(
            "SELECT id, mailbox, name, uidvalidity, uidnext, highestmodseq, recent_uid, keywords"
            " FROM mail_folders ORDER BY mailbox, name <> 'INBOX', name"
        )
        folders = [
            _Folder(
                id=int(fid),
                mailbox=mailbox,
                name=name,
                uidvalidity=int(validity),
                uidnext=int(uidnext),
                highestmodseq=int(modseq),
                recent_uid=int(recent),
                keywords=tuple(keywords),
            )
            for fid, mailbox, name, validity, uidnext, modseq, recent, keywords in cur.fetchall()
        ]
        cur.execute("SELECT mailbox, name FROM mail_subscriptions ORDER BY mailbox, name")
        subscriptions: dict[str, list[str]] = {}
        for mailbox, name in cur.fetchall():
            subscriptions.setdefault(mailbox, []).append(name)
        cur.execute(
            "SELECT f.mailbox, f.name, count(DISTINCT k) FROM mail_folders f"
            " JOIN mail_messages m ON m.folder_id = f.id, unnest(m.flags) AS k"
            " WHERE left(k, 1) <> '\\' GROUP BY 1, 2 HAVING count(DISTINCT k) > 26"
        )
        crowded = cur.fetchall()
    if crowded:
        mailbox, name, count = crowded[0]
        raise TransferError(
            f"{mailbox} {name}: {count} keywords, and a Maildir folder can name 26: nothing"
            " exported"
        )
    by_mailbox: dict[str, list[_Folder]] = {}
    for folder in folders:
        by_mailbox.setdefault(folder.mailbox, []).append(folder)
    accounts = read_database_accounts(db)
    paths = MaildirStore(data_dir, hostname=hostname)
    targets = {key: paths.maildir(mailbox_id(key)) for key in by_mailbox}
    busy = [f"{path} exists and is not empty" for path in targets.values() if _not_empty(path)]
    busy += export_refusals(data_dir, accounts)
    if busy:
        raise TransferError(f"{_some(busy)}: nothing exported")
    export_accounts(data_dir, accounts)
    total = Moved(users=len(accounts.users), scripts=accounts.script_count)
    for key, mailbox_folders in by_mailbox.items():
        done = _export_mailbox(
            db,
            targets[key],
            key=key,
            folders=mailbox_folders,
            subscribed=subscriptions.get(key, []),
            hostname=hostname,
            progress=progress,
        )
        total = attrs.evolve(
            total,
            mailboxes=total.mailboxes + 1,
            folders=total.folders + len(done),
            messages=total.messages + sum(f.messages for f in done),
            octets=total.octets + sum(f.octets for f in done),
        )
    return total


def _export_mailbox(
    db: Database,
    target: pathlib.Path,
    *,
    key: str,
    folders: Sequence[_Folder],
    subscribed: Sequence[str],
    hostname: str,
    progress: Callable[[FolderMoved], None],
) -> list[FolderMoved]:
    os.makedirs(target.parent, _DIR_MODE, exist_ok=True)
    prefix = f"{_STAGING_PREFIX}{target.name}."
    for entry in os.listdir(target.parent):
        if entry.startswith(prefix):  # a crashed run's: never renamed, so never in use
            shutil.rmtree(target.parent / entry, ignore_errors=True)
    staging = target.parent / f"{prefix}{os.getpid()}"
    _make_maildir(staging, folder=False)
    done = []
    try:
        for folder in folders:
            moved = _export_folder(db, staging, folder, hostname)
            if moved is not None:
                done.append(moved)
        last = max((f.uidvalidity for f in folders), default=0)
        if last:
            write_file_atomically(str(staging / _UIDVALIDITY_NAME), f"{last}\n".encode())
        write_subscriptions(str(staging / _SUBSCRIPTIONS_NAME), subscribed)
        fsync_dir(str(staging))
        # rename(2) replaces an empty directory: the target may exist, empty.
        os.rename(staging, target)
        fsync_dir(str(target.parent))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for moved in done:
        progress(moved)
    return done


def _export_folder(
    db: Database, root: pathlib.Path, listed: _Folder, hostname: str
) -> FolderMoved | None:
    """Write folder `listed` under the Maildir `root`; None if it is gone meanwhile."""
    with db.transaction() as cur:
        # One snapshot for the folder's row, its messages and its tombstones: a message
        # a node adds meanwhile is in none of them, so no exported UID reaches UIDNEXT
        # and HIGHESTMODSEQ is above every exported mod-sequence.
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cur.execute(
            "SELECT uidvalidity, uidnext, highestmodseq, recent_uid, keywords"
            " FROM mail_folders WHERE id = %s",
            (listed.id,),
        )
        row = cur.fetchone()
        if row is None:
            return None
        validity, uidnext, modseq, recent, keywords = row
        folder = attrs.evolve(
            listed,
            uidvalidity=int(validity),
            uidnext=int(uidnext),
            highestmodseq=int(modseq),
            recent_uid=int(recent),
            keywords=tuple(keywords),
        )
        return _write_folder(cur, folder_dir(root, folder.name), folder, hostname)


def _write_folder(cur: Cursor, path: str, folder: _Folder, hostname: str) -> FolderMoved:
    if folder.name != INBOX:
        _make_maildir(pathlib.Path(path), folder=True)
    messages = octets = 0
    index = FolderIndex(
        path,
        uidvalidity=lambda: folder.uidvalidity,
        lock=contextlib.nullcontext,
        clock=lambda: 0,
    )
    try:
        index.open()  # made with the database's UIDVALIDITY (there is no uidlist to adopt)
        host = _escape_hostname(hostname)
        pid = os.getpid()
        cur_dir = os.path.join(path, "cur")
        with index.write() as conn:
            cur.execute(
                "SELECT DISTINCT k FROM mail_messages, unnest(flags) AS k"
                " WHERE folder_id = %s AND left(k, 1) <> '\\'",
                (folder.id,),
            )
            names = sorted({*folder.keywords, *(row[0] for row in cur.fetchall())})
            try:
                index.allocate_keywords(names)
            except TooManyKeywordsError:
                raise TransferError(
                    f"{folder.mailbox} {folder.name}: more keywords than a Maildir folder"
                    " can name (26)"
                ) from None
            table = index.keywords()
            # Keywords match without regard to case: spelt as the table spells them.
            known = {k.lower(): k for k in table if k is not None}
            written = []
            rows = []
            for uid, flags, when, zone, modseq, content in _stream(cur, folder.id):
                try:
                    bits, keywords = bits_of(flags)
                except ValueError as exc:
                    raise TransferError(
                        f"{folder.mailbox} {folder.name} UID {uid}: {exc}"
                    ) from None
                spelled = {known[k.lower()] for k in keywords if k.lower() in known}
                data = to_crlf(content).replace(b"\r\n", b"\n")
                wire = len(data) + data.count(b"\n")
                stamp = when.timestamp()
                secs, micros = divmod(round(stamp * 1_000_000), 1_000_000)
                base = f"{secs}.M{micros}P{pid}E{uid:010d}.{host},S={len(data)},W={wire}"
                name = f"{base}:2,{info_letters(bits, spelled, table, None)}"
                written.append(os.path.join(cur_dir, name))
                _write_file(written[-1], data, stamp)
                rows.append(
                    (uid, base, "cur/" + name, bits, " ".join(sorted(spelled)),
                     int(stamp), zone, wire, modseq)
                )  # fmt: skip
                messages += 1
                octets += wire
            _make_durable(cur_dir, written)
            conn.executemany(INSERT_MESSAGE, rows)
            conn.execute(
                "UPDATE folder SET uidnext = ?, highestmodseq = ?, recent_uid = ?",
                (folder.uidnext, folder.highestmodseq, folder.recent_uid),
            )
            cur.execute("SELECT uid, modseq FROM mail_expunged WHERE folder_id = %s", (folder.id,))
            conn.executemany("INSERT INTO expunged (uid, modseq) VALUES (?, ?)", cur.fetchall())
    finally:
        index.close()
    return FolderMoved(folder.mailbox, folder.name, folder.uidvalidity, messages, octets)


def _stream(
    cur: Cursor, folder_id: int
) -> Iterator[tuple[int, list[str], datetime.datetime, int, int, bytes]]:
    """The folder's messages by ascending UID, a few hundred rows from the server at a
    time (a named cursor in the caller's transaction), so a big folder never sits whole
    in memory."""
    with cur.connection.cursor(name=f"sansmail_export_{folder_id}") as named:
        named.itersize = _FETCH_ROWS
        named.execute(
            "SELECT m.uid, m.flags, m.internaldate, m.zone, m.modseq, c.content"
            " FROM mail_messages m JOIN mail_contents c USING (digest)"
            " WHERE m.folder_id = %s ORDER BY m.uid",
            (folder_id,),
        )
        row: Any
        for row in named:
            uid, flags, when, zone, modseq, content = row
            yield int(uid), list(flags), when, int(zone), int(modseq), bytes(content)


def _write_file(path: str, data: bytes, mtime: float) -> None:
    """`data` in a new file at `path`, with `mtime` (the INTERNALDATE); `_make_durable`
    puts it on disk."""
    fd = os.open(path, _O_CREATE, _FILE_MODE)
    try:
        write_all(fd, data)
        os.utime(fd, (mtime, mtime))
    finally:
        os.close(fd)


def _make_durable(directory: str, paths: Sequence[str]) -> None:
    """Put the new files `paths` of `directory`, and their names, on disk.

    One ``syncfs(2)`` of their file system where there is one (Linux) writes them back
    together: 10,000 files of 4 KiB took 1.7 s that way on the development machine,
    against 5 to 9 s with an fsync of each as it was written (each waits for a journal
    commit of its own). Where syncfs is missing or fails (before Linux 5.8 it does not
    report write-back errors, but then it returns 0 and this trusts it), each file is
    fsync'd."""
    if _SYNCFS is not None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            done = _SYNCFS(fd) == 0
        finally:
            os.close(fd)
        if done:
            return
    for path in paths:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(directory)


def _find_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function: Callable[[int], int] = libc.syncfs
    except (OSError, AttributeError):
        return None
    return function


_SYNCFS: Final = _find_syncfs()


def _make_maildir(path: pathlib.Path, *, folder: bool) -> None:
    os.makedirs(path, _DIR_MODE, exist_ok=True)
    for sub in ("tmp", "new", "cur"):
        with contextlib.suppress(FileExistsError):
            os.mkdir(path / sub, _DIR_MODE)
    if folder:  # the Maildir++ marker of a folder that is not INBOX
        os.close(os.open(path / "maildirfolder", os.O_WRONLY | os.O_CREAT, _FILE_MODE))
    fsync_dir(str(path))


def _not_empty(path: pathlib.Path) -> bool:
    try:
        return bool(os.listdir(path))
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        return True


@contextlib.contextmanager
def _closing(account: MaildirAccount) -> Iterator[MaildirAccount]:
    try:
        yield account
    finally:
        account.close()
