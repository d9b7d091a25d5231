"""MaildirStore delivering into a folder (quarantine into Junk): the Maildir++ folder made
durably on first use and subscribed, the durability order, folders deleted under the
store, and the message as an IMAP session, and Dovecot, then see it."""

from __future__ import annotations

import grp
import imaplib
import os
import pathlib
import pwd
import shlex
import shutil
import stat
import tempfile
from collections.abc import Iterator

import pytest

from sansmail import SERVER
from sansmail.imap import Command, Connection, Login, Tagged, UntaggedStatus
from sansmail.mail.address import MailboxId
from sansmail.sessions.imapd import ImapSession, capabilities
from sansmail.storage.maildir import MaildirImapStore, MaildirStore, _imapaccount, _maildir
from sansmail.storage.maildir._imapnames import read_subscriptions

ALICE = MailboxId(domain="example.test", local="alice")
BOB = MailboxId(domain="example.test", local="bob")
HOST = "mx.example.test"
PREFIX = b"Return-Path: <s@example.net>\r\n"
MESSAGE = b"From: s@example.net\r\nSubject: cheap pills\r\n\r\nbuy now\r\n"


def deliver(store: MaildirStore, boxes: list[MailboxId], folder: str | None = "Junk") -> list[str]:
    delivery = store.begin(boxes, prefix=PREFIX, folder=folder)
    delivery.write(MESSAGE)
    return delivery.commit()


def root(data_dir: pathlib.Path, box: MailboxId = ALICE) -> pathlib.Path:
    return data_dir / "mail" / box.domain / box.local


def test_junk_delivery_makes_a_maildir_plus_plus_folder(tmp_path: pathlib.Path) -> None:
    store = MaildirStore(tmp_path, hostname=HOST)
    names = deliver(store, [ALICE, BOB])
    for box in (ALICE, BOB):
        junk = root(tmp_path, box) / ".Junk"
        assert sorted(os.listdir(junk)) == ["cur", "maildirfolder", "new", "tmp"]
        assert (junk / "maildirfolder").read_bytes() == b""
        assert stat.S_IMODE(junk.stat().st_mode) == 0o700
        assert (junk / "new" / names[0]).read_bytes() == (PREFIX + MESSAGE).replace(b"\r\n", b"\n")
        # Not in INBOX, and nothing left in any tmp/.
        assert os.listdir(root(tmp_path, box) / "new") == []
        assert os.listdir(root(tmp_path, box) / "tmp") == []
        assert os.listdir(junk / "tmp") == []
        assert read_subscriptions(str(root(tmp_path, box) / "subscriptions")) == ["Junk"]
    # One file, two names, as for INBOX.
    a = (root(tmp_path, ALICE) / ".Junk" / "new" / names[0]).stat()
    b = (root(tmp_path, BOB) / ".Junk" / "new" / names[1]).stat()
    assert (a.st_ino, a.st_nlink) == (b.st_ino, 2)


def test_folder_names_are_the_imap_stores(tmp_path: pathlib.Path) -> None:
    store = MaildirStore(tmp_path, hostname=HOST)
    deliver(store, [ALICE], folder="Spam/Entwürfe")
    assert (root(tmp_path) / ".Spam.Entw&APw-rfe" / "new").is_dir()
    deliver(store, [ALICE], folder="inbox")  # INBOX in any case is INBOX
    assert len(os.listdir(root(tmp_path) / "new")) == 1
    for bad in ("", "a//b", "x*", "a\x01"):
        with pytest.raises(ValueError):
            store.begin([ALICE], prefix=b"", folder=bad)


def test_lock_and_file_names_agree_with_the_imap_store() -> None:
    assert _maildir.ACCOUNT_LOCK_NAME == _imapaccount._LOCK_NAME
    assert _maildir.SUBSCRIPTIONS_NAME == _imapaccount._SUBSCRIPTIONS_NAME


