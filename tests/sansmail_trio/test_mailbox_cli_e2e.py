"""``sansmail-trio mailbox`` against a running server, two processes: a real
``sansmail-trio serve`` takes mail over SMTP (smtplib) and serves it over IMAP
(imaplib), and the command, run as its own process beside it, must agree with IMAP:
``mailbox status --json`` gives exactly IMAP STATUS's numbers, ``mailbox expunge
--before`` removes mail an IMAP session has selected and its NOOP hears EXPUNGE,
``mailbox resync`` of a damaged index leaves IMAP the same UIDVALIDITY and UIDs, and of a
deleted one the same messages and flags under a greater UIDVALIDITY."""

from __future__ import annotations

import contextlib
import datetime
import imaplib
import json
import os
import pathlib
import re
import shutil
import smtplib
import sqlite3
import subprocess
import sys
from collections.abc import Iterator

import imapclient
import pytest
from trio_helpers import FAST_HASHER, started_lines, wait_until_started

from sansmail.mail.address import parse_address
from sansmail.storage.users import UserStore

USER = "alice@example.test"
OTHER = "bob@example.test"
INDEX = "sansmail.index.sqlite"


class Server:
    """``sansmail-trio serve`` in `folder` (SMTP and IMAP on loopback), and the CLI."""

    def __init__(self, folder: pathlib.Path) -> None:
        self.folder = folder
        self.env = dict(os.environ)
        # The checkout under test, whatever the installed script's path says.
        root = str(pathlib.Path(__file__).resolve().parents[2])
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, self.env.get("PYTHONPATH")]))
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}

    def start(self) -> None:
        script = shutil.which("sansmail-trio")
        assert script is not None
        log = self.folder / "serve.log"
        seen = started_lines(log)
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, script, "serve"], cwd=self.folder, stderr=out, env=self.env
            )
        self.ports = wait_until_started(self.proc, log, seen=seen)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def cli(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sansmail_trio", *argv],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def json(self, *argv: str) -> object:
        done = self.cli(*argv, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def send(self, subject: str) -> None:
        message = f"From: carol@far.test\r\nTo: {USER}\r\nSubject: {subject}\r\n\r\nHello\r\n"
        with smtplib.SMTP("127.0.0.1", self.ports["smtp"], timeout=10) as client:
            refused = client.sendmail("carol@far.test", [USER], message.encode())
        assert refused == {}  # 250 after DATA: in the Maildir already

    def imap(self) -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.ports["imap"], timeout=10)
        client.login(USER, "secret")
        return client

    def maildir(self, folder: str = "INBOX") -> pathlib.Path:
        top = self.folder / "data" / "mail" / "example.test" / "alice"
        return top if folder == "INBOX" else top / f".{folder}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("mailbox-cli")
    (folder / "sansmail.toml").write_text(
        'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n'
        '[listen]\nsmtp = "127.0.0.1:0"\nimap = "127.0.0.1:0"\n'
        '[dns]\nnameservers = ["127.0.0.1:9"]\n'
        '[antispam]\nspf = "off"\ndkim = "off"\ndmarc = "off"\n'
    )
    users = UserStore(folder / "data" / "users.json", hasher=FAST_HASHER)
    users.add(parse_address(USER), "secret")
    users.add(parse_address(OTHER), "secret")
    running = Server(folder)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def uids_and_flags(client: imaplib.IMAP4, folder: str) -> tuple[int, dict[int, str]]:
    """UIDVALIDITY and UID -> FLAGS of `folder`, as an IMAP client reads them."""
    typ, _ = client.select(f'"{folder}"', readonly=True)
    assert typ == "OK"
    (validity,) = client.response("UIDVALIDITY")[1]
    typ, data = client.uid("FETCH", "1:*", "(FLAGS)")
    assert typ == "OK"
    found = {}
    for line in data:
        if line is None:
            continue
        text = line.decode() if isinstance(line, bytes) else line[0].decode()
        match = re.search(r"UID (\d+) FLAGS \(([^)]*)\)|FLAGS \(([^)]*)\) UID (\d+)", text)
        assert match is not None, text
        if match[1]:
            found[int(match[1])] = " ".join(sorted(match[2].split()))
        else:
            found[int(match[4])] = " ".join(sorted(match[3].split()))
    client.close()
    return int(validity), found


# -- list and status ---------------------------------------------------------------------


def test_list_shows_the_folders_imap_lists(server: Server) -> None:
    listed = server.json("mailbox", "list", USER)
    client = server.imap()
    try:
        client.create("Projects")
        listed = server.json("mailbox", "list", USER)
        typ, data = client.list()
        assert typ == "OK"
    finally:
        client.logout()
    imap_names = {re.search(rb'"/" "?([^"]*)"?$', line)[1].decode() for line in data}
    assert isinstance(listed, list)
    assert {f["name"] for f in listed} == imap_names
    by_name = {f["name"]: f for f in listed}
    assert by_name["Sent"] == {"name": "Sent", "subscribed": True, "special_use": "\\Sent"}
    assert by_name["Projects"]["subscribed"] is False


def test_status_is_exactly_imap_status(server: Server) -> None:
    for n in range(3):
        server.send(f"status {n}")
    client = server.imap()
    try:
        client.select("INBOX")
        client.uid("STORE", "1:*", "+FLAGS", "(\\Seen)")
        typ, data = client.search(None, "ALL")
        last = data[0].split()[-1].decode()
        client.store(last, "-FLAGS", "(\\Seen)")
        client.close()
        server.send("status unseen")  # arrived since the session looked
        items = "MESSAGES UNSEEN RECENT UIDNEXT UIDVALIDITY HIGHESTMODSEQ SIZE"
        typ, data = client.status("INBOX", f"({items})")
        assert typ == "OK"
    finally:
        client.logout()
    pairs = re.search(rb"\((.*)\)", data[0])[1].split()
    imap = {pairs[i].decode().lower(): int(pairs[i + 1]) for i in range(0, len(pairs), 2)}
    (got,) = server.json("mailbox", "status", USER, "INBOX")
    assert got["name"] == "INBOX"
    assert got["messages"] == imap["messages"] >= 4
    assert got["unseen"] == imap["unseen"] == 2
    assert got["recent"] == imap["recent"]
    assert got["vsize"] == imap["size"] > 0
    for key in ("uidvalidity", "uidnext", "highestmodseq"):
        assert got[key] == imap[key], key
    # The table says the same.
    table = server.cli("mailbox", "status", USER)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == [
        "FOLDER", "MESSAGES", "UNSEEN", "RECENT", "VSIZE", "UIDVALIDITY", "UIDNEXT",
        "HIGHESTMODSEQ",
    ]  # fmt: skip
    inbox = next(row.split() for row in rows if row.startswith("INBOX "))
    keys = ("messages", "unseen", "recent", "vsize", "uidvalidity", "uidnext", "highestmodseq")
    assert inbox[1:] == [str(got[k]) for k in keys]


# -- expunge -----------------------------------------------------------------------------


def test_expunge_before_is_heard_by_a_selected_session(server: Server) -> None:
    watcher = server.imap()
    try:
        watcher.create("Old")
        for day in ("01-Jan-2020", "02-Jan-2020", "03-Jan-2024"):
            message = f"Subject: from {day}\r\n\r\nold\r\n".encode()
            typ, _ = watcher.append("Old", "(\\Seen)", f'"{day} 12:00:00 +0000"', message)
            assert typ == "OK"
        typ, data = watcher.select("Old")
        assert (typ, data) == ("OK", [b"3"])
        done = server.cli("mailbox", "expunge", USER, "Old", "--before", "2024-01-01")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"expunged 2 messages from Old of {USER} (received before")
        typ, _ = watcher.noop()
        assert typ == "OK"
        # Messages 1 and 2, in whichever order the server numbers them (2 then 1 here).
        assert sorted(watcher.response("EXPUNGE")[1]) in ([b"1", b"1"], [b"1", b"2"])
        typ, data = watcher.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert len([item for item in data if isinstance(item, tuple)]) == 1
        assert b"03-Jan-2024" in data[0][1]
    finally:
        watcher.logout()
    # Gone from the disk, not only from the index.
    cur = server.maildir("Old") / "cur"
    assert len(os.listdir(cur)) == 1
    after = server.json("mailbox", "expunge", USER, "Old", "--before", "30d")
    assert after["expunged"] == 1


