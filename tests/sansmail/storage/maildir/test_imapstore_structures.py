"""What FETCH keeps of each message (`Structures`): one read and one write for many
messages, kept with its message through COPY and gone with it at EXPUNGE, never a change
clients hear of; and an index of the first schema version migrated in place, every UID
and the UIDVALIDITY kept."""

from __future__ import annotations

import os
import pathlib
import sqlite3

import pytest
from imapstore_helpers import Where, account, deliver, message, root, x_id

from sansmail.storage.maildir import FlagMode, Structures
from sansmail.storage.maildir._imapindex import INDEX_NAME


def test_structures_in_one_read_and_one_write(where: Where) -> None:
    for n in (1, 2, 3):
        deliver(where, message(n))
    view = account(where).select("INBOX")
    assert view.structures([1, 2, 3, 9]) == {uid: Structures() for uid in (1, 2, 3)}
    view.set_structures(
        {
            1: Structures(b"(env1)", b"(bs1)", b"(b1)", b"blob1"),
            2: Structures(envelope=b"(env2)"),
            9: Structures(envelope=b"(gone)"),  # no such message: nothing is kept
        }
    )
    view.set_structures({2: Structures(body=b"(b2)")})  # None members keep what is there
    other = account(where).select("INBOX")
    assert other.structures([1, 2, 3, 9]) == {
        1: Structures(b"(env1)", b"(bs1)", b"(b1)"),  # the blob only when asked for
        2: Structures(b"(env2)", None, b"(b2)"),
        3: Structures(),
    }
    assert other.structures([1], cache=True)[1].cache == b"blob1"
    assert other.get_cache(1) == b"blob1"
    view.set_cache(2, b"blob2")
    assert other.structures([2], cache=True) == {2: Structures(b"(env2)", None, b"(b2)", b"blob2")}
    assert not view.sync()  # kept structures are not news


def test_contents_in_order_and_none_for_a_message_gone(tmp_path: pathlib.Path) -> None:
    for n in (1, 2, 3):
        deliver(tmp_path, message(n))
    view = account(tmp_path).select("INBOX")
    view.store_flags([2], ["\\Seen"], FlagMode.ADD)
    other = account(tmp_path).select("INBOX")
    # Renamed behind the view's back (another tool): found again by its base name.
    for name in os.listdir(root(tmp_path) / "cur"):
        if name.endswith(":2,"):
            os.rename(root(tmp_path) / "cur" / name, root(tmp_path) / "cur" / (name + "F"))
            break
    got = list(other.contents([3, 1, 2, 7]))
    assert [uid for uid, _ in got] == [3, 1, 2, 7]
    assert [x_id(raw or b"") for _uid, raw in got[:3]] == [3, 1, 2]
    assert got[3] == (7, None)


def test_structures_follow_copies_and_go_with_expunges(tmp_path: pathlib.Path) -> None:
    for n in (1, 2):
        deliver(tmp_path, message(n))
    acc = account(tmp_path)
    view = acc.select("INBOX")
    kept = Structures(b"(e)", b"(s)", b"(b)", b"blob")
    view.set_structures({1: kept, 2: kept})
    assert view.copy([1], "Archive").uids == [(1, 1)]
    assert acc.select("Archive").structures([1], cache=True) == {1: kept}
    view.store_flags([1, 2], ["\\Deleted"], FlagMode.ADD)
    assert view.expunge([1]) == [1]
    index = acc.index_for("INBOX")
    uids = [uid for (uid,) in index.conn.execute("SELECT uid FROM structures")]
    assert uids == [2]


_VERSION_1 = (
    """CREATE TABLE folder (
        id INTEGER PRIMARY KEY CHECK (id = 0), uidvalidity INTEGER NOT NULL,
        uidnext INTEGER NOT NULL, highestmodseq INTEGER NOT NULL,
        recent_uid INTEGER NOT NULL, expunge_floor INTEGER NOT NULL,
        new_mtime INTEGER NOT NULL, cur_mtime INTEGER NOT NULL, synced INTEGER NOT NULL,
        new_count INTEGER NOT NULL)""",
    """CREATE TABLE messages (
        uid INTEGER PRIMARY KEY, base TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
        flags INTEGER NOT NULL, keywords TEXT NOT NULL, internaldate INTEGER NOT NULL,
        tz INTEGER NOT NULL, size INTEGER NOT NULL, modseq INTEGER NOT NULL, cache BLOB)""",
    "CREATE INDEX messages_modseq ON messages (modseq)",
    "CREATE TABLE expunged (uid INTEGER PRIMARY KEY, modseq INTEGER NOT NULL)",
    "CREATE INDEX expunged_modseq ON expunged (modseq)",
)


def test_an_index_of_version_1_is_migrated_in_place(tmp_path: pathlib.Path) -> None:
    top = root(tmp_path)
    for sub in ("cur", "new", "tmp"):
        (top / sub).mkdir(parents=True)
    rows = []
    for n, uid in ((1, 7), (2, 9)):
        content = message(n).replace(b"\r\n", b"\n")
        name = f"1700000000.M{n}P1.h,S={len(content)},W={len(message(n))}:2,S"
        (top / "cur" / name).write_bytes(content)
        rows.append(
            (
                uid,
                name.partition(":")[0],
                "cur/" + name,
                1,
                "",
                1700000000,
                0,
                len(message(n)),
                3,
                b"blob%d" % n if n == 1 else None,
            )
        )
    db = sqlite3.connect(top / INDEX_NAME, isolation_level=None)
    for statement in _VERSION_1:
        db.execute(statement)
    db.execute("INSERT INTO folder VALUES (0, 4242, 10, 3, 10, 0, -1, -1, 0, 0)")
    db.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.execute("PRAGMA user_version = 1")
    db.close()

    view = account(tmp_path).select("INBOX")
    assert view.uidvalidity == 4242
    assert view.uidnext == 10
    assert [(m.uid, x_id(view.read(m.uid) or b"")) for m in view.messages] == [(7, 1), (9, 2)]
    assert view.get_cache(7) == b"blob1"
    assert view.get_cache(9) is None
    db = sqlite3.connect(top / INDEX_NAME)
    assert db.execute("PRAGMA user_version").fetchone() == (3,)
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    assert {"structures", "fields", "searched", "texts"} <= tables
    columns = [row[1] for row in db.execute("PRAGMA table_info(messages)")]
    if sqlite3.sqlite_version_info >= (3, 35):
        assert "cache" not in columns
    db.close()
    # and it goes on as any index does
    assert view.append(message(3)).uid == 10


def test_an_index_of_an_unknown_version_is_refused_not_rebuilt(tmp_path: pathlib.Path) -> None:
    acc = account(tmp_path)
    acc.close()
    db = sqlite3.connect(root(tmp_path) / INDEX_NAME)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="unknown index version 99"):
        account(tmp_path)
    assert sqlite3.connect(root(tmp_path) / INDEX_NAME).execute(
        "SELECT count(*) FROM folder"
    ).fetchone() == (1,)