def test_first_use_is_durable_before_the_message_is_named(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MaildirStore(tmp_path, hostname=HOST)
    deliver(store, [ALICE], folder=None)  # INBOX exists
    events: list[tuple[str, str]] = []
    real_fsync_dir, real_rename = _maildir._fsync_dir, os.rename

    def rec_fsync_dir(path: str) -> None:
        events.append(("fsync", os.path.relpath(path, root(tmp_path))))
        real_fsync_dir(path)

    def rec_rename(src: str, dst: str) -> None:
        events.append(("rename", os.path.relpath(os.path.dirname(dst), root(tmp_path))))
        subscribed.append(read_subscriptions(str(root(tmp_path) / "subscriptions")))
        real_rename(src, dst)

    subscribed: list[list[str]] = []
    monkeypatch.setattr(_maildir, "_fsync_dir", rec_fsync_dir)
    monkeypatch.setattr(os, "rename", rec_rename)
    deliver(store, [ALICE])
    # The folder (its subdirectories and marker), then its entry in the Maildir, and the
    # subscription (written atomically, synced) before the message is named and its
    # new/ synced.
    assert events == [
        ("fsync", ".Junk"),
        ("fsync", "."),
        ("rename", ".Junk/new"),
        ("fsync", ".Junk/new"),
    ]
    assert subscribed == [["Junk"]]
    events.clear()
    deliver(store, [ALICE])
    assert events == [("rename", ".Junk/new"), ("fsync", ".Junk/new")]  # known: nothing more


def test_group_commit_syncs_each_folder_once(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MaildirStore(tmp_path, hostname=HOST)
    deliver(store, [ALICE, BOB])
    deliver(store, [ALICE, BOB], folder=None)
    synced: list[str] = []
    real = _maildir._fsync_dir

    def rec(path: str) -> None:
        synced.append(os.path.relpath(path, tmp_path / "mail" / "example.test"))
        real(path)

    monkeypatch.setattr(_maildir, "_fsync_dir", rec)
    deliveries = []
    for n, (boxes, folder) in enumerate(
        [([ALICE], "Junk"), ([ALICE, BOB], None), ([BOB, ALICE], "Junk"), ([ALICE], "Junk")]
    ):
        delivery = store.begin(boxes, prefix=b"", folder=folder)
        delivery.write(b"message %d\r\n" % n)
        deliveries.append(delivery)
    results = store.commit_many(deliveries)
    assert all(isinstance(r, list) for r in results)
    assert sorted(synced) == ["alice/.Junk/new", "alice/new", "bob/.Junk/new", "bob/new"]
    assert len(os.listdir(root(tmp_path, ALICE) / ".Junk" / "new")) == 4
    assert len(os.listdir(root(tmp_path, BOB) / ".Junk" / "new")) == 2


def test_failed_folder_sync_leaves_no_name(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MaildirStore(tmp_path, hostname=HOST)
    deliver(store, [ALICE, BOB])
    real = _maildir._fsync_dir

    def failing(path: str) -> None:
        if path.endswith("bob/.Junk/new"):
            raise OSError(5, "Input/output error")
        real(path)

    monkeypatch.setattr(_maildir, "_fsync_dir", failing)
    delivery = store.begin([ALICE, BOB], prefix=b"", folder="Junk")
    delivery.write(b"x\r\n")
    with pytest.raises(OSError, match="fsync"):
        delivery.commit()
    delivery.abort()
    for box in (ALICE, BOB):
        assert len(os.listdir(root(tmp_path, box) / ".Junk" / "new")) == 1
        assert os.listdir(root(tmp_path, box) / "tmp") == []


def test_folder_deleted_under_the_store_is_made_again(tmp_path: pathlib.Path) -> None:
    store = MaildirStore(tmp_path, hostname=HOST)
    imap = MaildirImapStore(tmp_path, hostname=HOST)
    deliver(store, [ALICE, BOB])
    account = imap.account(ALICE)
    account.delete("Junk")  # the store still believes in alice's .Junk
    account.unsubscribe("Junk")
    assert not (root(tmp_path) / ".Junk").exists()
    # ... and between the file's writing and its naming, bob's goes too.
    delivery = store.begin([ALICE, BOB], prefix=b"", folder="Junk")
    delivery.write(b"after the delete\r\n")
    delivery.flush()
    shutil.rmtree(root(tmp_path, BOB) / ".Junk")
    names = delivery.commit()
    assert (root(tmp_path, ALICE) / ".Junk" / "new" / names[0]).exists()
    assert (root(tmp_path, BOB) / ".Junk" / "new" / names[1]).exists()
    assert (root(tmp_path, BOB) / ".Junk" / "maildirfolder").exists()
    # Made again, so subscribed again (Dovecot's lda_mailbox_autosubscribe).
    assert "Junk" in [f.name for f in account.list_folders() if f.subscribed]
    account.close()


def test_an_existing_folder_keeps_its_subscription_state(tmp_path: pathlib.Path) -> None:
    imap = MaildirImapStore(tmp_path, hostname=HOST)
    account = imap.account(ALICE)  # first open: the special-use folders, subscribed
    account.unsubscribe("Junk")  # the user's choice
    account.close()
    deliver(MaildirStore(tmp_path, hostname=HOST), [ALICE])
    subscribed = read_subscriptions(str(root(tmp_path) / "subscriptions"))
    assert "Junk" not in subscribed
    assert "INBOX" in subscribed


def test_imap_store_shows_the_message_in_junk(tmp_path: pathlib.Path) -> None:
    # Delivered before the account was ever opened: its first open adds the other
    # special-use folders around the Junk that delivery made.
    names = deliver(MaildirStore(tmp_path, hostname=HOST), [ALICE])
    account = MaildirImapStore(tmp_path, hostname=HOST).account(ALICE)
    folders = {f.name: f for f in account.list_folders()}
    assert folders["Junk"].special_use == "\\Junk"
    assert folders["Junk"].subscribed
    assert {"INBOX", "Sent", "Drafts", "Trash", "Archive"} <= set(folders)
    view = account.select("Junk")
    assert [m.uid for m in view.messages] == [1]
    assert view.read(1) == PREFIX + MESSAGE
    view.close()
    assert account.select("INBOX").messages == []
    account.close()
    assert names


class ImapClient:
    """One logged-in `ImapSession` behind the real protocol core (as the adapter runs
    it): `run(b"a1 NOOP")` gives the octets a client would read."""

    def __init__(self, data_dir: pathlib.Path) -> None:
        store = MaildirImapStore(data_dir, hostname=HOST)
        self.session = ImapSession(
            store,
            ALICE,
            append_limit=1_000_000,
            capabilities=capabilities(append_limit=1_000_000, authenticated=True),
        )
        self.conn = Connection(SERVER)
        self.conn.send(UntaggedStatus(status="OK", text="ready"))
        self.conn.receive_data(b"a0 LOGIN alice secret\r\n")
        assert isinstance(self.conn.next_event(), Login)
        self.conn.send(Tagged(tag="a0", status="OK", text="logged in"))

    def run(self, line: bytes) -> bytes:
        self.conn.receive_data(line + b"\r\n")
        event = self.conn.next_event()
        assert isinstance(event, Command), event
        responses = self.session.handle(event, rev2=self.conn.imap4rev2, utf8=self.conn.utf8)
        return b"".join(self.conn.send(r) for r in responses)


def test_imap_session_lists_selects_and_fetches_the_junk_message(tmp_path: pathlib.Path) -> None:
    client = ImapClient(tmp_path)  # the account exists before the first quarantine
    assert b"\r\n" in client.run(b"a1 SELECT Junk")
    store = MaildirStore(tmp_path, hostname=HOST)
    deliver(store, [ALICE])
    noop = client.run(b"a2 NOOP")
    assert b"* 1 EXISTS\r\n" in noop
    listed = client.run(b'a3 LIST "" "*"').split(b"\r\n")
    assert b'* LIST (\\HasNoChildren \\Junk) "/" "Junk"' in listed
    assert b'* LSUB () "/" "Junk"' in client.run(b'a4 LSUB "" "*"').split(b"\r\n")
    fetched = client.run(b"a5 FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert b"Subject: cheap pills" in fetched
    client.session.close()


# -- Dovecot reads what we delivered ------------------------------------------------------

DOVECOT = pathlib.Path("/usr/sbin/dovecot")
DOVECOT_IMAP = pathlib.Path("/usr/lib/dovecot/imap")


@pytest.fixture
def place() -> Iterator[pathlib.Path]:
    # Not under tmp_path: as root, pytest's directory is 0700 and Dovecot's processes
    # run as nobody, who must reach the Maildir.
    top = pathlib.Path(tempfile.mkdtemp(prefix="sansmail-junk-"))
    top.chmod(0o711)
    yield top
    shutil.rmtree(top, ignore_errors=True)


@pytest.mark.skipif(
    not (DOVECOT.exists() and DOVECOT_IMAP.exists()),
    reason="needs Debian's Dovecot (dovecot-imapd): /usr/lib/dovecot/imap is not installed",
)
def test_dovecot_lists_the_folder_subscribed_and_reads_the_message(place: pathlib.Path) -> None:
    data_dir = place / "data"
    deliver(MaildirStore(data_dir, hostname=HOST), [ALICE])
    maildir = root(data_dir)
    if os.getuid() == 0:
        user, group = "nobody", grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name
        entry = pwd.getpwnam(user)
        for path in [place, *place.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
    else:
        user = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(os.getgid()).gr_name
    run = place / "run"
    run.mkdir()
    if os.getuid() == 0:
        os.chown(run, entry.pw_uid, entry.pw_gid)
    config = place / "dovecot.conf"
    config.write_text(
        f"base_dir = {run}\nstate_dir = {run}\nlog_path = {place / 'dovecot.log'}\n"
        "protocols = imap\nssl = no\n"
        f"mail_location = maildir:{maildir}\n"
        f"mail_uid = {user}\nmail_gid = {group}\nfirst_valid_uid = 1\nfirst_valid_gid = 1\n"
    )
    client = imaplib.IMAP4_stream(
        f"env -i USER=alice HOME={shlex.quote(str(place))}"
        f" {DOVECOT_IMAP} -c {shlex.quote(str(config))}"
    )
    try:
        typ, lsub = client.lsub()
        assert typ == "OK"
        assert any(line.endswith(b" Junk") for line in lsub if isinstance(line, bytes))
        typ, count = client.select("Junk", readonly=True)
        assert (typ, count) == ("OK", [b"1"])
        typ, data = client.fetch("1", "(BODY.PEEK[])")
        assert typ == "OK"
        assert data[0][1] == PREFIX + MESSAGE
    finally:
        client.logout()
