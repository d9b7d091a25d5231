"""Maildir -> PostgreSQL -> Maildir (`sansmail.storage.pg._transfer`): a mailbox with
several folders, flags, keywords, INTERNALDATEs in several zones, UIDs with gaps and
tombstones (expunged messages), a non-trivial UIDVALIDITY and subscriptions is imported,
found the same in the tables, exported to a new data directory, and found the same by
the Maildir IMAP store there; and the refusals that keep either side from being
overwritten."""

from __future__ import annotations

import datetime
import os
import pathlib
import time
from typing import Any, Protocol

import pytest
from argon2 import PasswordHasher
from psycopg.types.json import Jsonb

from sansmail.mail.address import MailboxId, parse_address
from sansmail.storage.maildir import FlagMode, MailAccount, MaildirImapStore
from sansmail.storage.pg import Database, _transfer
from sansmail.storage.pg._imapstore import PgImapStore
from sansmail.storage.pg._mailrows import mailbox_key
from sansmail.storage.pg._transfer import (
    FolderMoved,
    TransferError,
    export_maildir,
    import_maildir,
)
from sansmail.storage.pg._users import PgUserStore
from sansmail.storage.sieve import SieveStore
from sansmail.storage.users import Users, UserStore

HOST = "mx.example.test"
PASSWORDS = {"alice@example.test": "alice's secret", "bob.smith@example.test": "bob's secret"}
ALICE = MailboxId(domain="example.test", local="alice")
BOB = MailboxId(domain="example.test", local="bob.smith")
_FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
# Four years back: UIDVALIDITYs well below the database's sequence (started at its
# migration), so keeping them is not the sequence's doing.
_PAST_NS = 4 * 365 * 86400 * 10**9


def _clock() -> int:
    return time.time_ns() - _PAST_NS


def _zone(minutes: int) -> datetime.timezone:
    return datetime.timezone(datetime.timedelta(minutes=minutes))


def _message(n: int) -> bytes:
    body = "".join(f"line {i} of message {n}\r\n" for i in range(n % 7 + 1))
    return f"From: a@example.test\r\nSubject: message {n}\r\n\r\n{body}".encode()


def _make_source(data: pathlib.Path) -> None:
    store = MaildirImapStore(data, hostname=HOST, clock=_clock)
    account = store.account(ALICE)
    account.create("Work")
    account.create("Work/Deep")
    account.create("Ünïcode")
    account.unsubscribe("Junk")
    account.subscribe("Work/Deep")
    account.subscribe("Gone/Never")  # subscribed, never made
    zones = [0, 120, -300, 330]
    for folder, count in (("INBOX", 12), ("Work", 5), ("Work/Deep", 3), ("Ünïcode", 2)):
        for n in range(count):
            flags: list[str] = []
            if n % 2:
                flags.append("\\Seen")
            if n % 3 == 0:
                flags.append("\\Flagged")
            if n % 4 == 1:
                flags += ["$Label1", "Project-X"]
            when = datetime.datetime(2023, 1 + n % 12, 1 + n, 8, n, 7, tzinfo=_zone(zones[n % 4]))
            account.append(folder, _message(n), flags, when)
    view = account.select("INBOX")
    # Gaps: UIDs 3, 4 and 9 expunged (tombstones), a flag change (a newer modseq).
    view.store_flags([3, 4, 9], ["\\Deleted"], FlagMode.ADD)
    view.expunge()
    view.store_flags([5], ["\\Answered", "Later"], FlagMode.ADD)
    view.sync()
    view.close()
    account.close()
    # A message delivered but never seen by IMAP: the import's sync gives it its UID.
    inbox = data / "mail" / "example.test" / "alice"
    (inbox / "new" / "1500000000.M1P1Q1.mx.example.test").write_bytes(b"Subject: late\n\nhi\n")
    bob = store.account(BOB)
    bob.append("INBOX", _message(99), ["\\Draft"])
    bob.close()
    users = UserStore(data / "users.json", hasher=_FAST, cram_md5=True)
    users.add(parse_address("Alice@example.test"), "alice's secret", quota=10**9)
    users.add(parse_address("bob.smith@example.test"), "bob's secret")
    users.scram_secret()  # made on first use: users.json.scram-secret
    scripts = SieveStore(data)
    scripts.put(ALICE, "vacation", b'require "vacation";\r\nvacation "away";\r\n')
    scripts.put(ALICE, "plain", b"keep;\r\n")
    scripts.activate(ALICE, "vacation")
    scripts.put(BOB, "draft", b"discard;\r\n")


