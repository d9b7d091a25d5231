"""`sansmail-trio serve` started on broken state (sansmail/storage/repair.py): it starts,
logs one warning line per repair, and every message and every flag is there over IMAP
and POP3; with a users.json it cannot read and no good copy, it starts too, refuses
logins and defers mail to local users (451) until the file is mended."""

from __future__ import annotations

import imaplib
import os
import pathlib
import poplib
import re
import shutil
import signal
import smtplib
import subprocess
import time
from collections.abc import Iterator

import pytest
from trio_helpers import FAST_HASHER, wait_until_started, write_config

from sansmail.mail.address import MailboxId, parse_address
from sansmail.storage.generations import FILE_NAME as GENERATIONS
from sansmail.storage.maildir import FlagMode, MaildirImapStore, MaildirStore
from sansmail.storage.maildir._imapindex import INDEX_NAME
from sansmail.storage.queue import QueueStore, _format
from sansmail.storage.users import UserStore

HOST = "mx.example.test"
ALICE = MailboxId(domain="example.test", local="alice")
DEAD = 999_999_999  # above pid_max: a writer that is gone
# X-Id -> flags, per folder; set over the IMAP store before the damage.
FLAGS = {
    "INBOX": {1: (), 2: ("\\Seen",), 3: ("\\Seen", "\\Flagged"), 4: ("\\Answered", "Work")},
    "Archive": {5: ("\\Seen",), 6: ("\\Deleted",), 7: ()},
}
BROKEN = b'{"version": 2, "users": {"alice@example.test": {"addr'
LISTEN = {"smtp": "127.0.0.1:0", "imap": "127.0.0.1:0", "pop3": "127.0.0.1:0"}


def message(n: int) -> bytes:
    return b"Subject: message %d\r\nX-Id: %d\r\n\r\nbody %d\r\n" % (n, n, n)


@pytest.fixture
def server(tmp_path: pathlib.Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)


def serve(tmp_path: pathlib.Path, procs: list[subprocess.Popen[bytes]]) -> dict[str, int]:
    script = shutil.which("sansmail-trio")
    assert script is not None
    with (tmp_path / "serve.log").open("ab") as log:
        proc = subprocess.Popen([script, "serve"], cwd=tmp_path, stderr=log)
    procs.append(proc)
    return wait_until_started(proc, tmp_path / "serve.log")


def log_line(tmp_path: pathlib.Path, pattern: str) -> str:
    """The first line of the server's log matching `pattern`, waiting for it a while
    (the tmp/ pass and the queue recovery run beside the serving)."""
    deadline = time.monotonic() + 20
    while True:
        text = (tmp_path / "serve.log").read_text()
        found = re.search(f"^.*{pattern}.*$", text, re.MULTILINE)
        if found is not None:
            return found.group(0)
        assert time.monotonic() < deadline, f"no {pattern!r} in:\n{text}"
        time.sleep(0.05)


def populate(tmp_path: pathlib.Path) -> dict[str, int]:
    """Alice's folders as FLAGS says, through the IMAP store; their UIDVALIDITY."""
    data = tmp_path / "data"
    account = MaildirImapStore(data, hostname=HOST).account(ALICE)
    validity = {}
    for folder, messages in FLAGS.items():
        for n, flags in messages.items():
            uid = account.append(folder, message(n)).uid
            view = account.select(folder)
            if flags:
                view.store([uid], flags, FlagMode.ADD)
            view.close()
        validity[folder] = account.select(folder).uidvalidity
    account.close()
    return validity


def imap_folder(port: int, folder: str) -> tuple[int, dict[int, set[str]]]:
    """UIDVALIDITY and X-Id -> flags of `folder`, as an IMAP client sees them."""
    client = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    assert client.login("alice@example.test", "pw")[0] == "OK"
    assert client.select(folder, readonly=True)[0] == "OK"
    (validity,) = client.response("UIDVALIDITY")[1]
    typ, data = client.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (X-ID)])")
    assert typ == "OK"
    found = {}
    for item in data:
        if isinstance(item, tuple):
            flags = re.search(rb"FLAGS \(([^)]*)\)", item[0])
            assert flags is not None
            x_id = int(item[1].split(b":")[1])
            found[x_id] = set(flags.group(1).decode().split()) - {"\\Recent"}
    client.logout()
    return int(validity), found  # type: ignore[arg-type]


