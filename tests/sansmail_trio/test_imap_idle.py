"""IDLE (RFC 2177) end to end: imapclient idling against a real serve() on 127.0.0.1
wakes on a delivery made with smtplib, on another session's STORE and EXPUNGE and on a
POP3 DELE; DONE gets its OK; ``* OK Still here`` comes at the keep-alive interval;
shutdown ends an idler with BYE; and with ``processes = 2`` a delivery taken by the
other server process reaches the idler (inotify, not a message between processes).

The bound on the wake-up is generous (5 s: a loaded test machine); what it measures
(about a millisecond) is what the issue's "within a second" is about."""

from __future__ import annotations

import contextlib
import os
import pathlib
import poplib
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import imapclient
import pytest
import trio
from test_imap_e2e import ALICE, MESSAGE_1, deliver, imap_server
from trio_helpers import BOTH_BACKENDS, FAST_HASHER, RunningServer

import sansmail_trio._imap_server as imap_server_module
from sansmail.mail.address import parse_address
from sansmail.storage.users import UserStore

# The tests of an in-process server (start_server) run on both storage backends.
pytestmark = BOTH_BACKENDS

WAIT = 5.0


def connect(server: RunningServer, context: ssl.SSLContext) -> imapclient.IMAPClient:
    client = imapclient.IMAPClient(
        "127.0.0.1", port=server.port_of("imaps"), ssl=True, ssl_context=context, timeout=10
    )
    client.login(ALICE, "secret")
    return client


def wait_for(client: imapclient.IMAPClient, wanted: bytes) -> list[Any]:
    """The untagged responses read while idling, up to one whose keyword is `wanted`."""
    seen: list[Any] = []
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        responses = client.idle_check(timeout=deadline - time.monotonic())
        seen += responses
        if any(wanted in r for r in responses):
            return seen
    raise AssertionError(f"no {wanted!r} within {WAIT} s; saw {seen}")


async def test_idle_wakes_on_a_delivery_and_done_ends_it(start_server, tls_files, client_tls):
    server = await imap_server(start_server, tls_files)
    await deliver(server, MESSAGE_1)

    def session() -> tuple[list[Any], float, tuple[Any, Any]]:
        client = connect(server, client_tls)
        assert b"IDLE" in client.capabilities()
        client.select_folder("INBOX")
        client.idle()
        sent: list[float] = []

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", server.port_of("smtp"), timeout=10) as smtp:
                smtp.sendmail("sender@example.org", [ALICE], MESSAGE_1)
                sent.append(time.monotonic())  # the 250 to DATA has been read

        sender = threading.Thread(target=send)
        sender.start()
        seen = wait_for(client, b"EXISTS")
        woken = time.monotonic()
        sender.join()
        done = client.idle_done()
        # A normal command afterwards: the session is in the selected state again.
        assert client.search(["ALL"]) == [1, 2]
        client.logout()
        return seen, woken - sent[0], done

    seen, latency, (text, _after) = await trio.to_thread.run_sync(session)
    assert (2, b"EXISTS") in seen
    assert latency < WAIT
    print(f"delivery 250 -> EXISTS at the idler: {latency * 1000:.1f} ms")
    assert text == b"IDLE terminated"


async def test_idle_hears_other_sessions_and_pop3(start_server, tls_files, client_tls):
    server = await imap_server(start_server, tls_files)
    await deliver(server, MESSAGE_1, MESSAGE_1, MESSAGE_1)

    def session() -> dict[str, list[Any]]:
        idler = connect(server, client_tls)
        idler.select_folder("INBOX")
        other = connect(server, client_tls)
        other.select_folder("INBOX")
        heard: dict[str, list[Any]] = {}
        idler.idle()
        other.add_flags([2], [imapclient.FLAGGED])
        heard["store"] = wait_for(idler, b"FETCH")
        other.delete_messages([1])
        other.expunge()
        heard["expunge"] = wait_for(idler, b"EXPUNGE")
        idler.idle_done()
        other.logout()
        # POP3 deletes from the INBOX the idler has selected.
        idler.idle()
        pop = poplib.POP3("127.0.0.1", server.port_of("pop3"), timeout=10)
        pop.user(ALICE)
        pop.pass_("secret")
        pop.dele(1)
        pop.quit()
        heard["dele"] = wait_for(idler, b"EXPUNGE")
        idler.idle_done()
        heard["left"] = idler.search(["ALL"])
        idler.logout()
        return heard

    heard = await trio.to_thread.run_sync(session)
    ((number, keyword, items),) = heard["store"]
    assert (number, keyword) == (2, b"FETCH")
    assert b"\\Flagged" in items[1]
    assert items[2:] == (b"UID", 2)
    assert (1, b"EXPUNGE") in heard["expunge"]
    assert (1, b"EXPUNGE") in heard["dele"]
    assert heard["left"] == [3]  # UIDs: 1 expunged over IMAP, 2 deleted by POP3


