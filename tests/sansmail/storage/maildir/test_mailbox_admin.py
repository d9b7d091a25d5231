"""What ``sansmail-trio mailbox`` does to a folder, tested on the storage directly:
status agrees with IMAP STATUS, expunge by date is durable and seen by an open view, and
resync keeps the UIDs wherever the index still knows them (damaged, not lost) and the
flags always."""

from __future__ import annotations

import datetime
import logging
import os
import pathlib
import sqlite3

import pytest
from imapstore_helpers import ALICE, account, deliver, message, root, store, x_id

from sansmail.storage.maildir import (
    STATUS_ITEMS,
    FolderStatus,
    NoSuchFolderError,
    QuotaLimits,
    Resynced,
    _imapadmin,
)
from sansmail.storage.maildir._imapbase import FlagMode
from sansmail.storage.maildir._imapindex import INDEX_NAME, FolderIndex
from sansmail.storage.maildir._imapschema import SCHEMA_VERSION

FLAGS = [set(), {"\\Seen"}, {"\\Seen", "\\Flagged"}, {"\\Answered", "Work"}, {"\\Deleted"}]


def populated(data_dir: pathlib.Path) -> dict[int, tuple[int, set[str]]]:
    """Five messages delivered as SMTP does, each with its flags set over IMAP; and one
    expunged before them, so that UIDs and positions differ: UID -> (X-Id, flags)."""
    deliver(data_dir, message(99))
    acc = account(data_dir)
    view = acc.select("INBOX")
    view.store([view.messages[0].uid], {"\\Deleted"}, FlagMode.ADD)
    view.expunge()
    view.close()
    for n in range(len(FLAGS)):
        deliver(data_dir, message(n))
    view = acc.select("INBOX")
    for m, flags in zip(view.messages, FLAGS, strict=True):
        if flags:
            view.store([m.uid], flags, FlagMode.ADD)
    view.close()
    return seen(data_dir)


def seen(data_dir: pathlib.Path, folder: str = "INBOX") -> dict[int, tuple[int, set[str]]]:
    view = account(data_dir).select(folder)
    try:
        return {m.uid: (x_id(view.read(m.uid) or b""), set(m.flags)) for m in view.messages}
    finally:
        view.close()


def uidvalidity(data_dir: pathlib.Path) -> int:
    return account(data_dir).status("INBOX", ["UIDVALIDITY"])["UIDVALIDITY"]


# -- status ----------------------------------------------------------------------------


def test_status_is_what_imap_status_says(tmp_path: pathlib.Path) -> None:
    populated(tmp_path)
    acc = account(tmp_path)
    got = acc.folder_status("inbox")
    imap = acc.status("INBOX", STATUS_ITEMS)
    assert got == FolderStatus(
        name="INBOX",
        messages=imap["MESSAGES"],
        unseen=imap["UNSEEN"],
        recent=imap["RECENT"],
        deleted=imap["DELETED"],
        vsize=imap["SIZE"],
        uidvalidity=imap["UIDVALIDITY"],
        uidnext=imap["UIDNEXT"],
        highestmodseq=imap["HIGHESTMODSEQ"],
    )
    assert (got.messages, got.unseen, got.deleted, got.uidnext) == (5, 3, 1, 7)
    view = acc.select("INBOX")
    assert got.vsize == sum(m.size for m in view.messages)
    assert got.highestmodseq == view.highestmodseq


def test_status_counts_mail_delivered_since(tmp_path: pathlib.Path) -> None:
    acc = account(tmp_path)
    assert acc.folder_status("INBOX").messages == 0
    deliver(tmp_path, message(1))
    assert acc.folder_status("INBOX").messages == 1
    with pytest.raises(NoSuchFolderError):
        acc.folder_status("Nowhere")


# -- expunge by date ---------------------------------------------------------------------


def appended(data_dir: pathlib.Path, days: list[int]) -> list[int]:
    """One message per day of `days` (2024-01-<day>, 12:00 UTC) in INBOX: their UIDs."""
    acc = account(data_dir)
    return [
        acc.append(
            "INBOX",
            message(day),
            internaldate=datetime.datetime(2024, 1, day, 12, tzinfo=datetime.UTC),
        ).uid
        for day in days
    ]


def midnight(day: int) -> int:
    return int(datetime.datetime(2024, 1, day, tzinfo=datetime.UTC).timestamp())


def test_expunge_before_a_date(tmp_path: pathlib.Path) -> None:
    uids = appended(tmp_path, [1, 2, 3, 4])
    files_before = len(os.listdir(root(tmp_path) / "cur"))
    acc = account(tmp_path)
    assert acc.expunge_before("INBOX", midnight(3)) == uids[:2]
    assert len(os.listdir(root(tmp_path) / "cur")) == files_before - 2
    assert sorted(seen(tmp_path)) == uids[2:]
    assert [x for x, _ in seen(tmp_path).values()] == [3, 4]
    assert acc.expunge_before("INBOX", midnight(3)) == []  # nothing left that old


