"""The core against Debian's sieve-connect (Perl) over loopback: upload, list, activate,
download, delete in plaintext, and a session through STARTTLS, where the capability
listing is sent again (RFC 5804 §2.2) and sieve-connect resynchronises with a tagged
NOOP. Skipped when sieve-connect is not installed."""

from __future__ import annotations

import pathlib
import shutil
import socket
import ssl
import subprocess
import threading

import pytest
import trustme
from managesieve_helpers import serve_one

from sansmail.managesieve import (
    DeleteScript,
    Event,
    GetScript,
    InvalidCommand,
    ListScripts,
    Noop,
    PutScript,
    SetActive,
    StartTls,
)

SIEVE_CONNECT = shutil.which("sieve-connect")
pytestmark = pytest.mark.skipif(SIEVE_CONNECT is None, reason="sieve-connect not installed")

SCRIPT = b'require ["fileinto"];\nif header :contains "Subject" "x" {\n  fileinto "X";\n}\n'


def test_sieve_connect_manages_scripts(tmp_path: pathlib.Path) -> None:
    local = tmp_path / "test.sieve"
    local.write_bytes(SCRIPT)
    fetched = tmp_path / "fetched.sieve"
    events: list[Event] = []
    actions = [
        ["--upload", "--localsieve", str(local), "--remotesieve", "my.sieve"],
        ["--activate", "--remotesieve", "my.sieve"],
        ["--list"],
        ["--download", "--remotesieve", "my.sieve", "--localsieve", str(fetched)],
        ["--delete", "--remotesieve", "my.sieve"],  # refused: it is active
        ["--deactivate"],
        ["--delete", "--remotesieve", "my.sieve"],
    ]
    outputs = []
    assert SIEVE_CONNECT is not None
    login = ["-u", "user", "--notls", "--authmech", "PLAIN", "--passwordfd", "0"]
    command = [SIEVE_CONNECT, *login, "-s", "127.0.0.1", "-p"]
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def serve() -> None:
            # One store for all the connections, as a real server's would be.
            scripts: dict[str, bytes] = {}
            active: list[str] = []
            for _ in actions:
                serve_one(listener.accept()[0], events, scripts, active)

        thread = threading.Thread(target=serve)
        thread.start()
        for action in actions:
            done = subprocess.run(
                [*command, str(port), *action],
                input="pass\n",
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            outputs.append((done.returncode, done.stdout + done.stderr))
        thread.join(10)
    codes = [code for code, _ in outputs]
    assert codes == [0, 0, 0, 0, 1, 0, 0], outputs
    assert '"my.sieve" ACTIVE' in outputs[2][1]
    assert 'NO (ACTIVE) "the active script"' in outputs[4][1]
    assert fetched.read_bytes() == SCRIPT
    assert PutScript(name="my.sieve", content=SCRIPT) in events
    assert SetActive(name="my.sieve") in events
    assert SetActive(name="") in events
    assert ListScripts() in events
    assert GetScript(name="my.sieve") in events
    assert events.count(DeleteScript(name="my.sieve")) == 2
    assert not any(isinstance(event, InvalidCommand) for event in events)


def test_sieve_connect_through_starttls(tmp_path: pathlib.Path) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    events: list[Event] = []
    assert SIEVE_CONNECT is not None
    login = ["-u", "user", "--authmech", "PLAIN", "--passwordfd", "0"]
    command = [SIEVE_CONNECT, *login, "-s", "127.0.0.1", "-p"]
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]
        thread = threading.Thread(
            target=lambda: serve_one(listener.accept()[0], events, {"a": b"keep;"}, tls=context)
        )
        thread.start()
        done = subprocess.run(
            [*command, str(port), "--list", "--tlscafile", str(tmp_path / "ca.pem")],
            input="pass\n",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        thread.join(10)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == '"a"\n'
    assert events[:2] == [StartTls(), Noop(tag="STARTTLS-RESYNC-CAPA")]
    assert ListScripts() in events
    assert not any(isinstance(event, InvalidCommand) for event in events)
