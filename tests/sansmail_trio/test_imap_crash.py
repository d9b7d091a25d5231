"""`sansmail-trio serve` killed with SIGKILL while a client APPENDs: every message whose
APPEND was acknowledged is there after a restart, under the UID it was given, and no
UID is handed out twice (the next ones are above every UID seen before).

On both storage backends: on PostgreSQL the transaction's commit before the tagged OK
is what fsync is to Maildir, and the UIDs come from the folder's row."""

from __future__ import annotations

import imaplib
import os
import pathlib
import re
import shutil
import signal
import subprocess
import threading
import time

from trio_helpers import (
    BOTH_BACKENDS,
    add_users,
    started_lines,
    storage_table,
    wait_until_started,
)

from sansmail.config import load_config

pytestmark = BOTH_BACKENDS


def _serve(tmp_path: pathlib.Path) -> tuple[subprocess.Popen[bytes], int]:
    """The server started, and its IMAP port (it listens on port 0, read from the log)."""
    script = shutil.which("sansmail-trio")
    assert script is not None
    path = tmp_path / "serve.log"
    seen = started_lines(path)
    with path.open("ab") as log:
        proc = subprocess.Popen([script, "serve"], cwd=tmp_path, stderr=log)
    return proc, wait_until_started(proc, path, seen=seen)["imap"]


def _login(port: int) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    # Loopback: plaintext LOGIN is allowed by the default plaintext_auth.
    assert client.login("alice@example.test", "pw")[0] == "OK"
    return client


def _appenduid(data: list[bytes]) -> tuple[int, int]:
    match = re.search(rb"\[APPENDUID (\d+) (\d+)\]", data[-1])
    assert match is not None, data
    return int(match.group(1)), int(match.group(2))


def test_sigkill_during_appends_loses_no_acknowledged_message(
    tmp_path: pathlib.Path, backend_dsn: str | None
) -> None:
    path = tmp_path / "sansmail.toml"
    path.write_text(
        'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n'
        '[listen]\nimap = "127.0.0.1:0"\n' + storage_table(backend_dsn)
    )
    # Cheap argon2 parameters (add_users): every login checks the hash (`user add` is in
    # test_cli.py). In users.json, or in the database's users table.
    config = load_config(path, default_hostname="unused.test")
    add_users(config, backend_dsn, ("alice@example.test",), "pw")
    proc, port = _serve(tmp_path)
    acknowledged: dict[int, bytes] = {}
    validity: set[int] = set()
    stop = threading.Event()

    def append_forever() -> None:
        client = _login(port)
        try:
            number = 0
            while not stop.is_set():
                number += 1
                subject = b"crash test %d" % number
                message = b"Subject: " + subject + b"\r\n\r\n" + b"body line\r\n" * 200
                typ, data = client.append("INBOX", None, None, message)
                if typ != "OK":
                    return
                uidvalidity, uid = _appenduid(data)
                validity.add(uidvalidity)
                acknowledged[uid] = subject
        except (OSError, imaplib.IMAP4.abort, imaplib.IMAP4.error):
            return  # the server died under us: the last APPEND was not acknowledged
        finally:
            client.shutdown()

    writer = threading.Thread(target=append_forever)
    try:
        writer.start()
        deadline = time.monotonic() + 20
        while len(acknowledged) < 30 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        stop.set()
        writer.join(20)
        assert len(acknowledged) >= 30

        proc, port = _serve(tmp_path)
        client = _login(port)
        assert client.select("INBOX")[0] == "OK"
        typ, data = client.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK"
        found = {
            int(re.search(rb"UID (\d+)", head).group(1)): body.strip()  # type: ignore[union-attr]
            for head, body in (item for item in data if isinstance(item, tuple))
        }
        for uid, subject in acknowledged.items():
            assert found.get(uid) == b"Subject: " + subject, uid
        typ, data = client.append("INBOX", None, None, b"Subject: after\r\n\r\nx\r\n")
        assert typ == "OK"
        uidvalidity, uid = _appenduid(data)
        assert validity == {uidvalidity}
        assert uid > max([*acknowledged, *found])
        client.logout()
    finally:
        stop.set()
        writer.join(20)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
