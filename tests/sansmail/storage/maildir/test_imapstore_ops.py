"""Operations on a view: reading, STORE, APPEND, COPY, MOVE, EXPUNGE, the cache blob."""

from __future__ import annotations

import datetime
import os
import pathlib

import pytest
from imapstore_helpers import (
    Where,
    account,
    deliver,
    files,
    letters,
    message,
    root,
    x_id,
)

from sansmail.storage.maildir._imapbase import (
    ExpungeIssuedError,
    FlagMode,
    NoSuchFolderError,
    ReadOnlyError,
    SyncChanges,
    TooManyKeywordsError,
)


def test_read_and_stream(where: Where) -> None:
    # Big enough for several chunks, with a CRLF split across the 128 KiB boundary.
    body = b"a" * (128 * 1024 - 20) + b"\r\n" + b"line\r\n" * 50_000
    deliver(where, message(1, body))
    view = account(where).select("INBOX")
    whole = view.read(1)
    assert whole == message(1, body)
    assert view.messages[0].size == len(whole)
    stream = view.open_content(1)
    assert stream is not None
    with stream:
        parts = []
        while chunk := stream.read(7777):
            parts.append(chunk)
    assert b"".join(parts) == whole
    assert view.read(99) is None
    assert view.open_content(99) is None


def test_stream_handles_cr_at_chunk_end(tmp_path: pathlib.Path) -> None:
    account(tmp_path).close()
    raw = b"x" * (128 * 1024 - 1) + b"\r\nnext\rbare\n"
    (root(tmp_path) / "cur" / "1700000000.M1P1.h:2,").write_bytes(raw)
    view = account(tmp_path).select("INBOX")
    stream = view.open_content(1)
    assert stream is not None
    with stream:
        assert stream.read() == b"x" * (128 * 1024 - 1) + b"\r\nnext\r\nbare\r\n"


def test_read_finds_a_file_renamed_meanwhile(tmp_path: pathlib.Path) -> None:
    name = deliver(tmp_path, message(1))
    view = account(tmp_path).select("INBOX")
    cur = root(tmp_path) / "cur"
    os.rename(cur / f"{name}:2,", cur / f"{name}:2,S")
    assert view.read(1) == message(1)
    os.unlink(cur / f"{name}:2,S")
    assert view.read(1) is None


def test_store_modes(where: Where) -> None:
    name = deliver(where, message(1))
    view = account(where).select("INBOX")
    if isinstance(where, pathlib.Path):
        top = root(where)
    assert view.store_flags([1], ["\\Seen", "\\Flagged"], FlagMode.ADD) == {
        1: {"\\Seen", "\\Flagged"}
    }
    if isinstance(where, pathlib.Path):
        assert letters(top)[name] == "FS"
    assert view.store_flags([1], ["\\flagged", "\\Recent"], FlagMode.REMOVE) == {1: {"\\Seen"}}
    assert view.store_flags(
        [1], ["\\Draft", "\\Deleted", "\\Answered", "Work"], FlagMode.REPLACE
    ) == {1: {"\\Draft", "\\Deleted", "\\Answered", "Work"}}
    if isinstance(where, pathlib.Path):
        assert letters(top)[name] == "DRTa"
    assert view.messages[0].flags == {"\\Draft", "\\Deleted", "\\Answered", "Work"}
    assert view.store_flags([1], [], FlagMode.REPLACE) == {1: frozenset()}
    if isinstance(where, pathlib.Path):
        assert letters(top)[name] == ""
    # an unchanged message is not renamed and still answered with its flags
    assert view.store_flags([1], [], FlagMode.REMOVE) == {1: frozenset()}
    # UIDs the view does not list are left alone
    assert view.store_flags([5], ["\\Seen"], FlagMode.ADD) == {}
    with pytest.raises(ValueError):
        view.store_flags([1], ["\\Bogus"], FlagMode.ADD)
    with pytest.raises(ValueError):
        view.store_flags([1], ["two words"], FlagMode.ADD)


