"""A real full disk: `sansmail-trio serve` with its data_dir on a small tmpfs of the
test's own (root only: mount(8)), real smtplib, imaplib and poplib clients.

Filled up, the server answers SMTP DATA 452 4.3.1 (also when the message is spilled to
disk mid-DATA), IMAP APPEND NO [OVERQUOTA], and never 250 nor OK for a message it did
not store; it keeps serving IMAP SELECT, FETCH and SEARCH and POP3 RETR of the mail it
has; once space returns it recovers by itself (the next DATA gets 250); and nothing is
corrupt: every message file is whole, tmp/ and the queue hold nothing, the IMAP index
agrees with the files and passes SQLite's integrity check."""

from __future__ import annotations

import contextlib
import email
import imaplib
import os
import pathlib
import poplib
import re
import signal
import smtplib
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from trio_helpers import FAST_HASHER, wait_until_started

from sansmail.mail.address import parse_address
from sansmail.storage.users import UserStore

ALICE = "alice@example.test"
SIZE = 4 * 1024 * 1024


def _message(subject: str, body: bytes = b"hello\r\n") -> bytes:
    return f"From: a@example.org\r\nSubject: {subject}\r\n\r\n".encode() + body


def _free(path: pathlib.Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _fill(data: pathlib.Path, leave: int = 0) -> None:
    """Fill the file system of `data` up to `leave` octets free (then it is full)."""
    filler = data / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        chunk = b"\0" * 4096
        while _free(data) > leave:
            try:
                os.write(fd, chunk[: max(1, min(4096, _free(data) - leave))])
            except OSError:
                break
    finally:
        os.close(fd)


@pytest.fixture
def small_fs(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs of its own")
    data = tmp_path / "data"
    data.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0700", "tmpfs", str(data)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield data
    finally:
        for _ in range(50):
            if (
                subprocess.run(["umount", str(data)], capture_output=True, check=False).returncode
                == 0
            ):
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(data)], check=False)


