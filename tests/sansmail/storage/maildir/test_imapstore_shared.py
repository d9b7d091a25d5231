"""Views of one folder in one process share its message list (`_imaplist`), yet each keeps
its own sequence numbers, pending news, STORE reports and \\Recent; the list goes with
the last view that holds it. Between commands a session's SQLite connections wait in the
process's pool (`_imapindex`)."""

from __future__ import annotations

import pathlib
import sqlite3
from array import array

import pytest
from imapstore_helpers import account, deliver, message

import sansmail.storage.maildir._imapindex as index_module
import sansmail.storage.maildir._imaplist as list_module
import sansmail.storage.maildir._imapview as view_module
from sansmail.storage.maildir._imapaccount import MaildirAccount
from sansmail.storage.maildir._imapbase import FlagMode
from sansmail.storage.maildir._imaplist import FolderList, registered


def _inbox_with(tmp_path: pathlib.Path, count: int) -> tuple[MaildirAccount, str]:
    for n in range(count):
        deliver(tmp_path, message(n))
    acc = account(tmp_path)
    acc.select("INBOX").close()  # moves new/ to cur/ and claims \Recent: a settled folder
    return acc, acc.index_for("INBOX").db_path


def test_two_sessions_share_the_list_and_keep_their_own_numbers(tmp_path: pathlib.Path) -> None:
    acc, key = _inbox_with(tmp_path, 5)
    a = acc.select("INBOX")
    b = account(tmp_path).select("INBOX")
    assert a.messages is b.messages
    assert registered(key) is a.messages
    assert list(a.uids) == [1, 2, 3, 4, 5]

    a.store_flags([2, 4], ["\\Deleted"], FlagMode.ADD)
    # a's STORE shows in a's list at once (the session reported it), not in b's.
    assert a.messages[1].flags == {"\\Deleted"}
    assert b.messages[1].flags == frozenset()
    assert a.expunge() == [2, 4]
    # Nothing moves before a sync: both still number the five messages.
    assert list(a.uids) == list(b.uids) == [1, 2, 3, 4, 5]
    assert b.messages[3].uid == 4

    changes = a.sync()
    assert changes.expunged == (4, 2)
    assert changes.flags == ()  # a was told its STORE's flags already
    assert list(a.uids) == [1, 3, 5]
    assert a.messages[1].uid == 3
    # b, not synced yet, still has the old list and its numbers.
    assert list(b.uids) == [1, 2, 3, 4, 5]
    assert b.messages[4].uid == 5
    assert b.read(1) is not None

    changes = b.sync()
    assert changes.expunged == (4, 2)
    assert changes.expunged_uids == (2, 4)
    assert list(b.uids) == [1, 3, 5]
    # Both reached the same modseq: one list again, the one a derived.
    assert b.messages is a.messages
    assert registered(key) is a.messages


def test_flag_changes_reach_the_other_session_with_its_own_numbers(
    tmp_path: pathlib.Path,
) -> None:
    acc, _ = _inbox_with(tmp_path, 4)
    a = acc.select("INBOX")
    b = account(tmp_path).select("INBOX")
    b.store_flags([1], ["\\Deleted"], FlagMode.ADD)
    b.expunge()
    a.store_flags([3], ["\\Flagged"], FlagMode.ADD)
    # b hears of the expunge and of a's flag, numbered after the expunge.
    changes = b.sync()
    assert changes.expunged == (1,)
    assert changes.flags == ((2, 3, frozenset({"\\Flagged"})),)
    # a hears of the expunge only: the flag is its own report.
    changes = a.sync()
    assert changes.expunged == (1,)
    assert changes.flags == ()
    assert a.messages is b.messages
    assert [m.flags for m in a.messages] == [frozenset(), {"\\Flagged"}, frozenset()]


def test_recent_is_each_sessions_own(tmp_path: pathlib.Path) -> None:
    acc, _ = _inbox_with(tmp_path, 2)
    first = acc.select("INBOX")
    second = account(tmp_path).select("INBOX")
    deliver(tmp_path, message(9))
    assert first.sync().recent == 1
    assert first.recent == {3}
    # The other read-write session sees the message, not as \Recent.
    changes = second.sync()
    assert [m.uid for m in changes.added] == [3]
    assert second.recent == frozenset()
    assert first.messages is second.messages


def test_the_list_goes_with_the_last_view(tmp_path: pathlib.Path) -> None:
    acc, key = _inbox_with(tmp_path, 3)
    assert registered(key) is None
    a = acc.select("INBOX")
    b = account(tmp_path).select("INBOX", readonly=True)
    assert registered(key) is a.messages is b.messages
    a.close()
    assert registered(key) is b.messages
    b.close()
    assert registered(key) is None


def test_a_session_that_changes_its_list_leaves_the_others_theirs(
    tmp_path: pathlib.Path,
) -> None:
    acc, key = _inbox_with(tmp_path, 3)
    a = acc.select("INBOX")
    b = account(tmp_path).select("INBOX")
    old = b.messages
    deliver(tmp_path, message(7))
    a.sync()
    # The newer list is the process's now; b keeps the one it reported, alive.
    assert registered(key) is a.messages
    assert b.messages is old
    assert len(old) == 3
    b.sync()
    assert b.messages is a.messages


