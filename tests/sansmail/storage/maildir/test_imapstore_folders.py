"""Folders of an account: first open, LIST data, CREATE/DELETE/RENAME with the INBOX rules
(RFC 9051 §6.3.4-6.3.6), subscriptions and STATUS."""

from __future__ import annotations

import os
import pathlib

import pytest
from imapstore_helpers import Where, account, deliver, message, root

from sansmail.storage.maildir._imapaccount import MaildirAccount
from sansmail.storage.maildir._imapbase import (
    FlagMode,
    FolderExistsError,
    FolderHasChildrenError,
    FolderInfo,
    InvalidFolderNameError,
    NoSuchFolderError,
    NotAllowedError,
)

SPECIAL = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}


def listing(acc: MaildirAccount) -> dict[str, FolderInfo]:
    return {info.name: info for info in acc.list_folders()}


def test_first_open_makes_the_special_use_folders(where: Where) -> None:
    acc = account(where)
    if isinstance(where, pathlib.Path):
        top = root(where)
    for sub in ("tmp", "new", "cur"):
        if isinstance(where, pathlib.Path):
            assert (top / sub).is_dir()
    infos = acc.list_folders()
    assert [i.name for i in infos] == ["INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"]
    for info in infos:
        assert info.exists
        assert info.subscribed
        assert info.special_use == SPECIAL.get(info.name)
        if info.name != "INBOX":
            if isinstance(where, pathlib.Path):
                folder = top / ("." + info.name)
            if isinstance(where, pathlib.Path):
                assert (folder / "maildirfolder").is_file()
            if isinstance(where, pathlib.Path):
                assert all((folder / sub).is_dir() for sub in ("tmp", "new", "cur"))
    assert listing(acc)["Sent"].attributes() == ["\\HasNoChildren", "\\Subscribed", "\\Sent"]
    if isinstance(where, pathlib.Path):
        assert (top / "subscriptions").read_bytes().startswith(b"V\t2\n\nINBOX\n")


def test_special_folders_only_on_first_open(where: Where) -> None:
    acc = account(where)
    acc.delete("Junk")
    acc.close()
    again = account(where)
    assert "Junk" not in {i.name for i in again.list_folders() if i.exists}


def test_existing_maildir_from_delivery(where: Where) -> None:
    deliver(where, message(1))
    acc = account(where)
    assert acc.status("INBOX", ["MESSAGES", "RECENT", "UNSEEN"]) == {
        "MESSAGES": 1,
        "RECENT": 1,
        "UNSEEN": 1,
    }


def test_create_nested_without_parents(where: Where) -> None:
    acc = account(where)
    acc.create("Work/2024/Q1")
    if isinstance(where, pathlib.Path):
        assert (root(where) / ".Work.2024.Q1" / "cur").is_dir()
    if isinstance(where, pathlib.Path):
        assert not (root(where) / ".Work").exists()
    info = listing(acc)
    assert info["Work"] == FolderInfo(
        name="Work", exists=False, has_children=True, subscribed=False
    )
    assert info["Work"].attributes() == ["\\Noselect", "\\HasChildren"]
    assert info["Work"].attributes(rev2=True) == ["\\NonExistent", "\\HasChildren"]
    assert info["Work/2024"].attributes() == ["\\Noselect", "\\HasChildren"]
    assert info["Work/2024/Q1"].attributes() == ["\\HasNoChildren"]
    with pytest.raises(NoSuchFolderError):
        acc.select("Work")
    with pytest.raises(NoSuchFolderError):
        acc.append("Work", message(1))
    # the parent can still be created later
    acc.create("Work")
    assert listing(acc)["Work"].attributes() == ["\\HasChildren"]