def test_files_are_gone_before_the_rows_and_a_sync_between_is_no_harm(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The unlinks happen outside the folder's lock: a session syncing between them and
    # the rows' removal expunges the rows itself, and the expunge still says all.
    uids = appended(tmp_path, [1, 2, 3])
    view = account(tmp_path).select("INBOX")
    unlink = _imapadmin._unlink
    between: list[tuple[int, ...]] = []

    def unlink_then_sync(index: FolderIndex, files: list[tuple[str, str]]) -> None:
        unlink(index, files)
        assert not any(os.path.exists(os.path.join(index.folder, rel)) for _, rel in files)
        view._index.refresh(force=True)
        between.append(view.sync().expunged_uids)

    monkeypatch.setattr(_imapadmin, "_unlink", unlink_then_sync)
    acc = account(tmp_path)
    assert acc.expunge_before("INBOX", midnight(3)) == uids[:2]
    assert between == [tuple(uids[:2])]
    assert view.sync().expunged == ()  # not twice
    assert sorted(seen(tmp_path)) == uids[2:]


def test_an_open_view_hears_the_expunge(tmp_path: pathlib.Path) -> None:
    uids = appended(tmp_path, [1, 2, 3])
    view = account(tmp_path).select("INBOX")
    modseq = view.highestmodseq
    account(tmp_path).expunge_before("INBOX", midnight(2))
    changes = view.sync()
    assert changes.expunged == (1,)
    assert changes.expunged_uids == (uids[0],)
    assert [m.uid for m in view.messages] == uids[1:]
    assert view.highestmodseq > modseq
    assert view.vanished_since(modseq, [range(1, 10)]) == [uids[0]]


def test_expunge_counts_in_the_quota(tmp_path: pathlib.Path) -> None:
    imap = store(tmp_path)
    imap_with_quota = type(imap)(tmp_path, hostname="mx.example.test", quota=QuotaLimits(10**6))
    acc = imap_with_quota.account(ALICE)
    for day in (1, 2, 3):
        acc.append(
            "INBOX", message(day), internaldate=datetime.datetime(2024, 1, day, tzinfo=datetime.UTC)
        )
    used = acc.storage()
    assert used is not None
    removed = acc.expunge_before("INBOX", midnight(3))
    after = acc.storage()
    assert after is not None
    assert len(removed) == 2
    assert after[0] == used[0] - 2 * len(message(1))


def test_a_file_renamed_behind_the_index_is_expunged_all_the_same(tmp_path: pathlib.Path) -> None:
    (uid,) = appended(tmp_path, [1])
    cur = root(tmp_path) / "cur"
    (name,) = os.listdir(cur)
    os.rename(cur / name, cur / (name.partition(":")[0] + ":2,S"))  # another tool
    assert account(tmp_path).expunge_before("INBOX", midnight(2)) == [uid]
    assert os.listdir(cur) == []


# -- resync ------------------------------------------------------------------------------


def repairs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "sansmail.repair"]


def test_resync_of_a_sound_index_keeps_everything(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = populated(tmp_path)
    old = uidvalidity(tmp_path)
    # Behind the index's back: a file dropped into cur/ by hand, one removed.
    top = root(tmp_path)
    gone = min(before)
    index = account(tmp_path).index_for("INBOX")
    with index.read() as conn:
        ((name,),) = index.rows(conn, [gone], "name")
    os.unlink(top / name)
    (top / "cur" / "1700000000.M1P1.elsewhere:2,F").write_bytes(message(7).replace(b"\r\n", b"\n"))
    with index.write() as conn:
        conn.execute("INSERT INTO structures (uid, cache) VALUES (?, x'00')", (max(before),))
    with caplog.at_level(logging.WARNING, logger="sansmail.repair"):
        done = account(tmp_path).resync("INBOX")
    assert repairs(caplog) == []
    assert (done.outcome, done.uidvalidity_before, done.uidvalidity) == ("checked", old, old)
    assert (done.messages, done.expunged, done.added) == (5, 1, 1)
    after = seen(tmp_path)
    new_uid = max(after)
    assert new_uid > max(before)
    assert after.pop(new_uid) == (7, {"\\Flagged"})
    del before[gone]
    assert after == before
    with sqlite3.connect(top / INDEX_NAME) as conn:
        assert conn.execute("SELECT count(*) FROM structures").fetchone() == (0,)


def damage_page(db: pathlib.Path, table: str) -> None:
    """Overwrite the root page of `table` (or index) of the SQLite file `db`."""
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        (rootpage,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)
        ).fetchone()
    conn.close()
    with open(db, "r+b") as f:
        f.seek((rootpage - 1) * page_size)
        f.write(b"\xa5" * page_size)


