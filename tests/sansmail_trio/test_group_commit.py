"""Group commit end to end: many smtplib clients at once against a real server, so that
messages ending together share their directory syncs, and still no ``250`` leaves
before its own message's file and directory are synced; and ``kill -9`` in the middle
of such deliveries loses no acknowledged message and shows no half-written one.

The syncs are Maildir's (its files and directories); the ``kill -9`` test runs on both
storage backends, reading alice's INBOX rows on PostgreSQL where it reads her files."""

from __future__ import annotations

import os
import pathlib
import random
import re
import shutil
import signal
import smtplib
import subprocess
import threading
import time
from collections.abc import Callable

import pytest
import trio
from trio_helpers import (
    BOTH_BACKENDS,
    StartServer,
    maildir_only,
    pg_query,
    started_lines,
    storage_table,
    wait_until_started,
)

from sansmail.sessions.smtpd import SmtpSession, Storing
from sansmail.storage.maildir import _maildir
from sansmail_trio._commit import WORKERS

CLIENTS = 12
PER_CLIENT = 4
_QUEUED_AS = re.compile(r"queued as (\w+)")
_ID = re.compile(rb"\bid\s+(\w+)")

pytestmark = BOTH_BACKENDS


def _message(tag: str) -> bytes:
    # Long enough that a torn write would show: the last line names the message again.
    body = b"".join(f"{tag} line {n:03d}\r\n".encode() for n in range(200))
    return f"Subject: {tag}\r\n\r\n".encode() + body + f"end of {tag}\r\n".encode()


def _send(port: int, tags: list[str], acked: list[str]) -> None:
    for tag in tags:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("a@example.org", ["alice@example.test"], _message(tag))
        acked.append(tag)


async def _clients(port: int, tags_of: Callable[[int], list[str]]) -> list[str]:
    acked: list[str] = []
    async with trio.open_nursery() as nursery:
        for n in range(CLIENTS):
            nursery.start_soon(trio.to_thread.run_sync, _send, port, tags_of(n), acked)
    return acked