@pytest.fixture
def server(small_fs: pathlib.Path, tmp_path: pathlib.Path) -> Iterator[dict[str, int]]:
    """The ports of a server on `small_fs`; its log is ``serve.log`` in `tmp_path`."""
    (tmp_path / "sansmail.toml").write_text(
        'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n'
        '[listen]\nsmtp = "127.0.0.1:0"\nimap = "127.0.0.1:0"\npop3 = "127.0.0.1:0"\n'
        '[dns]\nnameservers = ["127.0.0.1:9"]\n'
        '[antispam]\nspf = "off"\ndkim = "off"\ndmarc = "off"\n'
    )
    UserStore(small_fs / "users.json", hasher=FAST_HASHER).add(parse_address(ALICE), "pw")
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        # A session of its own, so that every process of the server goes at the end.
        proc = subprocess.Popen(
            [sys.executable, "-m", "sansmail_trio", "serve"],
            cwd=tmp_path,
            stderr=err,
            start_new_session=True,
        )
    try:
        # The certificate and the SRS key are written at the first start, with room.
        yield wait_until_started(proc, log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # any child left behind
        assert "Traceback" not in log.read_text(), log.read_text()


def _send(port: int, message: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        try:
            client.sendmail("a@example.org", [ALICE], message)
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code, exc.smtp_error
    return 250, b""


def _imap(port: int) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    client.login(ALICE, "pw")
    return client


def _no_overquota(answer: tuple[str, list[object]]) -> None:
    typ, data = answer
    assert typ == "NO", answer
    assert isinstance(data[0], bytes)
    assert data[0].startswith(b"[OVERQUOTA]"), answer


def test_a_full_disk_is_a_temporary_error_and_nothing_is_corrupt(
    small_fs: pathlib.Path, server: dict[str, int], tmp_path: pathlib.Path
) -> None:
    smtp, imap_port, pop3 = server["smtp"], server["imap"], server["pop3"]
    for n in range(3):
        assert _send(smtp, _message(f"before {n}"))[0] == 250
    client = _imap(imap_port)
    assert client.select("INBOX") == ("OK", [b"3"])
    client.logout()

    _fill(small_fs)
    assert _free(small_fs) == 0
    # SMTP: never 250 for what cannot be stored.
    assert _send(smtp, _message("while full")) == (452, b"4.3.1 Insufficient system storage")
    # IMAP: reads are served, writes refused with OVERQUOTA, the session goes on.
    client = _imap(imap_port)
    assert client.select("INBOX") == ("OK", [b"3"])
    typ, data = client.fetch("1:3", "(BODY[] BODYSTRUCTURE)")
    assert typ == "OK"
    assert sum(b"Subject: before" in part[1] for part in data if isinstance(part, tuple)) == 3
    assert client.search(None, "SUBJECT", "before") == ("OK", [b"1 2 3"])
    _no_overquota(client.append("INBOX", None, None, _message("appended while full")))
    for answer in (client.store("2", "+FLAGS", "(\\Flagged)"), client.copy("3", "Archive")):
        # The index's write-ahead log may still have room for a small write; the
        # Maildir's files have none.
        if answer[0] != "OK":
            _no_overquota(answer)
    assert client.noop()[0] == "OK"
    client.logout()
    # POP3: RETR of what is there.
    pop = poplib.POP3("127.0.0.1", pop3, timeout=30)
    pop.user(ALICE)
    assert pop.pass_("pw").startswith(b"+OK")
    assert pop.stat()[0] == 3
    assert any(b"Subject: before 0" in line for line in pop.retr(1)[1])
    assert pop.quit().startswith(b"+OK")

    # A message that fails mid-DATA, spilled to disk past 1 MiB: its files go at once.
    os.truncate(small_fs / "filler", os.path.getsize(small_fs / "filler") - 512 * 1024)
    room = _free(small_fs)
    assert room < 1024 * 1024
    big = _message("big", (b"y" * 998 + b"\r\n") * 1500)
    assert _send(smtp, big) == (452, b"4.3.1 Insufficient system storage")
    assert _free(small_fs) >= room - 64 * 1024  # no tmp file kept it
    assert "cannot write the message: [Errno 28]" in (tmp_path / "serve.log").read_text()

    # Space returns: the server recovers by itself.
    (small_fs / "filler").unlink()
    assert _send(smtp, _message("after")) == (250, b"")
    assert _send(smtp, big) == (250, b"")
    client = _imap(imap_port)
    assert client.append("INBOX", None, None, _message("appended after"))[0] == "OK"
    typ, data = client.select("INBOX")
    assert typ == "OK"
    exists = int(data[0])
    subjects = client.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[1]
    client.logout()
    _check_nothing_corrupt(small_fs, exists, subjects)


def _check_nothing_corrupt(data: pathlib.Path, exists: int, subjects: list[object]) -> None:
    inbox = data / "mail" / "example.test" / "alice"
    files = [p for sub in ("new", "cur") for p in (inbox / sub).iterdir()]
    # 3 before, 1 after, the big one, 1 appended after: none of those refused.
    names = sorted(
        re.sub(rb"\s+", b" ", part[1]).strip() for part in subjects if isinstance(part, tuple)
    )
    assert exists == len(files) == 6, (names, files)
    for path in files:
        raw = path.read_bytes()
        size = int(re.search(r",S=(\d+)", path.name).group(1))  # type: ignore[union-attr]
        assert len(raw) == size, path  # whole, as its name says
        message = email.message_from_bytes(raw)
        assert message["Subject"] is not None
        assert "while full" not in message["Subject"], path
    for maildir in [inbox, *inbox.glob(".*/")]:
        if (maildir / "tmp").is_dir():
            assert list((maildir / "tmp").iterdir()) == [], maildir
    assert [p for p in (data / "queue").iterdir() if p.suffix == ".q"] == []
    # The index agrees with the files, and SQLite finds it sound.
    with contextlib.closing(sqlite3.connect(inbox / "sansmail.index.sqlite")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = {
            name.partition(":")[0].rpartition("/")[2]
            for (name,) in conn.execute("SELECT name FROM messages")
        }
    assert rows == {p.name.partition(":")[0] for p in files}