def test_resync_of_a_damaged_index_keeps_uids_and_flags(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = populated(tmp_path)
    old = uidvalidity(tmp_path)
    old_modseq = account(tmp_path).status("INBOX", ["HIGHESTMODSEQ"])["HIGHESTMODSEQ"]
    live = account(tmp_path).select("INBOX")
    live._index.close()
    # The modseq index is broken, the tables themselves still read; and one message's
    # file is gone (removed by hand) when the resync runs.
    damage_page(root(tmp_path) / INDEX_NAME, "messages_modseq")
    gone = min(before)
    with sqlite3.connect(root(tmp_path) / INDEX_NAME) as conn:
        ((name,),) = conn.execute("SELECT name FROM messages WHERE uid = ?", (gone,))
    conn.close()
    os.unlink(root(tmp_path) / name)
    with caplog.at_level(logging.WARNING, logger="sansmail.repair"):
        done = _resync(tmp_path)
    assert (done.outcome, done.uidvalidity) == ("rebuilt", old)
    assert (done.messages, done.expunged, done.added) == (4, 1, 0)
    (line,) = repairs(caplog)
    assert f"UIDVALIDITY {old} -> {old} (UIDs kept)" in line
    del before[gone]
    assert seen(tmp_path) == before
    status = account(tmp_path).folder_status("INBOX")
    assert status.highestmodseq > old_modseq
    assert status.recent == 0
    # A session open across it goes on, under the same UIDVALIDITY, with the same list.
    changes = live.sync()
    assert not changes.uidvalidity_changed
    assert changes.expunged_uids == (gone,)  # no tombstone: from comparing in full
    assert {m.uid: set(m.flags) for m in live.messages} == {u: f for u, (_, f) in before.items()}
    with sqlite3.connect(root(tmp_path) / INDEX_NAME) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def _resync(data_dir: pathlib.Path, folder: str = "INBOX") -> Resynced:
    # As the CLI opens it: INBOX's index is not opened (and so not repaired) first.
    return store(data_dir).account(ALICE, open_inbox=False).resync(folder)


def test_resync_keeps_internaldate_zone_and_gives_lost_rows_new_uids(
    tmp_path: pathlib.Path,
) -> None:
    acc = account(tmp_path)
    when = datetime.datetime(
        2024, 1, 5, 9, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
    )
    first = acc.append("INBOX", message(1), internaldate=when).uid
    second = acc.append("INBOX", message(2)).uid
    uidnext = acc.status("INBOX", ["UIDNEXT"])["UIDNEXT"]
    db = root(tmp_path) / INDEX_NAME
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM messages WHERE uid = ?", (second,))  # a row lost
    conn.close()
    damage_page(db, "messages_modseq")
    done = _resync(tmp_path)
    assert done.outcome == "rebuilt"
    after = seen(tmp_path)
    assert after[first][0] == 1
    ((uid, (xid, _)),) = [(u, v) for u, v in after.items() if u != first]
    assert (xid, uid >= uidnext) == (2, True)  # never a UID given out before
    view = account(tmp_path).select("INBOX")
    assert view.messages[0].internaldate == when


def test_resync_of_a_lost_index_renumbers_under_a_new_uidvalidity(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = populated(tmp_path)
    old = uidvalidity(tmp_path)
    for suffix in ("", "-wal", "-shm"):
        (root(tmp_path) / (INDEX_NAME + suffix)).unlink(missing_ok=True)
    with caplog.at_level(logging.WARNING, logger="sansmail.repair"):
        done = _resync(tmp_path)
    assert done.outcome == "renumbered"
    assert done.uidvalidity_before == old
    assert done.uidvalidity > old
    (line,) = repairs(caplog)
    assert "UIDs renumbered" in line
    after = seen(tmp_path)
    # Same messages and flags, in arrival order; the numbers restart.
    assert sorted(after.values(), key=lambda v: v[0]) == sorted(before.values(), key=lambda v: v[0])
    assert sorted(after) == [1, 2, 3, 4, 5]


def test_resync_of_an_unreadable_folder_row_renumbers(tmp_path: pathlib.Path) -> None:
    before = populated(tmp_path)
    old = uidvalidity(tmp_path)
    damage_page(root(tmp_path) / INDEX_NAME, "folder")
    done = _resync(tmp_path)
    assert done.outcome == "renumbered"
    assert done.uidvalidity > old
    assert sorted(seen(tmp_path).values()) == sorted(before.values())


def test_resync_refuses_an_index_of_a_newer_version(tmp_path: pathlib.Path) -> None:
    populated(tmp_path)
    db = root(tmp_path) / INDEX_NAME
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(Exception, match="newer sansmail"):
        _resync(tmp_path)
    assert db.exists()


def test_resync_of_an_unknown_folder(tmp_path: pathlib.Path) -> None:
    with pytest.raises(NoSuchFolderError):
        _resync(tmp_path, "Nowhere")


def test_resync_of_an_index_of_an_older_version_migrates_it(tmp_path: pathlib.Path) -> None:
    before = populated(tmp_path)
    old = uidvalidity(tmp_path)
    with sqlite3.connect(root(tmp_path) / INDEX_NAME) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION - 1}")
    conn.close()
    done = _resync(tmp_path)
    assert (done.outcome, done.uidvalidity) == ("checked", old)
    assert seen(tmp_path) == before