def test_a_registered_list_that_disagrees_is_not_taken(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    acc, key = _inbox_with(tmp_path, 3)
    view = acc.select("INBOX")
    deliver(tmp_path, message(7))
    real_shared = view_module.shared

    def wrong(key: str, uidvalidity: int, modseq: int) -> FolderList | None:
        # A list of the right (folder, UIDVALIDITY, modseq) but other UIDs: the view
        # must make its own from the changes it read.
        return FolderList(
            uidvalidity,
            modseq,
            (
                array("I", [1, 2]),
                array("I", [0, 0]),
                array("q", [0, 0]),
                array("h", [0, 0]),
                array("q", [1, 1]),
            ),
            [frozenset()],
        )

    monkeypatch.setattr(view_module, "shared", wrong)
    changes = view.sync()
    assert [m.uid for m in changes.added] == [4]
    assert list(view.uids) == [1, 2, 3, 4]
    assert [m.size for m in view.messages] == [len(message(n)) for n in (0, 1, 2, 7)]
    monkeypatch.setattr(view_module, "shared", real_shared)
    assert registered(key) is view.messages


def test_derive_keeps_what_it_does_not_change() -> None:
    base = FolderList(
        7,
        10,
        (
            array("I", [1, 2, 3, 4]),
            array("I", [0, 1, 0, 0]),
            array("q", [100, 200, 300, 400]),
            array("h", [0, 60, 0, -120]),
            array("q", [10, 20, 30, 40]),
        ),
        [frozenset(), frozenset({"\\Seen"})],
    )
    made_before = base[3]
    added = list_module.make_info((9, 0, "Work", 900, 30, 90))
    after = base.derive(12, gone=[0, 2], flags={4: frozenset({"\\Seen"})}, added=[added])
    assert (after.uidvalidity, after.modseq) == (7, 12)
    assert list(after.uids) == [2, 4, 9]
    assert [m.flags for m in after] == [{"\\Seen"}, {"\\Seen"}, {"Work"}]
    assert [m.size for m in after] == [20, 40, 90]
    assert after[0].internaldate == base[1].internaldate
    assert after[0].internaldate.utcoffset().total_seconds() == 3600
    assert after[2] is added
    assert after[1] is not made_before  # its flags changed
    # The list it came from is untouched.
    assert list(base.uids) == [1, 2, 3, 4]
    assert base[3] is made_before
    assert base.flags(3) == frozenset()


def test_a_store_overtaken_by_another_sessions_is_reported(tmp_path: pathlib.Path) -> None:
    acc, _ = _inbox_with(tmp_path, 2)
    a = acc.select("INBOX")
    c = account(tmp_path).select("INBOX")
    assert a.store_flags([1], ["\\Seen"], FlagMode.ADD) == {1: {"\\Seen"}}
    assert c.store_flags([1], ["\\Flagged"], FlagMode.REPLACE) == {1: {"\\Flagged"}}
    # a told its client \Seen; the index says \Flagged since: a's sync says so.
    assert a.sync().flags == ((1, 1, frozenset({"\\Flagged"})),)
    assert c.sync().flags == ()
    assert a.messages[0].flags == c.messages[0].flags == {"\\Flagged"}


# -- the pool of idle connections (`_imapindex`) --------------------------------------------


def test_a_released_connection_serves_the_next_operation(tmp_path: pathlib.Path) -> None:
    acc, key = _inbox_with(tmp_path, 2)
    other = account(tmp_path)
    index = acc.index_for("INBOX")
    acc.release()
    other.release()
    assert index._conn is None
    assert len(index_module._IDLE[key]) == 2
    conn = index.conn  # taken back: the last one released
    assert conn is not None
    assert len(index_module._IDLE[key]) == 1
    view = other.select("INBOX")
    assert list(view.uids) == [1, 2]
    assert key not in index_module._IDLE  # both in use
    with index.read():
        index.release()  # inside a transaction: kept
        assert index._conn is conn


def test_the_pool_keeps_a_few_and_closes_the_oldest(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_module, "_IDLE_MAX", 3)
    _, key = _inbox_with(tmp_path, 1)
    indexes = [account(tmp_path).index_for("INBOX") for _ in range(5)]
    conns = [index.conn for index in indexes]
    for index in indexes:
        index.release()
    assert [c for c, _ in index_module._IDLE[key]] == conns[2:]
    for conn in conns[:2]:
        with pytest.raises(sqlite3.ProgrammingError):
            conn.execute("SELECT 1")
    for index in indexes:  # they open new ones when the pool runs dry
        assert index.header().uidnext == 2
        index.close()
    assert key not in index_module._IDLE


def test_a_session_keeps_its_connection_however_often_it_gives_it_back(
    tmp_path: pathlib.Path,
) -> None:
    # One connection released and taken back more often than the pool holds: it stays
    # open (the pool once closed it every 17th time, for its stale places in line).
    acc, key = _inbox_with(tmp_path, 1)
    index = acc.index_for("INBOX")
    conn = index.conn
    for _ in range(3 * index_module._IDLE_MAX):
        acc.release()
        assert index.header().uidnext == 2
        assert index._conn is conn
    acc.release()
    assert [c for c, _ in index_module._IDLE[key]] == [conn]
    assert [entry for entry in index_module._IDLE_ORDER if entry[0] == key] == [
        (key, conn, index._ino)
    ]


def test_a_pooled_connection_to_a_replaced_index_is_not_used(tmp_path: pathlib.Path) -> None:
    acc, _ = _inbox_with(tmp_path, 2)
    index = acc.index_for("INBOX")
    old = index.conn
    uidvalidity = index.header().uidvalidity
    acc.release()
    # Another process rebuilt it meanwhile (a new file, a new UIDVALIDITY).
    rebuilder = account(tmp_path).index_for("INBOX")
    rebuilder.close()
    rebuilder.rebuild()
    assert index.conn is not old
    with pytest.raises(sqlite3.ProgrammingError):
        old.execute("SELECT 1")
    assert index.header().uidvalidity > uidvalidity