def test_store_on_a_file_renamed_by_another_tool(tmp_path: pathlib.Path) -> None:
    name = deliver(tmp_path, message(1))
    view = account(tmp_path).select("INBOX")
    cur = root(tmp_path) / "cur"
    os.rename(cur / f"{name}:2,", cur / f"{name}:2,F")
    # the file's flags (F) are the ones +FLAGS adds to
    assert view.store_flags([1], ["\\Seen"], FlagMode.ADD) == {1: {"\\Flagged", "\\Seen"}}
    assert letters(root(tmp_path))[name] == "FS"
    os.unlink(cur / f"{name}:2,FS")
    assert view.store_flags([1], ["\\Draft"], FlagMode.ADD) == {}
    assert view.sync().expunged == (1,)


def test_keyword_limit(where: Where) -> None:
    deliver(where, message(1))
    view = account(where).select("INBOX")
    assert view.can_create_keywords
    view.store_flags([1], [f"k{n}" for n in range(26)], FlagMode.ADD)
    assert not view.can_create_keywords
    with pytest.raises(TooManyKeywordsError):
        view.store_flags([1], ["one-more"], FlagMode.ADD)
    assert view.store_flags([1], ["K3"], FlagMode.REMOVE)[1] == {f"k{n}" for n in range(26)} - {
        "k3"
    }


def test_read_only_view(where: Where) -> None:
    deliver(where, message(1))
    view = account(where).select("INBOX", readonly=True)
    with pytest.raises(ReadOnlyError):
        view.store_flags([1], ["\\Seen"], FlagMode.ADD)
    with pytest.raises(ReadOnlyError):
        view.expunge()
    with pytest.raises(ReadOnlyError):
        view.move([1], "Trash")
    assert view.copy([1], "Trash").uids == [(1, 1)]


def test_append(where: Where) -> None:
    acc = account(where)
    when = datetime.datetime(
        2024, 3, 1, 12, 30, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=-5))
    )
    content = b"Subject: hi\r\n\r\nline\r\nbare lf\nend\r\n"
    result = acc.append("Drafts", content, ["\\Draft", "\\Seen", "$Todo"], when)
    assert result.uid == 1
    assert result.uidvalidity == acc.status("Drafts", ["UIDVALIDITY"])["UIDVALIDITY"]
    crlf = b"Subject: hi\r\n\r\nline\r\nbare lf\r\nend\r\n"
    if isinstance(where, pathlib.Path):
        folder = root(where) / ".Drafts"
        ((base, rel),) = files(folder).items()
        stored = (folder / rel).read_bytes()
        assert stored == b"Subject: hi\n\nline\nbare lf\nend\n"
        assert rel == f"cur/{base}:2,DSa"
        assert base.endswith(f",S={len(stored)},W={len(crlf)}")
        assert (folder / "dovecot-keywords").read_text() == "0 $Todo\n"
        assert os.stat(folder / rel).st_mtime == when.timestamp()
        assert os.listdir(folder / "tmp") == []
    view = acc.select("Drafts")
    (info,) = view.messages
    assert info.internaldate == when
    assert info.internaldate.utcoffset() == datetime.timedelta(hours=-5)
    assert info.size == len(crlf)
    assert info.flags == {"\\Draft", "\\Seen", "$Todo"}
    assert view.read(1) == crlf
    second = view.append(message(2))
    assert second.uid == 2
    with pytest.raises(NoSuchFolderError):
        acc.append("Nowhere", message(3))