@maildir_only("the order of a Maildir's file syncs, renames and directory syncs")
async def test_no_250_before_its_own_file_and_directory_sync(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server()
    # One list, appended to from the worker threads and the loop: its order is the order
    # in which things happened.
    events: list[tuple[str, str]] = []
    real_fsync, real_rename, real_stored = os.fsync, os.rename, SmtpSession.stored

    def fsync(fd: int) -> None:
        time.sleep(0.002)  # a slow disk, so that messages end while others are synced
        real_fsync(fd)
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def rename(src: str, dst: str) -> None:
        real_rename(src, dst)
        events.append(("rename", str(dst)))

    def stored(session: SmtpSession, job: Storing) -> object:
        committed = real_stored(session, job)
        if committed.reply.code == 250:
            events.append(("250", _QUEUED_AS.findall(committed.reply.text)[0]))
        return committed

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(SmtpSession, "stored", stored)
    acked = await _clients(server.port, lambda n: [f"m{n}.{k}" for k in range(PER_CLIENT)])
    assert len(acked) == CLIENTS * PER_CLIENT
    new = server.maildir("alice@example.test") / "new"
    names = os.listdir(new)
    assert len(names) == CLIENTS * PER_CLIENT
    for name in names:
        [queue_id] = _ID.findall((new / name).read_bytes())
        answered = events.index(("250", queue_id.decode()))
        tmp_path = str(new.parent / "tmp" / name.partition(",")[0])
        file_synced = events.index(("fsync", tmp_path))
        renamed = events.index(("rename", str(new / name)))
        dir_synced = events.index(("fsync", str(new)), renamed)
        assert file_synced < renamed < dir_synced < answered, name
    # And the point of it all: some directory syncs covered several messages.
    renames_per_sync: list[int] = []
    renamed_since = 0
    for kind, path in events:
        if kind == "rename":
            renamed_since += 1
        elif kind == "fsync" and path == str(new):
            renames_per_sync.append(renamed_since)
            renamed_since = 0
    assert max(renames_per_sync) >= 2, renames_per_sync
    assert sum(renames_per_sync) == CLIENTS * PER_CLIENT


@maildir_only("holds a Maildir's directory syncs")
async def test_held_directory_syncs_hold_every_250(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server()
    new = str(server.maildir("alice@example.test") / "new")
    gate = threading.Event()
    real = _maildir._fsync_dir  # type: ignore[attr-defined]

    def fsync_dir(path: str) -> None:
        if path == new:
            assert gate.wait(20)
        real(path)

    monkeypatch.setattr(_maildir, "_fsync_dir", fsync_dir)
    acked: list[str] = []
    async with trio.open_nursery() as nursery:
        for n in range(CLIENTS):
            nursery.start_soon(trio.to_thread.run_sync, _send, server.port, [f"m{n}"], acked)
        # Messages reach their directory sync (their names are in new/ already; every
        # worker is held with a batch, so the others wait their turn)...
        deadline = trio.current_time() + 20
        while len(os.listdir(new) if os.path.isdir(new) else []) < WORKERS:
            assert trio.current_time() < deadline
            await trio.sleep(0.02)
        await trio.sleep(0.3)
        assert acked == []  # ...but no client has its 250 until that sync is done
        gate.set()
    assert sorted(acked) == sorted(f"m{n}" for n in range(CLIENTS))


# --- kill -9 during group commits -----------------------------------------------------


def _serve(tmp_path: pathlib.Path, dsn: str | None) -> tuple[subprocess.Popen[bytes], int]:
    storage = storage_table(dsn)
    (tmp_path / "sansmail.toml").write_text(
        'hostname = "mx.example.test"\n'
        'domains = ["example.test"]\n'
        'data_dir = "data"\n'
        "processes = 2\n"
        "[listen]\n"
        'smtp = "127.0.0.1:0"\n'
        "[dns]\n"
        'nameservers = ["127.0.0.1:9"]\n' + storage
    )
    script = shutil.which("sansmail-trio")
    assert script is not None
    add = subprocess.run(
        [script, "user", "add", "alice@example.test", "--password-stdin"],
        cwd=tmp_path,
        input=b"secret\n",
        capture_output=True,
        check=False,
    )
    assert add.returncode == 0, add.stderr
    log = tmp_path / "serve.log"
    seen = started_lines(log)
    with log.open("ab") as out:
        # A session of its own: one signal to its process group kills every process.
        proc = subprocess.Popen([script, "serve"], cwd=tmp_path, stderr=out, start_new_session=True)
    return proc, wait_until_started(proc, log, processes=2, seen=seen)["smtp"]


def _inbox(tmp_path: pathlib.Path, dsn: str | None) -> list[tuple[str, bytes, int]]:
    """Alice's INBOX as stored: each message's name (its file's; its UID), its content
    and the size recorded for it (its name's S=; its row's and its content's)."""
    if dsn is None:
        maildir = tmp_path / "data" / "mail" / "example.test" / "alice"
        stored: list[tuple[str, bytes, int]] = []
        for path in (maildir / "new").iterdir():
            content = path.read_bytes()
            # Whole: its name gives its exact size (asserted by the caller).
            recorded = re.search(r",S=(\d+),", path.name)
            stored.append((path.name, content, int(recorded[1]) if recorded else -1))
        return stored
    rows = pg_query(
        dsn,
        "SELECT m.uid, c.content, m.size, c.size FROM mail_messages m"
        " JOIN mail_folders f ON f.id = m.folder_id"
        " JOIN mail_contents c ON c.digest = m.digest"
        " WHERE f.mailbox = 'alice@example.test' AND f.name = 'INBOX'",
    )
    return [
        (f"UID {uid}", bytes(content), size if size == content_size else -1)
        for uid, content, size, content_size in rows
    ]


def test_kill_9_during_group_commits_loses_no_acknowledged_message(
    tmp_path: pathlib.Path, backend_dsn: str | None
) -> None:
    proc, port = _serve(tmp_path, backend_dsn)
    acked: list[str] = []
    stop = threading.Event()

    def client(n: int) -> None:
        for k in range(10_000):
            if stop.is_set():
                return
            tag = f"c{n}.{k}"
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                    smtp.sendmail("a@example.org", ["alice@example.test"], _message(tag))
            except (OSError, smtplib.SMTPException):
                return  # the server is gone: this one got no 250
            acked.append(tag)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 60
        target = random.randint(40, 120)
        while len(acked) < target and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # every server process, at once
        proc.wait(10)
        stop.set()
        for thread in threads:
            thread.join(30)
    assert len(acked) >= 40, (tmp_path / "serve.log").read_text()[-3000:]
    found: dict[str, int] = {}
    for name, content, size in _inbox(tmp_path, backend_dsn):
        # Maildir files have LF line ends, the database's contents CRLF as received.
        text = content.replace(b"\r\n", b"\n")
        [tag] = re.findall(rb"^Subject: (\S+)$", text, re.MULTILINE)
        # Whole: it ends as the message did, and the size recorded is its exact size.
        assert text.endswith(b"\nend of " + tag + b"\n"), name
        assert size == len(content), name
        found[tag.decode()] = found.get(tag.decode(), 0) + 1
    assert all(count == 1 for count in found.values())
    missing = set(acked) - set(found)
    assert not missing, f"acknowledged but lost: {sorted(missing)}"
