"""Sync with the Maildir: what other writers do (delivery, POP3 deletes, mutt's flag
renames, Dovecot's keywords) reaches every view as EXISTS, EXPUNGE and FETCH FLAGS."""

from __future__ import annotations

import os
import pathlib

import attrs
import pytest
from imapstore_helpers import (
    ALICE,
    HOST,
    Where,
    account,
    deliver,
    files,
    letters,
    message,
    root,
)

import sansmail.storage.maildir._imapindex as index_module
import sansmail.storage.maildir._imaplist as list_module
from sansmail.storage.maildir._imapaccount import MaildirImapStore
from sansmail.storage.maildir._imapbase import FlagMode, FolderGoneError, SyncChanges
from sansmail.storage.maildir._imapindex import FolderIndex
from sansmail.storage.maildir._mailbox import Maildrop


def test_delivery_after_select(where: Where) -> None:
    acc = account(where)
    view = acc.select("INBOX")
    assert view.sync() == SyncChanges(exists=0)
    assert not view.sync()
    name = deliver(where, message(1))
    changes = view.sync()
    assert changes.exists == 1
    assert [m.uid for m in changes.added] == [1]
    assert changes.recent == 1
    assert changes.expunged == ()
    assert view.recent == {1}
    assert view.uidnext == 2
    # a read-write session moves it to cur/, as Dovecot does
    if isinstance(where, pathlib.Path):
        assert files(root(where)) == {name: f"cur/{name}:2,"}
    assert view.read(1) == message(1)
    assert view.messages[0].size == len(message(1))


def test_read_only_view_neither_moves_nor_claims(where: Where) -> None:
    acc = account(where)
    name = deliver(where, message(1))
    view = acc.select("INBOX", readonly=True)
    assert [m.uid for m in view.messages] == [1]
    assert view.recent == frozenset()
    if isinstance(where, pathlib.Path):
        assert files(root(where)) == {name: f"new/{name}"}
    other = account(where).select("INBOX")
    assert other.recent == {1}
    if isinstance(where, pathlib.Path):
        assert files(root(where)) == {name: f"cur/{name}:2,"}


def test_recent_goes_to_exactly_one_session(where: Where) -> None:
    first = account(where).select("INBOX")
    second = account(where).select("INBOX")
    deliver(where, message(1))
    deliver(where, message(2))
    a = first.sync()
    b = second.sync()
    assert a.recent == 2
    assert b.recent is None
    assert second.recent == frozenset()
    assert [m.uid for m in b.added] == [1, 2]
    deliver(where, message(3))
    assert second.sync().recent == 1
    assert first.sync().recent is None
    assert first.recent == {1, 2}
    assert second.recent == {3}


def test_pop3_style_delete_is_an_expunge(tmp_path: pathlib.Path) -> None:
    acc = account(tmp_path)
    names = [deliver(tmp_path, message(n)) for n in range(1, 6)]
    view = acc.select("INBOX")
    top = root(tmp_path)
    for base in (names[1], names[3], names[4]):
        os.unlink(top / files(top)[base])
    changes = view.sync()
    # highest first, so every number is valid when sent
    assert changes.expunged == (5, 4, 2)
    assert changes.expunged_uids == (2, 4, 5)
    assert changes.exists == 2
    assert [m.uid for m in view.messages] == [1, 3]
    assert view.read(2) is None


def test_flag_rename_by_another_tool(tmp_path: pathlib.Path) -> None:
    acc = account(tmp_path)
    name = deliver(tmp_path, message(1))
    deliver(tmp_path, message(2))
    view = acc.select("INBOX")
    cur = root(tmp_path) / "cur"
    # mutt marks it read and flagged; it also knows P (passed), which we keep
    os.rename(cur / f"{name}:2,", cur / f"{name}:2,FPS")
    changes = view.sync()
    assert changes.flags == ((1, 1, frozenset({"\\Flagged", "\\Seen"})),)
    assert changes.added == ()
    assert view.messages[0].flags == {"\\Flagged", "\\Seen"}
    view.store_flags([1], ["\\Answered"], FlagMode.ADD)
    assert letters(root(tmp_path))[name] == "FPRS"
    assert not view.sync().flags  # our own change was already reported