def test_create_rules(where: Where) -> None:
    acc = account(where)
    with pytest.raises(FolderExistsError):
        acc.create("inbox")
    with pytest.raises(FolderExistsError):
        acc.create("Sent")
    acc.create("Lists/")  # the trailing separator only declares the intent to have children
    assert listing(acc)["Lists"].exists
    with pytest.raises(InvalidFolderNameError):
        acc.create("a//b")
    with pytest.raises(InvalidFolderNameError):
        acc.create("*")
    acc.create("inbox/Sub")  # INBOX may have children: .INBOX.Sub, as Dovecot
    if isinstance(where, pathlib.Path):
        assert (root(where) / ".INBOX.Sub").is_dir()
    assert listing(acc)["INBOX"].has_children


def test_unusual_names_round_trip_through_the_disk(where: Where) -> None:
    acc = account(where)
    for name in ("v1.2", "Entwürfe", "a\\b", "~x", "日本語/台北"):
        acc.create(name)
        acc.append(name, message(1))
    names = {i.name for i in acc.list_folders() if i.exists}
    assert {"v1.2", "Entwürfe", "a\\b", "~x", "日本語/台北"} <= names
    if isinstance(where, pathlib.Path):
        assert (root(where) / ".v1\\2e2").is_dir()
    if isinstance(where, pathlib.Path):
        assert (root(where) / ".Entw&APw-rfe").is_dir()
    assert acc.status("Entwürfe", ["MESSAGES"]) == {"MESSAGES": 1}


def test_delete_rules(where: Where) -> None:
    acc = account(where)
    with pytest.raises(NotAllowedError):
        acc.delete("INBOX")
    with pytest.raises(NoSuchFolderError):
        acc.delete("Nothing")
    acc.create("Work/Old")
    with pytest.raises(FolderHasChildrenError):
        acc.delete("Work")  # a \Noselect name with inferiors (RFC 9051 §6.3.5)
    acc.create("Work")
    acc.append("Work", message(1))
    acc.subscribe("Work")
    acc.delete("Work")  # removes its messages; the child stays, the name is \Noselect
    info = listing(acc)
    assert not info["Work"].exists
    assert info["Work"].has_children
    assert info["Work"].subscribed  # RFC 9051 §6.3.9: subscriptions are not removed
    assert info["Work/Old"].exists
    if isinstance(where, pathlib.Path):
        assert not os.listdir(root(where) / "tmp")  # nothing left behind


def test_recreated_folder_gets_a_greater_uidvalidity(where: Where) -> None:
    acc = account(where)
    acc.create("Box")
    first = acc.status("Box", ["UIDVALIDITY"])["UIDVALIDITY"]
    acc.delete("Box")
    acc.create("Box")
    second = acc.status("Box", ["UIDVALIDITY"])["UIDVALIDITY"]
    assert second > first


def test_leftover_of_an_interrupted_delete_is_removed(tmp_path: pathlib.Path) -> None:
    account(tmp_path).close()
    leftover = root(tmp_path) / "tmp" / "sansmail-deleted.123" / "cur"
    leftover.mkdir(parents=True)
    account(tmp_path).close()
    assert not (root(tmp_path) / "tmp" / "sansmail-deleted.123").exists()


def test_rename_moves_children_and_subscriptions(where: Where) -> None:
    acc = account(where)
    acc.create("Work")
    acc.create("Work/2024")
    acc.append("Work/2024", message(7))
    validity = acc.status("Work/2024", ["UIDVALIDITY"])
    acc.subscribe("Work/2024")
    acc.rename("Work", "Job")
    info = listing(acc)
    assert "Work" not in info
    assert "Work/2024" not in info
    assert info["Job"].exists
    assert info["Job/2024"].subscribed
    # same folder, same UIDs: UIDVALIDITY stays (it is unique in the account)
    assert acc.status("Job/2024", ["MESSAGES", "UIDVALIDITY"]) == {"MESSAGES": 1, **validity}


