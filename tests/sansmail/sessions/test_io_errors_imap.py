"""A full or failing disk under an IMAP conversation (faults injected in-process, see
`io_faults`): APPEND, COPY, MOVE and STORE are answered NO [OVERQUOTA] (full) or NO
[SERVERBUG] (failing), never OK nor a BYE; nothing half-done is left (no file without
its row that the next sync would index as a message the client was told was not
stored, no row without its file, nothing in tmp/); SELECT, FETCH and SEARCH go on being
served while SQLite cannot write; and once the disk has room again the same
conversation carries on."""

from __future__ import annotations

import errno
import pathlib
import re
import sqlite3
import sys
from collections.abc import Callable
from typing import Any

import pytest
from io_faults import Faults, FullConnection

sys.path.insert(0, str(pathlib.Path(__file__).with_name("imapd")))
from test_conversation import Driver, logged_in, make_service

MESSAGE = b"From: a@example.org\r\nSubject: hi\r\n\r\nhello\r\n"
FULL = b"NO [OVERQUOTA] Not enough disk space"
FAILING = b"NO [SERVERBUG]"


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> Faults:
    return Faults(monkeypatch)


class Sqlite:
    """Whether SQLite's commits fail as on a full disk (`on`), for which files."""

    def __init__(self) -> None:
        self.on = False
        self.where: Callable[[str], bool] = lambda path: True


@pytest.fixture
def full_sqlite(monkeypatch: pytest.MonkeyPatch) -> Sqlite:
    """Every SQLite connection opened from here on fails its write COMMITs while `on`
    (`FullConnection`), as SQLite does on a full disk."""
    state = Sqlite()

    class Full(FullConnection):
        full = staticmethod(lambda path: state.on and state.where(path))

    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        kwargs.setdefault("factory", Full)
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)
    return state


def _append(driver: Driver, tag: str, content: bytes = MESSAGE) -> bytes:
    driver.feed(f"{tag} APPEND INBOX {{{len(content)}}}\r\n".encode())
    return driver.feed(content + b"\r\n").split(b"\r\n")[-2]


def _messages(root: pathlib.Path, folder: str = "") -> dict[str, list[str]]:
    base = root / "mail" / "example.test" / "alice" / folder
    return {sub: sorted(p.name for p in (base / sub).iterdir()) for sub in ("tmp", "new", "cur")}


def _count(driver: Driver, tag: str, folder: str = "INBOX") -> int:
    lines = driver.lines(f"{tag} STATUS {folder} (MESSAGES)".encode())
    match = re.search(rb"MESSAGES (\d+)", lines[0])
    assert match, lines
    return int(match.group(1))


def _where(root: pathlib.Path) -> Callable[[str], bool]:
    mail = str(root / "mail")
    return lambda path: path.startswith(mail)


@pytest.mark.parametrize(("code", "answer"), [(errno.ENOSPC, FULL), (errno.EIO, FAILING)])
def test_append_that_cannot_write_is_no_and_leaves_nothing(
    tmp_path: pathlib.Path, faults: Faults, code: int, answer: bytes
) -> None:
    driver = logged_in(make_service(tmp_path))
    assert _append(driver, "a1").startswith(b"a1 OK [APPENDUID")
    faults.fail(code, where=_where(tmp_path))
    assert _append(driver, "a2").startswith(b"a2 " + answer)
    assert _append(driver, "a3", MESSAGE * 1000).startswith(b"a3 " + answer)
    assert faults.hits
    faults.heal()
    assert len(_messages(tmp_path)["cur"]) == 1
    assert _messages(tmp_path)["tmp"] == []
    assert _count(driver, "a4") == 1
    assert _append(driver, "a5").startswith(b"a5 OK [APPENDUID")
    assert _count(driver, "a6") == 2
    assert any("APPEND failed" in line for line in driver.log_lines)


def test_append_whose_index_row_cannot_be_written_leaves_no_file(
    tmp_path: pathlib.Path, full_sqlite: Sqlite
) -> None:
    driver = logged_in(make_service(tmp_path))
    assert _append(driver, "a1").startswith(b"a1 OK [APPENDUID 1")
    full_sqlite.on = True
    assert _append(driver, "a2") == b"a2 " + FULL
    full_sqlite.on = False
    # A file left in cur/ would be indexed now, as a message the client was told NO for.
    assert _count(driver, "a3") == 1
    assert len(_messages(tmp_path)["cur"]) == 1
    assert re.match(rb"a4 OK \[APPENDUID \d+ 2\]", _append(driver, "a4"))


