"""Folder names: modified UTF-7, the Dovecot-compatible disk names, and the shared files
(subscriptions, dovecot-keywords)."""

from __future__ import annotations

import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansmail.storage.maildir._imapbase import InvalidFolderNameError
from sansmail.storage.maildir._imapnames import (
    decode_mutf7,
    disk_name,
    encode_mutf7,
    folder_dir,
    folder_name,
    normalize,
    read_keywords,
    read_subscriptions,
    write_keywords,
    write_subscriptions,
)


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        ("Sent", "Sent"),
        ("Entwürfe", "Entw&APw-rfe"),
        ("A&B", "A&-B"),
        ("&", "&-"),
        # RFC 3501 §5.1.3's example
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
        ("€", "&IKw-"),
        ("😀", "&2D3eAA-"),
        ("", ""),
    ],
)
def test_mutf7_vectors(text: str, encoded: str) -> None:
    assert encode_mutf7(text) == encoded
    assert decode_mutf7(encoded) == text


@pytest.mark.parametrize(
    "bad",
    [
        "&Jjo",  # unterminated
        "&AGE-",  # "a" needlessly encoded: not canonical
        "&U,BTFw-&ZeVnLIqe-",  # two adjacent shifts: not canonical
        "&!!-",  # not base64
        "&AA-",  # odd number of UTF-16 octets
        "é",  # 8-bit text is not modified UTF-7
        "a\tb",
    ],
)
def test_mutf7_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        decode_mutf7(bad)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_mutf7_round_trip(text: str) -> None:
    encoded = encode_mutf7(text)
    assert all(" " <= ch <= "~" for ch in encoded)
    assert decode_mutf7(encoded) == text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12))
def test_mutf7_decode_never_crashes(text: str) -> None:
    try:
        decoded = decode_mutf7(text)
    except ValueError:
        return
    assert encode_mutf7(decoded) == text


@pytest.mark.parametrize(
    ("name", "disk"),
    [
        ("Sent", ".Sent"),
        ("Archive/2024", ".Archive.2024"),
        ("v1.2", ".v1\\2e2"),
        ("a\\b", ".a\\5cb"),
        ("~home", ".\\7ehome"),
        ("a/~b", ".a.~b"),
        ("Entwürfe/Alt", ".Entw&APw-rfe.Alt"),
        ("INBOX/child", ".INBOX.child"),
        ("..", ".\\2e\\2e"),
    ],
)
def test_disk_names(name: str, disk: str) -> None:
    assert disk_name(name) == disk
    assert folder_name(disk) == name


def test_folder_dir() -> None:
    assert folder_dir("/m/u", "inbox") == "/m/u"
    assert folder_dir("/m/u", "Junk") == "/m/u/.Junk"
    assert folder_dir(pathlib.Path("/m/u"), "a/b.c") == "/m/u/.a.b\\2ec"
    with pytest.raises(InvalidFolderNameError):
        folder_dir("/m/u", "a//b")


def test_inbox_is_case_insensitive() -> None:
    assert normalize("inbox") == "INBOX"
    assert normalize("InBoX/Child") == "INBOX/Child"
    # only the first level is INBOX
    assert normalize("Work/inbox") == "Work/inbox"


@pytest.mark.parametrize(
    "bad", ["", "a//b", "/a", "a/", "a*", "50%", "tab\there", "nul\x00", "del\x7f", "x" * 300]
)
def test_normalize_refuses(bad: str) -> None:
    with pytest.raises(InvalidFolderNameError):
        normalize(bad)


def test_create_may_end_with_the_separator() -> None:
    assert normalize("Work/", trailing_separator=True) == "Work"
    with pytest.raises(InvalidFolderNameError):
        normalize("Work//", trailing_separator=True)


@pytest.mark.parametrize(
    "entry",
    [".", "..", "cur", ".a..b", ".&Jjo", ".a.", ".INBOX", ".inbox", ".bad\\2fslash"],
)
def test_entries_that_are_not_folders(entry: str) -> None:
    assert folder_name(entry) is None


_LEVEL = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/*%"),
    min_size=1,
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_LEVEL, min_size=1, max_size=4))
def test_disk_name_round_trip(levels: list[str]) -> None:
    try:
        name = normalize("/".join(levels))
    except InvalidFolderNameError:
        return
    if name == "INBOX":
        return
    disk = disk_name(name)
    assert "/" not in disk
    assert folder_name(disk) == name
    assert len(disk.split(".")) == len(levels) + 1


def test_subscriptions_file_is_dovecots_v2(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "subscriptions")
    write_subscriptions(path, ["INBOX", "Sent", "Archive/2024", "Entwürfe", "v1.2"])
    assert (tmp_path / "subscriptions").read_bytes() == (
        b"V\t2\n\nINBOX\nSent\nArchive\t2024\nEntw&APw-rfe\nv1\\2e2\n"
    )
    assert read_subscriptions(path) == ["INBOX", "Sent", "Archive/2024", "Entwürfe", "v1.2"]


def test_subscriptions_old_format_and_missing_file(tmp_path: pathlib.Path) -> None:
    assert read_subscriptions(str(tmp_path / "none")) == []
    (tmp_path / "subs").write_bytes(b"INBOX\nArchive.2024\nbad..name\n")
    assert read_subscriptions(str(tmp_path / "subs")) == ["INBOX", "Archive/2024"]


def test_subscriptions_tab_escapes(tmp_path: pathlib.Path) -> None:
    # Dovecot escapes SOH, TAB, CR, LF, NUL within a level; we never write them (names
    # with control characters are refused) but read them.
    (tmp_path / "subs").write_bytes(b"V\t2\n\nA\x011B\tC\n")
    assert read_subscriptions(str(tmp_path / "subs")) == []  # SOH is a control character
    (tmp_path / "subs").write_bytes(b"V\t2\n\nA\tB\nINBOX\n")
    assert read_subscriptions(str(tmp_path / "subs")) == ["A/B", "INBOX"]


def test_keywords_file(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "dovecot-keywords")
    assert read_keywords(path) == [None] * 26
    table: list[str | None] = [None] * 26
    table[0] = "$Forwarded"
    table[2] = "$Junk"
    write_keywords(path, table)
    assert (tmp_path / "dovecot-keywords").read_bytes() == b"0 $Forwarded\n2 $Junk\n"
    assert read_keywords(path) == table
    (tmp_path / "dovecot-keywords").write_bytes(b"0 a\nxx y\n27 z\n25 last\n\n")
    got = read_keywords(path)
    assert got[0] == "a"
    assert got[25] == "last"
    assert sum(k is not None for k in got) == 2