def test_a_server_started_on_broken_state_repairs_it_and_loses_nothing(
    tmp_path: pathlib.Path, server: list[subprocess.Popen[bytes]]
) -> None:
    write_config(tmp_path, listen=LISTEN)
    data = tmp_path / "data"
    UserStore(data / "users.json", hasher=FAST_HASHER).add(
        parse_address("alice@example.test"), "pw"
    )
    validity = populate(tmp_path)
    delivery = MaildirStore(data, hostname=HOST).begin([ALICE], prefix=b"")
    delivery.write(message(8))  # delivered, never seen over IMAP: in new/
    delivery.commit()
    root = data / "mail" / ALICE.domain / ALICE.local
    # The damage: INBOX's index garbage, Archive's gone, users.json cut short, the
    # generations file the wrong size, stray files a crashed writer left in tmp/, and
    # two half-written queue files.
    with open(root / INDEX_NAME, "r+b") as f:
        f.write(b"this is not an index" * 10)
    for suffix in ("", "-wal", "-shm"):
        (root / ".Archive" / (INDEX_NAME + suffix)).unlink(missing_ok=True)
    (data / "users.json").write_bytes(BROKEN)
    (data / GENERATIONS).write_bytes(b"junk")
    (root / "tmp" / f"1700000000.M1P{DEAD}Q1.{HOST}").write_bytes(b"Subject: half")
    (root / ".Sent" / "tmp" / f"1700000000.M2P{DEAD}A1.{HOST}").write_bytes(b"Subj")
    queue = QueueStore(data / "queue")
    writer = queue.begin("HALFW1")
    writer.write(b"Subject: never acknowledged\r\n\r\n" * 100)
    writer.flush()  # the placeholder header: a crash before the commit
    os.close(writer._fd)
    # A whole header whose content never reached the disk: looks committed, set aside.
    header = b"C 00000000000000099999 0badc0de\n"
    (data / "queue" / "CUTSHORT1.q").write_bytes(_format.MAGIC + header)

    ports = serve(tmp_path, server)

    text = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in text
    log_line(tmp_path, r"sansmail/repair\[\d+\]: .*users\.json: not valid JSON.*serving the 1 user")
    log_line(tmp_path, r"sansmail/repair\[\d+\]: .*generations was damaged \(4 octets")
    log_line(tmp_path, r"removed 2 stray file\(s\) from the Maildirs' tmp/ \(2 left by a crash")
    log_line(tmp_path, r"queue recovery: HALFW1\.q: removed \(half-written, never committed\)")
    log_line(tmp_path, r"queue recovery: CUTSHORT1\.q: set aside in corrupt/")
    assert os.listdir(root / "tmp") == []
    assert (data / "users.json").read_bytes() == BROKEN  # left for the admin

    for folder, messages in FLAGS.items():
        expected = {n: set(flags) for n, flags in messages.items()}
        if folder == "INBOX":
            expected[8] = set()
        new_validity, found = imap_folder(ports["imap"], folder)
        assert found == expected, folder  # every message, every flag
        assert new_validity > validity[folder]  # the UIDs were only in the index
    damaged = log_line(tmp_path, r"IMAP index \S+/alice/sansmail\.index\.sqlite was damaged")
    assert f"UIDVALIDITY {validity['INBOX']} -> " in damaged
    missing = log_line(tmp_path, r"IMAP index \S+/\.Archive/sansmail\.index\.sqlite was missing")
    assert f"UIDVALIDITY {validity['Archive']} -> " in missing

    pop = poplib.POP3("127.0.0.1", ports["pop3"], timeout=10)
    try:
        pop.user("alice@example.test")
        pop.pass_("pw")
        assert pop.stat()[0] == len(FLAGS["INBOX"]) + 1
        pop.quit()
    finally:
        pop.close()


def test_no_good_users_file_refuses_logins_and_defers_mail_until_mended(
    tmp_path: pathlib.Path, server: list[subprocess.Popen[bytes]]
) -> None:
    config = write_config(tmp_path, listen=LISTEN)
    data = tmp_path / "data"
    data.mkdir()
    (data / "users.json").write_bytes(BROKEN)
    ports = serve(tmp_path, server)
    log_line(tmp_path, r"users\.json: not valid JSON.*no users\.json\.bak.*deferred \(451\)")

    with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as smtp:
        smtp.ehlo("client.example")
        assert smtp.mail("someone@elsewhere.example")[0] == 250
        code, text = smtp.rcpt("alice@example.test")
        assert (code, text[:5]) == (451, b"4.3.0")  # deferred, never bounced
    client = imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=10)
    with pytest.raises(imaplib.IMAP4.error):
        client.login("alice@example.test", "pw")
    client.shutdown()

    # The CLI says what is wrong in one line and leaves the file alone.
    cli = subprocess.run(
        ["sansmail-trio", "--config", str(config), "user", "list"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert cli.returncode == 1
    assert cli.stderr.count("\n") == 1
    assert "not valid JSON" in cli.stderr
    assert (data / "users.json").read_bytes() == BROKEN

    # Mended (here: replaced by a new file) while the server runs: in force at once.
    (data / "users.json").unlink()
    UserStore(data / "users.json", hasher=FAST_HASHER).add(
        parse_address("alice@example.test"), "pw"
    )
    deadline = time.monotonic() + 10
    while True:
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as smtp:
            smtp.ehlo("client.example")
            smtp.mail("someone@elsewhere.example")
            code, _ = smtp.rcpt("alice@example.test")
        if code == 250 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert code == 250