def test_reads_go_on_while_sqlite_cannot_write(tmp_path: pathlib.Path, full_sqlite: Sqlite) -> None:
    driver = logged_in(make_service(tmp_path))
    for n in range(3):
        assert _append(driver, f"a{n}").startswith(f"a{n} OK".encode())
    full_sqlite.on = True
    lines = driver.lines(b"b1 SELECT INBOX")
    assert lines[-1].startswith(b"b1 OK [READ-WRITE]"), lines
    assert b"* 3 EXISTS" in lines
    # A body fetch sets no \Seen it cannot store, but the body is served.
    answer = driver.feed(b"b2 FETCH 1:3 (BODY[] BODYSTRUCTURE ENVELOPE)\r\n")
    assert answer.count(b"Subject: hi") == 3
    assert answer.endswith(b"b2 OK FETCH completed\r\n")
    assert b"\\Seen" not in answer
    assert driver.lines(b"b3 SEARCH SUBJECT hi")[0] == b"* SEARCH 1 2 3", driver.log_lines
    assert driver.lines(b"b4 SORT (SUBJECT) UTF-8 ALL")[0] == b"* SORT 1 2 3"
    assert driver.lines(b"b5 STORE 1 +FLAGS (\\Flagged)") == [b"b5 " + FULL]
    assert driver.lines(b"b6 NOOP")[-1] == b"b6 OK NOOP completed"
    full_sqlite.on = False
    lines = driver.lines(b"b7 STORE 1 +FLAGS (\\Flagged)")
    assert lines[-1] == b"b7 OK STORE completed"
    lines = driver.lines(b"b8 FETCH 1:3 FLAGS")
    # The refused STORE and the \Seen of the body fetch left nothing behind.
    assert lines[:3] == [
        b"* 1 FETCH (FLAGS (\\Flagged))",
        b"* 2 FETCH (FLAGS ())",
        b"* 3 FETCH (FLAGS ())",
    ]


@pytest.mark.parametrize("verb", ["COPY", "MOVE"])
def test_copy_and_move_that_cannot_write_change_nothing(
    tmp_path: pathlib.Path, faults: Faults, full_sqlite: Sqlite, verb: str
) -> None:
    driver = logged_in(make_service(tmp_path))
    assert _append(driver, "a1").startswith(b"a1 OK")
    assert _append(driver, "a2").startswith(b"a2 OK")
    assert driver.lines(b"a3 SELECT INBOX")[-1].startswith(b"a3 OK")
    before = _messages(tmp_path), _messages(tmp_path, ".Archive")
    # The files: a link or rename into the Archive fails.
    faults.fail(errno.ENOSPC, where=lambda path: "/.Archive/" in path)
    assert driver.lines(f"b1 {verb} 1:2 Archive".encode()) == [b"b1 " + FULL]
    faults.heal()
    assert (_messages(tmp_path), _messages(tmp_path, ".Archive")) == before
    # The rows: the Archive's index cannot take them.
    full_sqlite.on = True
    assert driver.lines(f"b2 {verb} 1:2 Archive".encode()) == [b"b2 " + FULL]
    full_sqlite.on = False
    assert (_messages(tmp_path), _messages(tmp_path, ".Archive")) == before
    assert _count(driver, "b3", "Archive") == 0
    lines = driver.lines(f"b4 {verb} 1:2 Archive".encode())
    assert lines[-1].startswith(b"b4 OK"), lines
    assert _count(driver, "b5", "Archive") == 2
    assert _count(driver, "b6") == (2 if verb == "COPY" else 0)


def test_a_move_whose_source_rows_cannot_be_deleted_is_done(
    tmp_path: pathlib.Path, full_sqlite: Sqlite
) -> None:
    # The files moved and the Archive's rows are in: the MOVE happened. The INBOX rows
    # a full disk kept are rows without files, which its next sync expunges.
    driver = logged_in(make_service(tmp_path))
    for n in range(2):
        assert _append(driver, f"a{n}").startswith(f"a{n} OK".encode())
    assert driver.lines(b"a3 SELECT INBOX")[-1].startswith(b"a3 OK")
    full_sqlite.where = lambda path: "/.Archive/" not in path
    full_sqlite.on = True
    lines = driver.lines(b"b1 MOVE 1 Archive")
    assert lines[0].startswith(b"* OK [COPYUID "), lines
    assert lines[-1] == b"b1 OK MOVE completed"
    full_sqlite.on = False
    assert driver.lines(b"b2 NOOP")[0] == b"* 1 EXPUNGE"
    assert _count(driver, "b3", "Archive") == 1
    assert len(_messages(tmp_path)["cur"]) == 1
    assert len(_messages(tmp_path, ".Archive")["cur"]) == 1
