"""A lost or damaged IMAP index is rebuilt from the Maildir when the folder is next
opened, with every message and flag, under a greater UIDVALIDITY (the UIDs were only
in the index), and one warning line says so; a folder indexed for the first time is no
repair and says nothing."""

from __future__ import annotations

import logging
import os
import pathlib
import stat

import pytest
from imapstore_helpers import account, message, root, x_id

from sansmail.storage.maildir._imapbase import FlagMode
from sansmail.storage.maildir._imapindex import INDEX_NAME, INDEXED_MARKER

FLAGS = [set(), {"\\Seen"}, {"\\Seen", "\\Flagged"}, {"\\Answered", "Work"}, {"\\Deleted"}]


def populated(data_dir: pathlib.Path, folder: str = "INBOX") -> tuple[int, list[set[str]]]:
    """Five messages in `folder`, each with its flags set over IMAP; the UIDVALIDITY."""
    acc = account(data_dir)
    for n, flags in enumerate(FLAGS):
        uid = acc.append(folder, message(n)).uid
        view = acc.select(folder)
        if flags:
            view.store([uid], flags, FlagMode.ADD)
        view.close()
    view = acc.select(folder)
    validity = view.uidvalidity
    assert [set(m.flags) for m in view.messages] == FLAGS
    acc.close()
    return validity, FLAGS


def repairs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "sansmail.repair"]


def check_rebuilt(data_dir: pathlib.Path, old: int, folder: str = "INBOX") -> None:
    view = account(data_dir).select(folder)
    assert view.index_rebuilt
    assert view.uidvalidity > old
    assert [set(m.flags) for m in view.messages] == FLAGS
    assert sorted(x_id(view.read(m.uid) or b"") for m in view.messages) == [0, 1, 2, 3, 4]
    view.close()


@pytest.mark.parametrize("folder", ["INBOX", "Archive"])
@pytest.mark.parametrize("damage", ["delete", "delete-main-only", "empty"])
def test_a_lost_index_is_rebuilt_and_logged(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, damage: str, folder: str
) -> None:
    old, _ = populated(tmp_path, folder)
    top = root(tmp_path) if folder == "INBOX" else root(tmp_path) / f".{folder}"
    db = top / INDEX_NAME
    if damage == "delete":
        for suffix in ("", "-wal", "-shm"):
            (top / (INDEX_NAME + suffix)).unlink(missing_ok=True)
    elif damage == "delete-main-only":
        db.unlink()
    else:
        os.truncate(db, 0)
    with caplog.at_level(logging.WARNING, logger="sansmail.repair"):
        check_rebuilt(tmp_path, old, folder)
    (line,) = repairs(caplog)
    assert line.levelno == logging.WARNING
    assert f"IMAP index {db} was missing" in line.message
    assert f"UIDVALIDITY {old} -> " in line.message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sansmail.repair"):
        account(tmp_path).select(folder).close()
    assert repairs(caplog) == []  # repaired once


@pytest.mark.parametrize("damage", ["garbage", "truncate"])
def test_a_damaged_index_is_rebuilt_and_logged(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    old, _ = populated(tmp_path)
    db = root(tmp_path) / INDEX_NAME
    if damage == "garbage":
        with open(db, "r+b") as f:
            f.write(b"this is not an index" * 10)
    else:
        os.truncate(db, os.path.getsize(db) // 2)
    with caplog.at_level(logging.WARNING, logger="sansmail.repair"):
        check_rebuilt(tmp_path, old)
    (line,) = repairs(caplog)
    assert f"IMAP index {db} was damaged (" in line.message
    assert f"UIDVALIDITY {old} -> " in line.message


def test_damage_met_by_a_running_view_is_logged(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    old, _ = populated(tmp_path)
    view = account(tmp_path).select("INBOX")
    view._index.close()
    with open(root(tmp_path) / INDEX_NAME, "r+b") as f:
        f.seek(4096)
        f.write(b"\xff" * 40000)
    with caplog.at_level(logging.WARNING, logger="sansmail.repair"):
        assert view.sync().uidvalidity_changed
    (line,) = repairs(caplog)
    assert "was damaged (" in line.message
    fresh = account(tmp_path).select("INBOX")
    assert fresh.uidvalidity > old
    assert [set(m.flags) for m in fresh.messages] == FLAGS


def test_a_new_folder_is_no_repair(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="sansmail.repair"):
        acc = account(tmp_path)
        acc.create("Projects")
        assert not acc.select("Projects").index_rebuilt
        assert not acc.select("INBOX").index_rebuilt
    assert repairs(caplog) == []
    marker = root(tmp_path) / ".Projects" / INDEXED_MARKER
    assert marker.read_text().strip() == str(acc.select("Projects").uidvalidity)
    assert stat.S_IMODE(marker.stat().st_mode) == 0o600  # as every file of the Maildir


def test_an_index_made_before_the_markers_gets_one(tmp_path: pathlib.Path) -> None:
    old, _ = populated(tmp_path)
    marker = root(tmp_path) / INDEXED_MARKER
    marker.unlink()
    account(tmp_path).select("INBOX").close()
    assert marker.read_text().strip() == str(old)


def test_a_lost_inbox_index_keeps_the_users_folders_as_they_were(tmp_path: pathlib.Path) -> None:
    # The special-use folders are made for a new account only: the user deleted Junk
    # and unsubscribed from Drafts, and losing INBOX's index must not undo that.
    acc = account(tmp_path)
    acc.delete("Junk")
    acc.unsubscribe("Drafts")
    acc.close()
    for suffix in ("", "-wal", "-shm"):
        (root(tmp_path) / (INDEX_NAME + suffix)).unlink(missing_ok=True)
    acc = account(tmp_path)
    folders = {f.name: f for f in acc.list_folders()}
    assert not folders["Junk"].exists  # listed: DELETE keeps subscriptions (RFC 9051)
    assert not folders["Drafts"].subscribed