def test_move_to_cur_by_another_tool_is_not_an_expunge(tmp_path: pathlib.Path) -> None:
    acc = account(tmp_path)
    view = acc.select("INBOX", readonly=True)
    name = deliver(tmp_path, message(1))
    assert view.sync().exists == 1
    top = root(tmp_path)
    os.rename(top / "new" / name, top / "cur" / f"{name}:2,S")
    changes = view.sync()
    assert changes.expunged == ()
    assert changes.flags == ((1, 1, frozenset({"\\Seen"})),)


def test_keywords_from_dovecot(tmp_path: pathlib.Path) -> None:
    acc = account(tmp_path)
    name = deliver(tmp_path, message(1))
    view = acc.select("INBOX")
    top = root(tmp_path)
    (top / "dovecot-keywords").write_text("0 $Forwarded\n1 $Label1\n")
    os.rename(top / "cur" / f"{name}:2,", top / "cur" / f"{name}:2,Sab")
    changes = view.sync()
    assert changes.keywords == ("$Forwarded", "$Label1")
    assert changes.flags == ((1, 1, frozenset({"\\Seen", "$Forwarded", "$Label1"})),)
    # a keyword we add takes the next free letter; case matches the existing spelling
    view.store_flags([1], ["$label1", "$Junk"], FlagMode.ADD)
    assert (top / "dovecot-keywords").read_text() == "0 $Forwarded\n1 $Label1\n2 $Junk\n"
    assert letters(top)[name] == "Sabc"
    assert view.messages[0].flags == {"\\Seen", "$Forwarded", "$Label1", "$Junk"}
    assert view.sync().keywords == ("$Forwarded", "$Label1", "$Junk")


def test_unknown_keyword_letter_is_kept(tmp_path: pathlib.Path) -> None:
    acc = account(tmp_path)
    name = deliver(tmp_path, message(1))
    view = acc.select("INBOX")
    top = root(tmp_path)
    os.rename(top / "cur" / f"{name}:2,", top / "cur" / f"{name}:2,z")
    assert not view.sync().flags
    view.store_flags([1], ["\\Seen"], FlagMode.REPLACE)
    assert letters(top)[name] == "Sz"


def test_arrival_order(tmp_path: pathlib.Path) -> None:
    top = root(tmp_path)
    account(tmp_path).close()
    new = top / "new"
    # time stamps in the names decide, then the names; a name without one uses its mtime
    for name in ("1700000002.M5P1.h", "1700000001.M900P1.h", "1700000001.M10P2.h"):
        (new / name).write_bytes(b"Subject: " + name.encode() + b"\n\nx\n")
    (new / "1700000001.M10P1.h").write_bytes(b"Subject: tie\n\nx\n")
    foreign = new / "foreign-tool-file"
    foreign.write_bytes(b"Subject: foreign\n\nx\n")
    os.utime(foreign, (1_700_000_001.5, 1_700_000_001.5))
    (new / ".hidden").write_bytes(b"not a message\n")
    view = account(tmp_path).select("INBOX")
    subjects = [view.read(m.uid).split(b"\r\n")[0] for m in view.messages]  # type: ignore[union-attr]
    assert subjects == [
        b"Subject: tie",
        b"Subject: 1700000001.M10P2.h",
        b"Subject: 1700000001.M900P1.h",
        b"Subject: foreign",
        b"Subject: 1700000002.M5P1.h",
    ]
    assert [m.uid for m in view.messages] == [1, 2, 3, 4, 5]


def test_size_without_w_field_is_measured(tmp_path: pathlib.Path) -> None:
    top = root(tmp_path)
    account(tmp_path).close()
    (top / "new" / "1700000000.M1P1.h").write_bytes(b"A: b\n\nline\rbare cr\r\nmixed\n")
    view = account(tmp_path).select("INBOX")
    content = view.read(1)
    assert content == b"A: b\r\n\r\nline\r\nbare cr\r\nmixed\r\n"
    assert view.messages[0].size == len(content)
    assert view.messages[0].internaldate.timestamp() == int(
        os.stat(top / "cur" / "1700000000.M1P1.h:2,").st_mtime
    )


def test_new_folder_made_by_mkdir_and_filled_by_hand(tmp_path: pathlib.Path) -> None:
    acc = account(tmp_path)
    folder = root(tmp_path) / ".Imported"
    for sub in ("tmp", "new", "cur"):
        (folder / sub).mkdir(parents=True)
    (folder / "cur" / "1700000000.M1P1.h:2,RS").write_bytes(b"Subject: old\n\nx\n")
    view = acc.select("Imported")
    assert [(m.uid, m.flags) for m in view.messages] == [(1, {"\\Answered", "\\Seen"})]


