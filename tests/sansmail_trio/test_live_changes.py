"""`user add/passwd/del`, `newaliases` and `reload` are in force in every server process by
the time they exit (CONTRACT.md), with no sleep between the command and the next RCPT or
login: the real console script against `sansmail-trio serve` with ``processes = 2``, and
real clients (smtplib, imaplib) on 127.0.0.1.

Each check runs on fresh connections until both server processes have answered it, so
that a process that missed the change cannot hide behind the other. A server that only
polled (the old promise: within two seconds) would answer within ~50 ms of the command
from its stale table and fail here.
"""

from __future__ import annotations

import concurrent.futures
import imaplib
import json
import os
import pathlib
import shutil
import signal
import smtplib
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import attrs
import pytest
import trio
from argon2 import PasswordHasher
from trio_helpers import BOTH_BACKENDS, StartServer, maildir_only, storage_table

from sansmail.mail.address import parse_address
from sansmail.storage.users import UserStore

# On both storage backends: the users and aliases in files, or in the tables every node
# reads (whose changes reach the server processes by NOTIFY).
pytestmark = BOTH_BACKENDS

#: Rounds of change-then-check before giving up on seeing both processes answer.
MAX_ROUNDS = 8
#: For users the test makes itself; the server verifies with the parameters in the hash.
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@attrs.define
class Serve:
    proc: subprocess.Popen[bytes]
    cwd: pathlib.Path
    smtp: int
    imap: int
    children: list[int]

    @property
    def log(self) -> str:
        return (self.cwd / "serve.log").read_text()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _script() -> str:
    script = shutil.which("sansmail-trio")
    assert script is not None, "the sansmail-trio console script is not installed"
    return script