def test_an_idling_session_hears_the_expunge_at_once(server: Server) -> None:
    # As --help says: a client idling on the folder is told without sending a command.
    client = imapclient.IMAPClient("127.0.0.1", server.ports["imap"], ssl=False, timeout=10)
    try:
        client.login(USER, "secret")
        client.create_folder("Idle")
        client.append("Idle", b"Subject: old\r\n\r\nx\r\n", msg_time=datetime.datetime(2020, 1, 1))
        client.append("Idle", b"Subject: new\r\n\r\nx\r\n")
        client.select_folder("Idle")
        client.idle()
        done = server.cli("mailbox", "expunge", USER, "Idle", "--before", "2021-01-01")
        assert done.returncode == 0, done.stderr
        seen = client.idle_check(timeout=10)  # returns at the first response
        client.idle_done()
        assert (1, b"EXPUNGE") in seen
        assert client.search(["ALL"]) == [2]  # UIDs: the new one is left
    finally:
        client.logout()


# -- resync ------------------------------------------------------------------------------


def damage(db: pathlib.Path) -> None:
    """Break the index's modseq index page: the tables still read, SQLite's integrity
    check fails."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        (rootpage,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'messages_modseq'"
        ).fetchone()
    with db.open("r+b") as f:
        f.seek((rootpage - 1) * page)
        f.write(b"\xa5" * page)


def fill(server: Server, folder: str) -> tuple[int, dict[int, str]]:
    """Three messages in `folder`, one expunged before two more (so UIDs have a gap),
    flags on two; what IMAP shows then."""
    client = server.imap()
    try:
        client.create(folder)
        for n in range(5):
            client.append(folder, None, None, f"Subject: {folder} {n}\r\n\r\nx\r\n".encode())
        client.select(folder)
        client.store("1", "+FLAGS", "(\\Deleted)")
        client.expunge()
        client.store("1", "+FLAGS", "(\\Seen)")
        client.store("3", "+FLAGS", "(\\Flagged \\Answered)")
        client.close()
        return uids_and_flags(client, folder)
    finally:
        client.logout()


def test_resync_of_a_damaged_index_keeps_the_uids_imap_sees(server: Server) -> None:
    before = fill(server, "Damaged")
    damage(server.maildir("Damaged") / INDEX)
    done = server.cli("mailbox", "resync", USER, "Damaged")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"Damaged: rebuilt: 4 messages, UIDVALIDITY {before[0]} kept\n"
    assert done.stderr == ""  # the store's repair log line is for a server's log
    client = server.imap()
    try:
        assert uids_and_flags(client, "Damaged") == before
    finally:
        client.logout()


def test_resync_of_a_deleted_index_keeps_messages_and_flags(server: Server) -> None:
    validity, before = fill(server, "Lost")
    for suffix in ("", "-wal", "-shm"):
        (server.maildir("Lost") / (INDEX + suffix)).unlink(missing_ok=True)
    (result,) = server.json("mailbox", "resync", USER, "Lost")
    assert result["outcome"] == "renumbered"
    assert result["uidvalidity_before"] == validity
    client = server.imap()
    try:
        new_validity, after = uids_and_flags(client, "Lost")
    finally:
        client.logout()
    # The UIDs were in the index only: new ones, under a greater UIDVALIDITY, so that
    # clients drop their caches; every message and its flags are still there.
    assert new_validity == result["uidvalidity"] > validity
    assert sorted(after.values()) == sorted(before.values())
    assert sorted(after) == [1, 2, 3, 4]


def test_resync_of_every_folder(server: Server) -> None:
    listed = server.json("mailbox", "list", USER)
    assert isinstance(listed, list)
    # A folder no session opened yet has no index: "made"; the second time, "checked".
    for allowed in ({"checked", "made"}, {"checked"}):
        done = server.cli("mailbox", "resync", USER)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert [line.split(":")[0] for line in lines] == [f["name"] for f in listed]
        assert {line.split(": ")[1] for line in lines} <= allowed, lines


# -- user errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["status", "nobody@example.test"], "no such user: nobody@example.test"),
        (["status", USER, "Nowhere"], f"{USER}: no folder 'Nowhere'"),
        (["resync", USER, "Nowhere"], f"{USER}: no folder 'Nowhere'"),
        (["expunge", USER, "Nowhere", "--before", "1d"], f"{USER}: no folder 'Nowhere'"),
        (["expunge", USER, "INBOX", "--before", "yesterday"], "--before 'yesterday'"),
        (["list", "someone@far.test"], "far.test is not one of the configured domains"),
    ],
)
def test_user_errors_are_one_line(server: Server, argv: list[str], message: str) -> None:
    done = server.cli("mailbox", *argv)
    assert done.returncode == 1
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"sansmail-trio: mailbox {argv[0]}: ")
    assert message in line


@pytest.mark.parametrize("action", ["list", "status", "resync", "expunge"])
def test_help_has_an_example(server: Server, action: str) -> None:
    done = server.cli("mailbox", action, "--help")
    assert done.returncode == 0
    assert f"sansmail-trio mailbox {action} alice@example.test" in done.stdout
    assert "examples:" in done.stdout


def test_a_new_users_status_needs_no_delivery_first(server: Server) -> None:
    # The command makes the account as a first IMAP login would.
    found = server.json("mailbox", "status", OTHER, "INBOX")
    assert found == [
        {
            "name": "INBOX",
            "messages": 0,
            "unseen": 0,
            "recent": 0,
            "deleted": 0,
            "vsize": 0,
            "uidvalidity": found[0]["uidvalidity"],
            "uidnext": 1,
            "highestmodseq": 1,
        }
    ]