def test_two_views_see_each_others_changes(where: Where) -> None:
    for n in range(1, 5):
        deliver(where, message(n))
    a = account(where).select("INBOX")
    b = account(where).select("INBOX")
    a.store_flags([2, 3], ["\\Deleted"], FlagMode.ADD)
    assert a.expunge() == [2, 3]
    a.store_flags([4], ["\\Seen"], FlagMode.ADD)
    appended = a.append(message(5), ["\\Draft"])
    changes = b.sync()
    assert changes.expunged == (3, 2)
    assert changes.flags == ((2, 4, frozenset({"\\Seen"})),)
    assert [m.uid for m in changes.added] == [appended.uid]
    assert changes.added[0].flags == {"\\Draft"}
    assert [m.uid for m in b.messages] == [1, 4, 5]
    # the expunging view hears of its own expunge at its next sync too
    own = a.sync()
    assert own.expunged == (3, 2)
    assert own.flags == ()
    assert [m.uid for m in a.messages] == [1, 4, 5]


def test_no_change_resync_does_not_list(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A clock far ahead makes every listing old enough to trust the directory mtimes.
    clock = [4 * 10**18]
    store = MaildirImapStore(tmp_path, hostname=HOST, clock=lambda: clock[0])
    for n in range(3):
        deliver(tmp_path, message(n))
    view = store.account(ALICE).select("INBOX")
    view.sync()  # lists once more: the move to cur/ changed cur/'s mtime
    scans = []
    real = FolderIndex.scan
    monkeypatch.setattr(FolderIndex, "scan", lambda self: scans.append(1) or real(self))
    assert not view.sync()
    assert not view.sync()
    assert scans == []
    deliver(tmp_path, message(9))
    assert view.sync().exists == 4
    assert scans


def test_select_of_an_unchanged_folder_lists_nothing_and_makes_no_message(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [4 * 10**18]
    store = MaildirImapStore(tmp_path, hostname=HOST, clock=lambda: clock[0])
    for n in range(5):
        deliver(tmp_path, message(n))
    first = store.account(ALICE).select("INBOX")
    first.sync()  # the move to cur/ changed cur/'s mtime: listed once more
    first.store_flags([2], ["\\Seen"], FlagMode.ADD)
    first.sync()
    expected = [attrs.astuple(m) for m in first.messages]
    # Its list goes with it: the next SELECT reads the table.
    key = store.account(ALICE).index_for("INBOX").db_path
    assert list_module.registered(key) is not None
    first.close()
    assert list_module.registered(key) is None
    scans = []
    real_scan = FolderIndex.scan
    monkeypatch.setattr(FolderIndex, "scan", lambda self: scans.append(1) or real_scan(self))
    made = []
    real_make = list_module.FolderList._make
    monkeypatch.setattr(
        list_module.FolderList,
        "_make",
        lambda self, index: made.append(self.uids[index]) or real_make(self, index),
    )
    view = store.account(ALICE).select("INBOX", readonly=True)
    assert scans == []
    assert made == []
    assert list(view.uids) == [1, 2, 3, 4, 5]
    assert len(view.messages) == 5
    assert made == []
    # Each message is made when looked at, once; slices and iteration see the same.
    assert view.messages[-1].uid == 5
    assert view.messages[1].flags == {"\\Seen"}
    assert made == [5, 2]
    assert [m.uid for m in view.messages[1:4]] == [2, 3, 4]
    assert [attrs.astuple(m) for m in view.messages] == expected
    assert made == [5, 2, 3, 4, 1]
    # Another session of the process shares the list and the messages made.
    other = store.account(ALICE).select("INBOX", readonly=True)
    assert other.messages is view.messages
    assert other.messages[0] is view.messages[0]
    assert made == [5, 2, 3, 4, 1]
    # News still arrives: a POP3 delete and a flag rename by another tool.
    top = root(tmp_path)
    # By UID (file names sort by arrival only while their microseconds have as many
    # digits).
    index = store.account(ALICE).index_for("INBOX")
    names = [name for (name,) in index.conn.execute("SELECT name FROM messages ORDER BY uid")]
    os.unlink(top / names[0])
    os.rename(top / names[3], top / (names[3] + "F"))
    changes = view.sync()
    assert changes.expunged == (1,)
    assert changes.flags == ((3, 4, frozenset({"\\Flagged"})),)
    assert [m.uid for m in view.messages] == [2, 3, 4, 5]
    # The other session sees the same news when it syncs, and ends on the same list.
    assert other.sync() == changes
    assert other.messages is view.messages


def test_recent_listing_is_not_trusted(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A clock that says the listing happened in the same instant as the last change: a
    # change within the same mtime tick could hide, so the next sync lists again.
    store = MaildirImapStore(tmp_path, hostname=HOST, clock=lambda: 0)
    deliver(tmp_path, message(1))
    view = store.account(ALICE).select("INBOX")
    scans = []
    real = FolderIndex.scan
    monkeypatch.setattr(FolderIndex, "scan", lambda self: scans.append(1) or real(self))
    view.sync()
    view.sync()
    assert len(scans) == 2


def test_a_listing_that_misses_a_renamed_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # readdir may miss an entry renamed while the directory is read; one listing alone
    # must not expunge it.
    for n in range(3):
        deliver(tmp_path, message(n))
    view = account(tmp_path).select("INBOX")
    top = root(tmp_path)
    victim = sorted(files(top))[1]
    real = FolderIndex.scan
    calls = []

    def flaky(self: FolderIndex) -> dict[str, str]:
        calls.append(1)
        seen = real(self)
        if len(calls) == 1:
            seen.pop(victim)
        return seen

    monkeypatch.setattr(FolderIndex, "scan", flaky)
    os.rename(top / files(top)[victim], top / f"{files(top)[victim]}S")
    changes = view.sync()
    assert changes.expunged == ()
    assert changes.flags == ((2, 2, frozenset({"\\Seen"})),)
    assert len(calls) == 2


def test_sync_survives_many_tombstones(where: Where, monkeypatch: pytest.MonkeyPatch) -> None:
    # Past the tombstone bound a lagging view compares whole UID lists.
    monkeypatch.setattr(index_module, "_TOMBSTONES_MAX", 3)
    monkeypatch.setattr(index_module, "_TOMBSTONES_KEEP", 1)
    acc = account(where)
    for n in range(8):
        acc.append("INBOX", message(n))
    lagging = account(where).select("INBOX")
    busy = acc.select("INBOX")
    for uid in range(1, 7):
        busy.store_flags([uid], ["\\Deleted"], FlagMode.ADD)
        busy.expunge([uid])
    changes = lagging.sync()
    assert changes.expunged == (6, 5, 4, 3, 2, 1)
    assert [m.uid for m in lagging.messages] == [7, 8]


def test_deleted_folder_under_a_view(where: Where) -> None:
    acc = account(where)
    acc.append("Trash", message(1))
    view = account(where).select("Trash")
    acc.delete("Trash")
    assert view.sync().uidvalidity_changed
    with pytest.raises(FolderGoneError):
        view.read(1)


def test_pop3_and_imap_on_one_inbox(tmp_path: pathlib.Path) -> None:
    # The POP3 side (sansmail.storage.maildir._mailbox) and this store share INBOX: same sizes,
    # same content; a POP3 delete is an expunge here, an IMAP rename does not lose the
    # message for POP3.
    deliver(tmp_path, message(1))
    deliver(tmp_path, message(2, b"bare\rcr and lf\nend\r\n"))
    (root(tmp_path) / "new" / "1700000000.M1P1.foreign").write_bytes(b"A: b\n\nno W= here\n")
    view = account(tmp_path).select("INBOX")  # moves all to cur/
    view.store_flags([1], ["\\Seen"], FlagMode.ADD)
    with Maildrop.open(root(tmp_path)) as drop:
        assert len(drop.messages) == 3
        pop3 = {}
        for info in drop.messages:
            with drop.reader(info) as reader:
                pop3[reader.read()] = info
        imap = {view.read(m.uid): m.size for m in view.messages}
        assert {content: info.size for content, info in pop3.items()} == imap
        assert drop.expunge([pop3[message(1)]]).removed == 1
    changes = view.sync()
    assert changes.expunged == (2,)  # the foreign file's older time stamp made it UID 1
    assert [view.read(m.uid) for m in view.messages] == [
        b"A: b\r\n\r\nno W= here\r\n",
        message(2, b"bare\r\ncr and lf\r\nend\r\n"),
    ]