def test_copy(where: Where) -> None:
    acc = account(where)
    acc.append("Trash", message(0))  # so the destination's UIDs differ from the source's
    for n in (1, 2, 3):
        deliver(where, message(n))
    if isinstance(where, pathlib.Path):
        (root(where) / ".Archive" / "dovecot-keywords").write_text("0 Other\n")
    view = acc.select("INBOX")
    view.store_flags([2], ["\\Flagged", "Work"], FlagMode.ADD)
    view.set_cache(2, b"structure")
    result = view.copy([3, 2, 99], "Archive")
    assert result.uids == [(2, 1), (3, 2)]
    assert result.uidvalidity == acc.status("Archive", ["UIDVALIDITY"])["UIDVALIDITY"]
    dest = acc.select("Archive")
    assert [m.flags for m in dest.messages] == [{"\\Flagged", "Work"}, frozenset()]
    assert [x_id(dest.read(m.uid) or b"") for m in dest.messages] == [2, 3]
    assert dest.get_cache(1) == b"structure"
    assert dest.messages[0].internaldate == view.messages[1].internaldate
    assert dest.recent == {1, 2}
    if isinstance(where, pathlib.Path):
        # keywords get the destination's letters; the file is the same inode
        keywords = (root(where) / ".Archive" / "dovecot-keywords").read_text()
        assert keywords == "0 Other\n1 Work\n"
        archive_files = files(root(where) / ".Archive")
        assert sorted(f.partition(":2,")[2] for f in archive_files.values()) == ["", "Fb"]
        top = root(where)
        assert sorted(os.stat(top / rel).st_nlink for rel in files(top).values()) == [1, 2, 2]
    # the source keeps its messages; the keyword it defined is announced once
    assert view.sync() == SyncChanges(exists=3, keywords=("Work",))
    assert not view.sync()


def test_copy_of_an_expunged_message_changes_nothing(tmp_path: pathlib.Path) -> None:
    acc = account(tmp_path)
    deliver(tmp_path, message(1))
    second = deliver(tmp_path, message(2))
    view = acc.select("INBOX")
    os.unlink(root(tmp_path) / "cur" / f"{second}:2,")
    account(tmp_path).status("INBOX", ["MESSAGES"])  # another session notices
    with pytest.raises(ExpungeIssuedError) as caught:
        view.copy([1, 2], "Archive")
    assert caught.value.uids == (2,)
    assert caught.value.code == "EXPUNGEISSUED"
    assert files(root(tmp_path) / ".Archive") == {}
    assert acc.status("Archive", ["MESSAGES", "UIDNEXT"]) == {"MESSAGES": 0, "UIDNEXT": 1}


def test_move(where: Where) -> None:
    acc = account(where)
    for n in (1, 2, 3):
        deliver(where, message(n))
    view = acc.select("INBOX")
    view.store_flags([1], ["\\Seen"], FlagMode.ADD)
    result = view.move([1, 3], "Trash")
    assert result.uids == [(1, 1), (3, 2)]
    # the view still lists them until it syncs (RFC 9051 §7.5.1)
    assert [m.uid for m in view.messages] == [1, 2, 3]
    changes = view.sync()
    assert changes.expunged == (3, 1)
    assert [m.uid for m in view.messages] == [2]
    if isinstance(where, pathlib.Path):
        assert len(files(root(where))) == 1
    trash = acc.select("Trash")
    assert [(x_id(trash.read(m.uid) or b""), m.flags) for m in trash.messages] == [
        (1, {"\\Seen"}),
        (3, frozenset()),
    ]


def test_move_within_one_folder(where: Where) -> None:
    acc = account(where)
    deliver(where, message(1))
    view = acc.select("INBOX")
    assert view.move([1], "INBOX").uids == [(1, 2)]
    changes = view.sync()
    assert changes.expunged == (1,)
    assert [m.uid for m in changes.added] == [2]
    assert view.read(2) == message(1)


def test_expunge(where: Where) -> None:
    acc = account(where)
    for n in range(1, 6):
        deliver(where, message(n))
    view = acc.select("INBOX")
    view.store_flags([1, 2, 4, 5], ["\\Deleted"], FlagMode.ADD)
    assert view.expunge([2, 3, 4]) == [2, 4]  # UID EXPUNGE: only those, only \Deleted
    if isinstance(where, pathlib.Path):
        assert len(files(root(where))) == 3
    assert view.expunge() == [1, 5]
    assert view.expunge() == []
    assert view.sync().expunged == (5, 4, 2, 1)
    assert [x_id(view.read(m.uid) or b"") for m in view.messages] == [3]


def test_cache(where: Where) -> None:
    deliver(where, message(1))
    view = account(where).select("INBOX")
    assert view.get_cache(1) is None
    view.set_cache(1, b"\x00blob")
    view.store_flags([1], ["\\Seen"], FlagMode.ADD)
    other = account(where).select("INBOX")
    assert other.get_cache(1) == b"\x00blob"
    assert other.get_cache(2) is None
    assert not view.sync()  # caching is not a change clients hear of
