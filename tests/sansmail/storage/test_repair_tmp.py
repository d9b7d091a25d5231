"""The start pass over the Maildirs' ``tmp/`` (`sansmail.storage.repair`): files a
crashed process left and files older than 36 hours go, with one log line; a live
process's files, other hosts' young files and deleted folders on their way out stay."""

from __future__ import annotations

import logging
import os
import pathlib
import time

import pytest

from sansmail.mail.address import MailboxId
from sansmail.storage.maildir import MaildirStore
from sansmail.storage.repair import TMP_MAX_AGE, TmpCleanup, clean_maildir_tmp, repair_at_start

HOST = "mx.example.test"
ALICE = MailboxId(domain="example.test", local="alice")
DEAD = 999_999_999  # above pid_max: never a running process


def maildir(data_dir: pathlib.Path) -> pathlib.Path:
    """Alice's Maildir, made by a delivery (with one message in new/)."""
    delivery = MaildirStore(data_dir, hostname=HOST).begin([ALICE], prefix=b"")
    delivery.write(b"Subject: kept\r\n\r\nbody\r\n")
    delivery.commit()
    root = data_dir / "mail" / ALICE.domain / ALICE.local
    for sub in ("tmp", "new", "cur"):
        (root / ".Sent" / sub).mkdir(parents=True, exist_ok=True)
    return root


def stray(tmp: pathlib.Path, name: str, *, age: float = 0.0) -> pathlib.Path:
    path = tmp / name
    path.write_bytes(b"Subject: half\r\n")
    if age:
        then = time.time() - age
        os.utime(path, (then, then))
    return path


def test_files_of_a_crashed_process_and_old_files_go(tmp_path: pathlib.Path) -> None:
    root = maildir(tmp_path)
    crashed = stray(root / "tmp", f"1700000000.M1P{DEAD}Q1.{HOST}")
    appended = stray(root / ".Sent" / "tmp", f"1700000000.M2P{DEAD}A7.{HOST}")
    live = stray(root / "tmp", f"1700000000.M3P{os.getpid()}Q2.{HOST}")
    other_host = stray(root / "tmp", f"1700000000.M4P{DEAD}Q3.elsewhere.test")
    foreign = stray(root / "tmp", "some-tool-file")
    (root / "tmp" / "sansmail-deleted.x").mkdir()  # a folder being deleted
    new = sorted(os.listdir(root / "new"))

    found = clean_maildir_tmp(tmp_path, hostname=HOST, now=time.time() + 1)
    assert found == TmpCleanup(directories=2, crashed=2, old=0, failed=0)
    assert not crashed.exists()
    assert not appended.exists()
    assert live.exists()
    assert other_host.exists()
    assert foreign.exists()
    assert (root / "tmp" / "sansmail-deleted.x").is_dir()
    assert sorted(os.listdir(root / "new")) == new  # the mail itself is never touched

    # 36 hours on, every file left goes, whoever wrote it (the ctime is now too: the
    # pass is told it runs later instead).
    later = time.time() + TMP_MAX_AGE + 60
    found = clean_maildir_tmp(tmp_path, hostname=HOST, now=later, alive=lambda pid: True)
    assert (found.crashed, found.old) == (0, 3)
    assert sorted(os.listdir(root / "tmp")) == ["sansmail-deleted.x"]
    assert sorted(os.listdir(root / "new")) == new


def test_a_young_file_of_a_live_process_stays(tmp_path: pathlib.Path) -> None:
    root = maildir(tmp_path)
    path = stray(root / "tmp", f"1700000000.M1P{DEAD}Q1.{HOST}")
    found = clean_maildir_tmp(tmp_path, hostname=HOST, alive=lambda pid: True)
    assert found.removed == 0
    assert path.exists()


def test_an_old_mtime_alone_is_not_enough(tmp_path: pathlib.Path) -> None:
    # A copy sets its tmp file's mtime to the source's (days ago) just before the
    # rename: its ctime says it is new.
    root = maildir(tmp_path)
    path = stray(root / "tmp", "1600000000.M1P1A1.other", age=10 * TMP_MAX_AGE)
    assert clean_maildir_tmp(tmp_path, hostname=HOST).removed == 0
    assert path.exists()


def test_the_start_pass_logs_one_line(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = maildir(tmp_path)
    for n in range(3):
        stray(root / "tmp", f"1700000000.M{n}P{DEAD}Q{n}.{HOST}")
    with caplog.at_level(logging.WARNING, logger="sansmail.repair"):
        assert repair_at_start(tmp_path, hostname=HOST).crashed == 3
    (line,) = [r for r in caplog.records if r.name == "sansmail.repair"]
    assert line.levelno == logging.WARNING
    assert "removed 3 stray file(s) from the Maildirs' tmp/ (3 left by a crash" in line.message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sansmail.repair"):
        assert repair_at_start(tmp_path, hostname=HOST).removed == 0
    assert caplog.records == []  # nothing found, nothing said


def test_no_mail_directory_at_all(tmp_path: pathlib.Path) -> None:
    assert repair_at_start(tmp_path / "nothing", hostname=HOST) == TmpCleanup()