async def test_idle_keepalive_and_shutdown_bye(start_server, tls_files, client_tls, monkeypatch):
    monkeypatch.setattr(imap_server_module, "IDLE_KEEPALIVE", 0.2)
    server = await imap_server(start_server, tls_files)
    client: imapclient.IMAPClient | None = None

    def start() -> list[Any]:
        nonlocal client
        client = connect(server, client_tls)
        client.select_folder("INBOX")
        client.idle()
        return wait_for(client, b"Still here")

    still = await trio.to_thread.run_sync(start)
    assert (b"OK", b"Still here") in still
    await server.stop()

    def bye() -> bytes:
        assert client is not None
        sock = client.socket()
        sock.settimeout(WAIT)
        data = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(4096):
                data += chunk
        sock.close()
        return data

    data = await trio.to_thread.run_sync(bye)
    assert data.endswith(b"* BYE [UNAVAILABLE] Server shutting down\r\n")


async def test_idle_in_the_authenticated_state(start_server, tls_files, client_tls):
    # Nothing selected: nothing to watch, and DONE is answered as always.
    server = await imap_server(start_server, tls_files)

    def session() -> tuple[Any, Any]:
        client = connect(server, client_tls)
        client.idle()
        quiet = client.idle_check(timeout=0.2)
        done = client.idle_done()
        client.logout()
        return quiet, done

    quiet, done = await trio.to_thread.run_sync(session)
    assert quiet == []
    assert done[0] == b"IDLE terminated"


# --- processes = 2 ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def two_processes(tmp_path: pathlib.Path) -> Iterator[tuple[int, int, list[int]]]:
    """`sansmail-trio serve` with ``processes = 2``: (smtp port, imap port, the pids of
    the two server processes)."""
    smtp, imap = _free_port(), _free_port()
    (tmp_path / "sansmail.toml").write_text(
        'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n'
        f'processes = 2\n[listen]\nsmtp = "127.0.0.1:{smtp}"\nimap = "127.0.0.1:{imap}"\n'
        '[dns]\nnameservers = ["127.0.0.1:9"]\n'
    )
    UserStore(tmp_path / "data" / "users.json", hasher=FAST_HASHER).add(
        parse_address(ALICE), "secret"
    )
    script = shutil.which("sansmail-trio")
    assert script is not None
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([script, "serve"], cwd=tmp_path, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while log.read_text().count("started (process") < 2:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        children = pathlib.Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text()
        servers = [
            int(pid)
            for pid in children.split()
            if pathlib.Path(f"/proc/{pid}/comm").read_text().strip() != "sansmail-queue"
        ]
        assert len(servers) == 2
        yield smtp, imap, servers
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _serving_process(pids: list[int], ports: tuple[int, ...], client: socket.socket) -> int:
    """The server process holding the other end of `client` (through /proc)."""
    local_port = client.getsockname()[1]
    inode = None
    for line in pathlib.Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        ours = int(fields[1].split(":")[1], 16)
        theirs = int(fields[2].split(":")[1], 16)
        if fields[3] == "01" and theirs == local_port and ours in ports:
            inode = fields[9]
    assert inode is not None
    for pid in pids:
        for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
    raise AssertionError(f"no server process holds socket {inode}")


def test_idle_hears_a_delivery_made_by_the_other_process(
    two_processes: tuple[int, int, list[int]],
) -> None:
    smtp_port, imap_port, pids = two_processes
    client = imapclient.IMAPClient("127.0.0.1", port=imap_port, ssl=False, timeout=10)
    try:
        idler_pid = _serving_process(pids, (imap_port,), client.socket())
        client.login(ALICE, "secret")
        client.select_folder("INBOX")
        client.idle()
        # New connections until the other process takes one: the kernel spreads them.
        for _attempt in range(50):
            smtp = smtplib.SMTP("127.0.0.1", smtp_port, timeout=10)
            assert smtp.sock is not None
            if _serving_process(pids, (smtp_port,), smtp.sock) != idler_pid:
                break
            smtp.quit()
        else:
            raise AssertionError("the other process never took a connection")
        with smtp:
            smtp.sendmail("sender@example.org", [ALICE], MESSAGE_1)
        assert (1, b"EXISTS") in wait_for(client, b"EXISTS")
        assert client.idle_done()[0] == b"IDLE terminated"
    finally:
        client.logout()
