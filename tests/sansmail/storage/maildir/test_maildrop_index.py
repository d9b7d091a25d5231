"""The POP3 snapshot from the IMAP index (`Maildrop.open` where ``sansmail.index.sqlite``
is): the same messages, order, sizes and UIDLs as listing the directories, with no look
at each file; mail delivered since IMAP last looked is there; an index that cannot be
read is left alone and the directories are listed."""

from __future__ import annotations

import os
import pathlib
import sqlite3

import pytest
from imapstore_helpers import account, deliver, message, root

from sansmail.storage.maildir import FlagMode, Maildrop, _mailbox
from sansmail.storage.maildir._imapindex import INDEX_NAME


def snapshot(top: pathlib.Path) -> list[tuple[str, str, int, str, str]]:
    with Maildrop.open(top) as drop:
        return [(m.base, m.uid, m.size, m.folder, m.name) for m in drop.messages]


def listed(top: pathlib.Path) -> list[tuple[str, str, int, str, str]]:
    """The snapshot of the directories alone."""
    return [(m.base, m.uid, m.size, m.folder, m.name) for m in _mailbox._listed_snapshot(str(top))]


def test_the_index_gives_the_listing_without_a_look_at_each_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(5):
        deliver(tmp_path, message(n))
    top = root(tmp_path)
    # Files another tool wrote: no W= size, and a name without a time stamp.
    (top / "cur" / "1600000000.M1P9.other:2,S").write_bytes(b"Subject: a\nX-Id: 90\n\nx\n")
    (top / "new" / "no-time-stamp").write_bytes(b"Subject: b\r\nX-Id: 91\r\n\r\ny\r\n")
    os.utime(top / "new" / "no-time-stamp", (1_650_000_000, 1_650_000_000))
    view = account(tmp_path).select("INBOX")
    view.store_flags([2], ["\\Seen"], FlagMode.ADD)
    expected = listed(top)
    assert len(expected) == 7
    monkeypatch.setattr(_mailbox, "_describe", lambda *a: pytest.fail("a file looked at"))
    monkeypatch.setattr(_mailbox, "_wire_size", lambda *a: pytest.fail("a file measured"))
    assert snapshot(top) == expected


def test_mail_since_the_last_imap_sync_is_in_the_snapshot(tmp_path: pathlib.Path) -> None:
    deliver(tmp_path, message(1))
    account(tmp_path).select("INBOX")
    deliver(tmp_path, message(2))
    top = root(tmp_path)
    assert [m[1] for m in snapshot(top)] == [m[1] for m in listed(top)]
    assert len(snapshot(top)) == 2
    # and IMAP sees the UID POP3's look gave it
    assert [m.uid for m in account(tmp_path).select("INBOX").messages] == [1, 2]


@pytest.mark.parametrize("damage", ["garbage", "newer"])
def test_an_index_that_cannot_be_read_is_left_alone(tmp_path: pathlib.Path, damage: str) -> None:
    for n in range(3):
        deliver(tmp_path, message(n))
    acc = account(tmp_path)
    acc.select("INBOX")
    acc.close()
    db = root(tmp_path) / INDEX_NAME
    if damage == "garbage":
        with open(db, "r+b") as f:
            f.write(b"this is not an index" * 10)
    else:
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA user_version = 99")
        conn.commit()
        conn.close()
    before = db.read_bytes()
    assert snapshot(root(tmp_path)) == listed(root(tmp_path))
    assert len(snapshot(root(tmp_path))) == 3
    assert db.read_bytes() == before  # not rebuilt: IMAP's business