def test_rename_rules(where: Where) -> None:
    acc = account(where)
    with pytest.raises(NoSuchFolderError):
        acc.rename("Nothing", "Else")
    with pytest.raises(FolderExistsError):
        acc.rename("Sent", "Trash")
    with pytest.raises(FolderExistsError):
        acc.rename("Sent", "INBOX")
    with pytest.raises(InvalidFolderNameError):
        acc.rename("Sent", "Sent/Sub")
    acc.create("A/B")
    acc.create("X/B")
    with pytest.raises(FolderExistsError):  # an inferior would land on an existing name
        acc.rename("A", "X")
    assert listing(acc)["A/B"].exists


def test_rename_inbox_moves_its_messages(where: Where) -> None:
    acc = account(where)
    deliver(where, message(1))
    deliver(where, message(2))
    acc.create("INBOX/Child")
    view = acc.select("INBOX")
    view.store_flags([2], ["\\Flagged"], FlagMode.ADD)
    view.close()
    acc.rename("INBOX", "Old Mail")
    assert acc.status("INBOX", ["MESSAGES", "UIDNEXT"]) == {"MESSAGES": 0, "UIDNEXT": 3}
    old = acc.select("Old Mail")
    assert [m.flags for m in old.messages] == [frozenset(), {"\\Flagged"}]
    assert [old.read(m.uid) for m in old.messages] == [message(1), message(2)]
    assert listing(acc)["INBOX/Child"].exists  # INBOX's inferiors stay (RFC 9051 §6.3.6)
    with pytest.raises(FolderExistsError):
        acc.rename("INBOX", "Old Mail")
    deliver(where, message(3))
    acc.rename("inbox", "INBOX/Older")  # below INBOX is fine: only the messages move
    assert acc.status("INBOX/Older", ["MESSAGES"]) == {"MESSAGES": 1}
    assert acc.status("INBOX", ["MESSAGES"]) == {"MESSAGES": 0}


def test_subscriptions(where: Where) -> None:
    acc = account(where)
    acc.subscribe("Not/There")
    acc.subscribe("Not/There")
    acc.unsubscribe("Sent")
    acc.unsubscribe("Sent")
    info = listing(acc)
    assert info["Not/There"] == FolderInfo(
        name="Not/There", exists=False, has_children=False, subscribed=True
    )
    assert info["Not/There"].attributes(rev2=True) == [
        "\\NonExistent",
        "\\HasNoChildren",
        "\\Subscribed",
    ]
    assert not info["Sent"].subscribed
    if isinstance(where, pathlib.Path):
        text = (root(where) / "subscriptions").read_text()
        assert text.count("Not\tThere\n") == 1


def test_folder_made_by_mkdir(tmp_path: pathlib.Path) -> None:
    acc = account(tmp_path)
    (root(tmp_path) / ".Made By Hand").mkdir()  # not even tmp/new/cur
    assert listing(acc)["Made By Hand"].exists
    view = acc.select("Made By Hand")
    assert view.messages == []
    assert (root(tmp_path) / ".Made By Hand" / "cur").is_dir()


def test_status(where: Where) -> None:
    acc = account(where)
    acc.append("Sent", message(1), ["\\Seen"])
    acc.append("Sent", message(2), ["\\Deleted"])
    acc.append("Sent", message(3, b"x" * 10 + b"\n"))
    status = acc.status(
        "Sent", ["MESSAGES", "UIDNEXT", "UNSEEN", "DELETED", "SIZE", "RECENT", "HIGHESTMODSEQ"]
    )
    sizes = len(message(1)) + len(message(2)) + len(message(3, b"x" * 10 + b"\r\n"))
    assert status["MESSAGES"] == 3
    assert status["UIDNEXT"] == 4
    assert status["UNSEEN"] == 2
    assert status["DELETED"] == 1
    assert status["SIZE"] == sizes
    assert status["RECENT"] == 3
    assert status["HIGHESTMODSEQ"] >= 3
    view = acc.select("Sent")
    assert len(view.recent) == 3
    assert acc.status("Sent", ["RECENT"]) == {"RECENT": 0}
    with pytest.raises(NoSuchFolderError):
        acc.status("Nothing", ["MESSAGES"])
    with pytest.raises(ValueError):
        acc.status("Sent", ["BOGUS"])