def cli(server: Serve, *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The real console script; returns at once when it exits (no sleep after)."""
    done = subprocess.run(
        [_script(), *argv],
        cwd=server.cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in done.stderr
    return done


@pytest.fixture
def server(tmp_path: pathlib.Path, backend_dsn: str | None) -> Iterator[Serve]:
    storage = storage_table(backend_dsn)
    smtp, imap = _free_port(), _free_port()
    (tmp_path / "aliases").write_text("postmaster: nobody@elsewhere.test\n")
    (tmp_path / "sansmail.toml").write_text(
        'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n'
        'aliases = "aliases"\nprocesses = 2\n'
        f'[listen]\nsmtp = "127.0.0.1:{smtp}"\nimap = "127.0.0.1:{imap}"\n'
        # Never the machine's resolver: a queued bounce meets a closed port on loopback.
        '[dns]\nnameservers = ["127.0.0.1:9"]\n' + storage
    )
    with (tmp_path / "serve.log").open("wb") as log:
        proc = subprocess.Popen([_script(), "serve"], cwd=tmp_path, stderr=log)
    running = Serve(proc=proc, cwd=tmp_path, smtp=smtp, imap=imap, children=[])
    try:
        deadline = time.monotonic() + 30
        while running.log.count("started (process") < 2:
            assert proc.poll() is None, running.log
            assert time.monotonic() < deadline, running.log
            time.sleep(0.05)
        children = pathlib.Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text()
        # The server processes: all children but the queue runner.
        running.children = [
            int(pid)
            for pid in children.split()
            if pathlib.Path(f"/proc/{pid}/comm").read_text().strip() != "sansmail-queue"
        ]
        assert len(running.children) == 2
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


# --- which process answered -------------------------------------------------------------


def _serving_process(server: Serve, client: socket.socket) -> int:
    """The pid of the server process holding the other end of `client` (found through
    /proc: the socket's inode in /proc/net/tcp, then the process with that fd)."""
    local_port = client.getsockname()[1]
    inode = None
    for line in pathlib.Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        ours = int(fields[1].split(":")[1], 16)
        theirs = int(fields[2].split(":")[1], 16)
        # Established only: an earlier connection from the same port may linger in
        # TIME_WAIT (state 06), with no inode.
        established = fields[3] == "01"
        if established and theirs == local_port and ours in (server.smtp, server.imap):
            inode = fields[9]
    assert inode is not None
    for pid in server.children:
        fd_dir = pathlib.Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:  # closed meanwhile
                continue
    raise AssertionError(f"no server process holds socket {inode}")


def rcpt(server: Serve, address: str) -> tuple[int, bytes, int]:
    """RCPT TO on a fresh connection: (code, text, pid of the process that answered)."""
    with smtplib.SMTP("127.0.0.1", server.smtp, timeout=10) as client:
        assert client.sock is not None
        pid = _serving_process(server, client.sock)
        client.ehlo("client.example.org")
        client.mail("someone@example.org")
        code, text = client.rcpt(address)
    return code, text, pid


def login(server: Serve, address: str, password: str) -> tuple[bool, int]:
    """IMAP LOGIN on a fresh connection: (accepted, pid of the process that answered)."""
    client = imaplib.IMAP4("127.0.0.1", server.imap, timeout=10)
    try:
        pid = _serving_process(server, client.sock)
        try:
            client.login(address, password)
        except imaplib.IMAP4.error:
            return False, pid
        return True, pid
    finally:
        client.logout()  # in any state (RFC 9051 §6.1.3); closes the connection


class BothProcesses:
    """Which server processes answered each check. `check` runs a check on two fresh
    connections at once, again until both processes have answered it (or `BATCHES`
    times); the first connections follow the change by a few milliseconds. Two at once
    because a failed login is answered only after the failure delay (2 s)."""

    BATCHES = 3

    def __init__(self) -> None:
        self.seen: dict[str, set[int]] = {}

    def check(self, name: str, attempt: Callable[[], int]) -> None:
        pids = self.seen.setdefault(name, set())
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for _ in range(self.BATCHES):
                pids.update(pool.map(lambda _: attempt(), range(2)))
                if len(pids) == 2:
                    return

    def done(self) -> bool:
        return all(len(pids) == 2 for pids in self.seen.values())


def until_both_processes_answered(rounds: Callable[[int, BothProcesses], None]) -> None:
    """Run `rounds(i, both)` (each makes its changes and checks them through `both`)
    until every check has been answered by both processes."""
    both = BothProcesses()
    for i in range(MAX_ROUNDS):
        rounds(i, both)
        if both.done():
            return
    pytest.fail(f"some check never reached both processes: {both.seen}")


def expect(result: tuple[object, int], wanted: object) -> int:
    """The pid of a check's result, once its outcome is as `wanted`."""
    outcome, pid = result
    assert outcome == wanted
    return pid


def rcpt_code(server: Serve, address: str) -> tuple[tuple[int, bytes], int]:
    code, text, pid = rcpt(server, address)
    return (code, text[:5]), pid


# --- the tests -------------------------------------------------------------------------


def test_user_add_passwd_del_are_in_force_when_the_command_exits(server: Serve) -> None:
    accepted = (250, b"2.1.5")
    unknown = (550, b"5.1.1")

    def rounds(i: int, both: BothProcesses) -> None:
        address = f"user{i}@example.test"
        added = cli(server, "user", "add", address, "--password-stdin", stdin=f"first{i}\n")
        assert added.returncode == 0, added.stderr
        both.check("rcpt after add", lambda: expect(rcpt_code(server, address), accepted))
        both.check("login after add", lambda: expect(login(server, address, f"first{i}"), True))

        changed = cli(server, "user", "passwd", address, "--password-stdin", stdin=f"new{i}\n")
        assert changed.returncode == 0, changed.stderr
        both.check("new password", lambda: expect(login(server, address, f"new{i}"), True))
        both.check("old password", lambda: expect(login(server, address, f"first{i}"), False))

        deleted = cli(server, "user", "del", address)
        assert deleted.returncode == 0, deleted.stderr
        both.check("rcpt after del", lambda: expect(rcpt_code(server, address), unknown))
        both.check("login after del", lambda: expect(login(server, address, f"new{i}"), False))

    until_both_processes_answered(rounds)


def test_newaliases_is_in_force_when_it_exits(server: Serve) -> None:
    added = cli(server, "user", "add", "alice@example.test", "--password-stdin", stdin="pw\n")
    assert added.returncode == 0, added.stderr
    aliases = server.cwd / "aliases"
    base = aliases.read_text()

    def rounds(i: int, both: BothProcesses) -> None:
        name = f"team{i}@example.test"
        aliases.write_text(base + f"team{i}: alice\n")
        done = cli(server, "newaliases")
        assert done.returncode == 0, done.stderr
        both.check("new alias", lambda: expect(rcpt_code(server, name), (250, b"2.1.5")))

        aliases.write_text(base)
        done = cli(server, "newaliases")
        assert done.returncode == 0, done.stderr
        both.check("removed alias", lambda: expect(rcpt_code(server, name), (550, b"5.1.1")))

    until_both_processes_answered(rounds)


@maildir_only("edits users.json by hand")
def test_reload_puts_hand_edits_in_force_and_reloads_the_certificate(server: Serve) -> None:
    users = server.cwd / "data" / "users.json"
    store = UserStore(users, hasher=FAST)
    for i in range(MAX_ROUNDS):
        store.add(parse_address(f"u{i}@example.test"), "pw")

    def rounds(i: int, both: BothProcesses) -> None:
        address = f"u{i}@example.test"
        both.check("before", lambda: expect(rcpt_code(server, address), (250, b"2.1.5")))
        # Removed by hand, as by restoring a backup: nobody announces it...
        document = json.loads(users.read_text())
        del document["users"][address]
        users.write_text(json.dumps(document))
        # ... until reload does.
        done = cli(server, "reload")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("reload requested: ")
        both.check("hand-removed user", lambda: expect(rcpt_code(server, address), (550, b"5.1.1")))

    until_both_processes_answered(rounds)
    # The certificate is the housekeeping's, once a second in each process.
    deadline = time.monotonic() + 10
    while server.log.count("TLS: reloaded certificate") < 2:
        assert time.monotonic() < deadline, server.log
        time.sleep(0.1)
    assert server.log.count("reload requested: reloading the TLS certificate") == 2


def test_reload_without_a_server_says_so(tmp_path: pathlib.Path) -> None:
    (tmp_path / "sansmail.toml").write_text('domains = ["example.test"]\ndata_dir = "data"\n')
    done = subprocess.run(
        [_script(), "reload"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert done.stderr == (
        f"sansmail-trio: reload: no server has ever run on {tmp_path / 'data'}: nothing to reload\n"
    )


async def test_user_added_while_running_takes_effect(start_server: StartServer) -> None:
    # Moved from test_smtp_e2e.py, where it slept two seconds: now the next RCPT sees it.
    server = await start_server()

    def rcpt() -> int:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            client.ehlo()
            client.mail("a@example.org")
            return client.rcpt("carol@example.test")[0]

    assert await trio.to_thread.run_sync(rcpt) == 550
    server.add_user("carol@example.test")
    assert await trio.to_thread.run_sync(rcpt) == 250