class _TableScripts:
    """The ``sieve_scripts`` rows, read as a script store reads them."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def list(self, mailbox: MailboxId) -> list[tuple[str, bool]]:
        with self.db.transaction() as cur:
            cur.execute(
                "SELECT name, active FROM sieve_scripts WHERE mailbox = %s ORDER BY name",
                (mailbox_key(mailbox),),
            )
            return [(name, active) for name, active in cur.fetchall()]

    def get(self, mailbox: MailboxId, name: str) -> bytes:
        with self.db.transaction() as cur:
            cur.execute(
                "SELECT script FROM sieve_scripts WHERE mailbox = %s AND name = %s",
                (mailbox_key(mailbox), name),
            )
            row = cur.fetchone()
            assert row is not None
            return bytes(row[0])


class _Scripts(Protocol):
    def list(self, mailbox: MailboxId) -> list[tuple[str, bool]]: ...

    def get(self, mailbox: MailboxId, name: str) -> bytes: ...


def _accounts(users: Users, scripts: _Scripts) -> dict[str, Any]:
    """Users (address, quota, SCRAM keys, passwords that work) and Sieve scripts."""
    found: dict[str, Any] = {}
    for user in users.list():
        found[user.key] = (
            str(user.address),
            users.own_quota(user.key),
            users.get_scram(user.key, "sha256"),
            users.get_cram_md5(user.key),
            users.verify_password(user.key, PASSWORDS[user.key]),
        )
    found["scram secret"] = users.scram_secret()
    for mailbox in (ALICE, BOB):
        found[f"{mailbox_key(mailbox)} scripts"] = [
            (n, a, scripts.get(mailbox, n)) for n, a in scripts.list(mailbox)
        ]
    return found


def _file_accounts(data: pathlib.Path) -> dict[str, Any]:
    return _accounts(UserStore(data / "users.json", hasher=_FAST, cram_md5=True), SieveStore(data))


def _pg_accounts(db: Database) -> dict[str, Any]:
    # Until PgSieveStore lands: the rows it reads.
    return _accounts(PgUserStore(db, hasher=_FAST, cram_md5=True), _TableScripts(db))


def _snapshot(account: MailAccount) -> dict[str, Any]:
    """Everything IMAP shows of a mailbox: folders, counters, messages, tombstones."""
    try:
        folders: dict[str, Any] = {}
        for info in account.list_folders():
            entry: dict[str, Any] = {
                "exists": info.exists,
                "subscribed": info.subscribed,
                "special_use": info.special_use,
            }
            if info.exists:
                view = account.select(info.name, readonly=True)
                uids = list(view.uids)
                states = view.flag_states(uids)
                contents = dict(view.contents(uids))
                entry.update(
                    uidvalidity=view.uidvalidity,
                    uidnext=view.uidnext,
                    highestmodseq=view.highestmodseq,
                    keywords=set(view.keywords),
                    messages=[
                        (
                            m.uid,
                            m.flags,
                            m.internaldate,
                            m.internaldate.utcoffset(),
                            m.size,
                            states[m.uid][0],
                            contents[m.uid],
                        )
                        for m in view.messages
                    ],
                    vanished=view.vanished_since(0, [range(1, view.uidnext)]),
                )
                view.close()
            folders[info.name] = entry
        return folders
    finally:
        account.close()


def _maildir_snapshot(data: pathlib.Path, mailbox: MailboxId) -> dict[str, Any]:
    return _snapshot(MaildirImapStore(data, hostname=HOST).account(mailbox))


def _pg_snapshot(db: Database, mailbox: MailboxId) -> dict[str, Any]:
    return _snapshot(PgImapStore(db, hostname=HOST).account(mailbox))


def test_round_trip_keeps_uids_flags_dates_and_contents(
    pg_db: Database, tmp_path: pathlib.Path
) -> None:
    source = tmp_path / "source"
    _make_source(source)
    before = {m: _maildir_snapshot(source, m) for m in (ALICE, BOB)}
    accounts = _file_accounts(source)
    assert [accounts[key][4] for key in PASSWORDS] == [True, True]  # the passwords work
    assert [name for name, _a, _t in accounts["alice@example.test scripts"]] == [
        "plain",
        "vacation",
    ]
    inbox = before[ALICE]["INBOX"]
    # The source is what the test claims: gaps, tombstones, a late delivery, zones.
    assert [m[0] for m in inbox["messages"]] == [1, 2, 5, 6, 7, 8, 10, 11, 12, 13]
    assert inbox["vanished"] == [3, 4, 9]
    assert inbox["uidnext"] == 14
    assert {m[3] for m in inbox["messages"]} >= {
        datetime.timedelta(0),
        datetime.timedelta(minutes=120),
        datetime.timedelta(minutes=-300),
    }
    assert inbox["keywords"] >= {"$Label1", "Project-X", "Later"}
    assert inbox["uidvalidity"] < (time.time_ns() - _PAST_NS // 2) // 10**9

    seen: list[FolderMoved] = []
    moved = import_maildir(pg_db, source, hostname=HOST, progress=seen.append)
    assert (moved.mailboxes, moved.folders) == (2, 15)
    assert moved.messages == 10 + 5 + 3 + 2 + 1
    assert {(f.mailbox, f.name) for f in seen} >= {("alice@example.test", "Work/Deep")}
    for mailbox in (ALICE, BOB):
        assert _pg_snapshot(pg_db, mailbox) == before[mailbox], mailbox
    assert (moved.users, moved.scripts) == (2, 3)
    assert _pg_accounts(pg_db) == accounts
    with pg_db.transaction() as cur:
        cur.execute("SELECT octets, messages FROM mail_usage WHERE mailbox = 'alice@example.test'")
        octets, count = cur.fetchone()
    assert count == 20
    assert octets == sum(m[4] for f in before[ALICE].values() for m in f.get("messages", ()))

    target = tmp_path / "target"
    exported = export_maildir(pg_db, target, hostname=HOST)
    assert (exported.mailboxes, exported.folders, exported.messages) == (2, 15, 21)
    for mailbox in (ALICE, BOB):
        assert _maildir_snapshot(target, mailbox) == before[mailbox]
    assert (exported.users, exported.scripts) == (2, 3)
    assert _file_accounts(target) == accounts
    # No staging directory left behind, and files only where the Maildir store puts them.
    assert sorted(os.listdir(target / "mail" / "example.test")) == ["alice", "bob.smith"]
    assert sorted(os.listdir(target)) == [
        "mail",
        "sieve",
        "users.json",
        "users.json.scram-secret",
    ]


def test_import_refuses_a_folder_with_messages_and_writes_nothing(
    pg_db: Database, tmp_path: pathlib.Path
) -> None:
    source = tmp_path / "source"
    _make_source(source)
    import_maildir(pg_db, source, hostname=HOST)
    with pg_db.transaction() as cur:
        cur.execute("SELECT count(*) FROM mail_messages")
        (count,) = cur.fetchone()
        cur.execute("DELETE FROM mail_messages USING mail_folders f WHERE folder_id = f.id"
                    " AND f.mailbox = 'bob.smith@example.test'")  # fmt: skip
        cur.execute("UPDATE mail_usage SET octets = 0, messages = 0")
    # Bob's folders are empty now, Alice's are not: the whole import is refused.
    with pytest.raises(TransferError, match=r"already hold messages .*alice@example.test INBOX"):
        import_maildir(pg_db, source, hostname=HOST)
    with pg_db.transaction() as cur:
        cur.execute("SELECT count(*) FROM mail_messages")
        assert cur.fetchone() == (count - 1,)


def test_import_takes_over_an_empty_folder(pg_db: Database, tmp_path: pathlib.Path) -> None:
    source = tmp_path / "source"
    _make_source(source)
    with pg_db.transaction() as cur:
        cur.execute(
            "INSERT INTO mail_folders (mailbox, name, uidnext) VALUES"
            " ('bob.smith@example.test', 'INBOX', 40)"
        )
    import_maildir(pg_db, source, hostname=HOST)
    before = _maildir_snapshot(source, BOB)
    assert _pg_snapshot(pg_db, BOB) == before


def test_export_refuses_a_non_empty_target_and_writes_nothing(
    pg_db: Database, tmp_path: pathlib.Path
) -> None:
    source = tmp_path / "source"
    _make_source(source)
    import_maildir(pg_db, source, hostname=HOST)
    target = tmp_path / "target"
    (target / "mail" / "example.test" / "bob.smith").mkdir(parents=True)
    (target / "mail" / "example.test" / "bob.smith" / "cur").mkdir()
    with pytest.raises(
        TransferError, match=r"bob\.smith exists and is not empty: nothing exported"
    ):
        export_maildir(pg_db, target, hostname=HOST)
    assert sorted(os.listdir(target / "mail" / "example.test")) == ["bob.smith"]
    # An empty target directory is fine: it is replaced.
    (target / "mail" / "example.test" / "bob.smith" / "cur").rmdir()
    export_maildir(pg_db, target, hostname=HOST)
    assert _maildir_snapshot(target, BOB) == _maildir_snapshot(source, BOB)


def test_import_of_a_directory_without_mail_is_refused(
    pg_db: Database, tmp_path: pathlib.Path
) -> None:
    with pytest.raises(TransferError, match=r"neither mail/ nor users\.json: not a sansmail"):
        import_maildir(pg_db, tmp_path, hostname=HOST)


def test_import_refuses_a_user_the_database_holds_otherwise(
    pg_db: Database, tmp_path: pathlib.Path
) -> None:
    source = tmp_path / "source"
    _make_source(source)
    other = {"address": "alice@example.test", "password_hash": "$argon2id$other"}
    with pg_db.transaction() as cur:
        cur.execute(
            "INSERT INTO users (key, record) VALUES ('alice@example.test', %s)", (Jsonb(other),)
        )
        cur.execute(
            "INSERT INTO sieve_scripts (mailbox, name, script, active)"
            " VALUES ('alice@example.test', 'other', 'keep;', true)"
        )
    with pytest.raises(
        TransferError,
        match=r"^the database holds otherwise user alice@example\.test \(another record\),"
        r" Sieve scripts of alice@example\.test \(another one active\): nothing imported$",
    ):
        import_maildir(pg_db, source, hostname=HOST)
    with pg_db.transaction() as cur:
        cur.execute("SELECT (SELECT count(*) FROM mail_folders), (SELECT count(*) FROM users)")
        assert cur.fetchone() == (0, 1)


def test_export_refuses_an_existing_users_file(pg_db: Database, tmp_path: pathlib.Path) -> None:
    source = tmp_path / "source"
    _make_source(source)
    import_maildir(pg_db, source, hostname=HOST)
    target = tmp_path / "target"
    target.mkdir()
    (target / "users.json").write_text("{}")
    with pytest.raises(TransferError, match=r"users\.json exists: nothing exported"):
        export_maildir(pg_db, target, hostname=HOST)
    assert os.listdir(target) == ["users.json"]


def test_export_without_syncfs_fsyncs_each_file_and_clears_a_crashed_staging(
    pg_db: Database, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "source"
    _make_source(source)
    import_maildir(pg_db, source, hostname=HOST)
    target = tmp_path / "target"
    crashed = target / "mail" / "example.test" / ".sansmail-export.alice.1"
    (crashed / "cur").mkdir(parents=True)
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    # A syncfs that fails (as one that is missing): every message file is fsync'd.
    monkeypatch.setattr(_transfer, "_SYNCFS", lambda fd: -1)
    monkeypatch.setattr(os, "fsync", fsync)
    moved = export_maildir(pg_db, target, hostname=HOST)
    assert len([path for path in synced if "/cur/" in path]) == moved.messages == 21
    assert sorted(os.listdir(target / "mail" / "example.test")) == ["alice", "bob.smith"]
    assert _maildir_snapshot(target, ALICE) == _maildir_snapshot(source, ALICE)


def test_import_of_a_maildir_dovecot_served_keeps_its_uids(
    pg_db: Database, tmp_path: pathlib.Path
) -> None:
    """A Maildir never opened by sansmail, with Dovecot's dovecot-uidlist: the import
    goes through the Maildir store's first sync, which adopts Dovecot's UIDVALIDITY and
    UIDs, so the database holds those."""
    inbox = tmp_path / "mail" / "example.test" / "carol"
    for sub in ("tmp", "new", "cur"):
        (inbox / sub).mkdir(parents=True)
    names = {
        40: "1276528487.M364837P9451.kurkku,S=22,W=25:2,S",
        47: "1276533073.M242911P3632.kurkku:2,F",
    }
    for name in names.values():
        (inbox / "cur" / name).write_bytes(b"Subject: hello\n\nthere\n")
    (inbox / "dovecot-uidlist").write_text(
        "3 V1275660208 N52 G3085f01b7f11094c501100008c4a11c1\n"
        + "".join(f"{uid} :{name}\n" for uid, name in names.items())
    )
    import_maildir(pg_db, tmp_path, hostname=HOST)
    view = (
        PgImapStore(pg_db, hostname=HOST)
        .account(MailboxId(domain="example.test", local="carol"))
        .select("INBOX", readonly=True)
    )
    try:
        assert (view.uidvalidity, view.uidnext) == (1275660208, 52)
        assert [(m.uid, m.flags) for m in view.messages] == [
            (40, frozenset({"\\Seen"})),
            (47, frozenset({"\\Flagged"})),
        ]
    finally:
        view.close()


def test_a_folder_made_after_an_import_gets_a_greater_uidvalidity(pg_db: Database) -> None:
    # An imported UIDVALIDITY ahead of the database's sequence (a Maildir whose clock
    # ran ahead): a folder made later must not be given one at or below it, or a folder
    # deleted and made again could repeat a UIDVALIDITY a client has cached.
    from sansmail.storage.pg._mailrows import make_folder  # noqa: PLC0415

    with pg_db.transaction() as cur:
        cur.execute("SELECT last_value FROM mail_uidvalidity")
        row = cur.fetchone()
        assert row is not None
        ahead = int(row[0]) + 100_000
        _transfer._claim_folder(
            cur,
            "alice@example.test",
            "Archive",
            uidvalidity=ahead,
            uidnext=1,
            highestmodseq=1,
            recent_uid=1,
            keywords=[],
            special_use=None,
        )
        made = make_folder(cur, "bob@example.test", "INBOX")
        cur.execute("SELECT uidvalidity FROM mail_folders WHERE id = %s", (made,))
        row = cur.fetchone()
        assert row is not None
        assert int(row[0]) > ahead
