"""`sansmail-trio who`, `kick` and `status` against a real ``sansmail-trio serve`` with
``processes = 2``, through the control sockets (`_control.py`), with imaplib, poplib and
smtplib as the clients; and the session id on every line of one session's log, in the
text and the JSON format."""

from __future__ import annotations

import contextlib
import imaplib
import json
import os
import pathlib
import poplib
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
from trio_helpers import FAST_HASHER, wait_until_started

from sansmail.mail.address import parse_address
from sansmail.storage.users import UserStore

CONFIG = """\
hostname = "mx.example.test"
domains = ["example.test"]
data_dir = "data"
processes = {processes}
log_format = "{log_format}"
[listen]
smtp = "127.0.0.1:0"
pop3 = "127.0.0.1:0"
imap = "127.0.0.1:0"
[dns]
nameservers = ["127.0.0.1:9"]
[antispam]
spf = "off"
dkim = "off"
dmarc = "off"
"""

SCRIPT = shutil.which("sansmail-trio")
pytestmark = pytest.mark.skipif(SCRIPT is None, reason="sansmail-trio is not installed")


class Server:
    def __init__(self, base: pathlib.Path, proc: subprocess.Popen[bytes], ports: dict[str, int]):
        self.base = base
        self.proc = proc
        self.ports = ports
        self.log = base / "serve.log"

    def cli(self, *argv: str) -> subprocess.CompletedProcess[str]:
        assert SCRIPT is not None
        return subprocess.run(
            [SCRIPT, *argv], cwd=self.base, capture_output=True, text=True, timeout=60, check=False
        )

    def who(self) -> list[dict[str, object]]:
        done = self.cli("who", "--json")
        assert done.returncode == 0, done.stderr
        rows: list[dict[str, object]] = json.loads(done.stdout)
        return rows

    def children(self) -> set[int]:
        found = set()
        for entry in pathlib.Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    stat = (entry / "stat").read_text()
                    if int(stat.rpartition(")")[2].split()[1]) == self.proc.pid:
                        found.add(int(entry.name))
        return found


def _start(base: pathlib.Path, *, processes: int = 2, log_format: str = "text") -> Server:
    assert SCRIPT is not None
    (base / "sansmail.toml").write_text(CONFIG.format(processes=processes, log_format=log_format))
    users = UserStore(base / "data" / "users.json", hasher=FAST_HASHER)
    for name in ("alice", "bob"):
        users.add(parse_address(f"{name}@example.test"), "pw")
    log = base / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([SCRIPT, "serve"], cwd=base, stderr=out)
    if log_format == "json":
        ports = _json_ports(proc, log, processes)
    else:
        ports = wait_until_started(proc, log, processes=processes)
    # The control sockets are up before "started" is logged (serve starts them first).
    return Server(base, proc, ports)


def _json_ports(proc: subprocess.Popen[bytes], log: pathlib.Path, processes: int) -> dict[str, int]:
    # wait_until_started's reading of the "started" lines, from the JSON log's messages.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        text = log.read_text()
        messages = [json.loads(line)["message"] for line in text.split("\n")[:-1]]
        started = [m for m in messages if " started" in m and "domains=" in m]
        if len(started) >= processes:
            return {n: int(p) for n, p in re.findall(r"(\w+) on 127\.0\.0\.1:(\d+)", started[-1])}
        time.sleep(0.02)
    proc.kill()
    proc.wait(10)
    pytest.fail("server did not start: " + log.read_text())


@contextlib.contextmanager
def serving(base: pathlib.Path, **options: object) -> Iterator[Server]:
    server = _start(base, **options)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(10)


def _imap(server: Server, user: str | None) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=20)
    if user is not None:
        client.login(user, "pw")
    return client


def _ended(probe: object) -> str:
    """How a kicked client saw its end: the server's closing words, or EOF."""
    try:
        probe()  # type: ignore[operator]
    except (imaplib.IMAP4.abort, poplib.error_proto, EOFError, OSError) as exc:
        return str(exc)
    return "still open"


def test_who_status_and_kick_over_two_processes(tmp_path: pathlib.Path) -> None:
    with serving(tmp_path) as server:
        children = server.children()
        # Sessions spread over both server processes: the kernel picks, so connect until
        # both have some (each `who` row names its pid).
        alice: list[imaplib.IMAP4] = []
        pids: set[object] = set()
        while len(pids) < 2 and len(alice) < 60:
            alice.append(_imap(server, "alice@example.test"))
            pids = {row["pid"] for row in server.who()}
        assert len(pids) == 2, "every connection went to one process"
        pop = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=20)
        pop.user("alice@example.test")
        pop.pass_("pw")
        bob = _imap(server, "bob@example.test")
        anonymous = _imap(server, None)
        smtp = smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=20)
        smtp.ehlo("client.example.org")

        rows = server.who()
        assert len(rows) == len(alice) + 4
        assert all(re.fullmatch(r"[A-Za-z0-9]{12}", str(row["session"])) for row in rows)
        assert len({row["session"] for row in rows}) == len(rows)
        assert {row["pid"] for row in rows} <= children
        by = {(row["user"], row["service"]) for row in rows}
        assert by == {
            ("alice@example.test", "imap"),
            ("alice@example.test", "pop3"),
            ("bob@example.test", "imap"),
            (None, "imap"),
            (None, "smtp"),
        }
        ports = {int(str(row["port"])) for row in rows if row["user"] == "alice@example.test"}
        assert ports == {c.sock.getsockname()[1] for c in alice} | {pop.sock.getsockname()[1]}
        assert all(str(row["since"]).endswith("Z") for row in rows)
        # Each session's id is on its lines of the log: one grep finds them.
        text = server.log.read_text()
        for row in rows:
            port = row["port"]
            assert re.search(rf"<{row['session']}>: connect from \[127\.0\.0\.1\]:{port}\n", text)

        done = server.cli("who")
        assert done.returncode == 0, done.stderr
        header, *lines = done.stdout.splitlines()
        assert header.split() == ["USER", "#", "SERVICE", "(PIDS)", "(CLIENTS)", "SINCE"]
        table = {tuple(line.split()[:3]): line for line in lines}
        assert set(table) == {
            ("alice@example.test", str(len(alice)), "imap"),
            ("alice@example.test", "1", "pop3"),
            ("bob@example.test", "1", "imap"),
            ("(not", "logged", "in)"),
        }
        shown = table["alice@example.test", str(len(alice)), "imap"]
        assert re.search(r"\((\d+) (\d+)\)", shown), shown  # both processes
        assert "(127.0.0.1)" in shown
        assert len([line for line in lines if line.startswith("(not logged in)")]) == 2

        done = server.cli("status", "--json")
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        assert status["master"] == server.proc.pid
        roles = [(p["role"], p["process"]) for p in status["processes"]]
        assert roles == [("server", 1), ("server", 2), ("queue", None)]
        assert {p["pid"] for p in status["processes"]} == children
        assert status["listeners"] == {
            name: [f"127.0.0.1:{port}"] for name, port in server.ports.items()
        }
        assert status["sessions"] == len(rows)
        assert status["queue"] == 0
        assert 0 <= status["uptime"] < 600
        done = server.cli("status")
        assert done.returncode == 0, done.stderr
        assert f"master: pid {server.proc.pid}" in done.stdout
        assert f"sessions: {len(rows)}" in done.stdout

        done = server.cli("kick", "Alice@Example.TEST")
        assert done.returncode == 0, done.stderr
        count = len(alice) + 1
        assert done.stdout.startswith(
            f"kicked {count} sessions of alice@example.test (imap {len(alice)}, pop3 1)\n"
        )
        for client in alice:
            assert _ended(client.noop) != "still open"
            client.shutdown()
        assert _ended(pop.noop) != "still open"
        pop.close()
        # The others go on.
        assert bob.noop()[0] == "OK"
        assert anonymous.noop()[0] == "OK"
        assert smtp.noop()[0] == 250
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(
            r["user"] == "alice@example.test" for r in server.who()
        ):
            time.sleep(0.05)
        assert {row["user"] for row in server.who()} == {"bob@example.test", None}
        kicked = [
            line
            for line in server.log.read_text().splitlines()
            if "kicked by the administrator" in line
        ]
        assert len(kicked) == count
        assert all(
            "user=<alice@example.test>: kicked by the administrator" in line for line in kicked
        )

        done = server.cli("kick", "alice@example.test")
        assert (done.returncode, done.stdout) == (1, "")
        assert done.stderr == "sansmail-trio: kick: alice@example.test has no sessions\n"
        done = server.cli("kick", "not an address")
        assert done.returncode == 1
        assert len(done.stderr.splitlines()) == 1
        for client in (bob, anonymous):
            client.logout()
        smtp.quit()


def test_closing_words_of_a_kicked_client(tmp_path: pathlib.Path) -> None:
    # What each client reads when kicked while it waits: IMAP's BYE, POP3's -ERR.
    with serving(tmp_path, processes=1) as server:
        imap = socket.create_connection(("127.0.0.1", server.ports["imap"]), timeout=20)
        imap_file = imap.makefile("rb")
        imap_file.readline()
        imap.sendall(b"a LOGIN alice@example.test pw\r\n")
        assert imap_file.readline().startswith(b"a OK")
        pop = socket.create_connection(("127.0.0.1", server.ports["pop3"]), timeout=20)
        pop_file = pop.makefile("rb")
        pop_file.readline()
        pop.sendall(b"USER alice@example.test\r\nPASS pw\r\n")
        pop_file.readline()
        assert pop_file.readline().startswith(b"+OK")
        done = server.cli("kick", "alice@example.test")
        assert done.returncode == 0, done.stderr
        assert imap_file.readline() == b"* BYE [UNAVAILABLE] Server shutting down\r\n"
        assert imap_file.readline() == b""  # then the server closes
        assert pop_file.readline() == b"-ERR [SYS/TEMP] Server shutting down\r\n"
        assert pop_file.readline() == b""
        imap.close()
        pop.close()


def test_not_running_is_one_line(tmp_path: pathlib.Path) -> None:
    assert SCRIPT is not None
    (tmp_path / "sansmail.toml").write_text(CONFIG.format(processes=1, log_format="text"))
    # A socket file left by a process that died: nobody listens on it.
    run = tmp_path / "data" / "run"
    run.mkdir(parents=True, mode=0o700)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(run / "control-1.sock"))
    stale.close()
    for argv in (["who"], ["who", "--json"], ["kick", "alice@example.test"], ["status", "--json"]):
        done = subprocess.run(
            [SCRIPT, *argv], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
        )
        assert (done.returncode, done.stdout) == (1, "")
        assert done.stderr == (
            f"sansmail-trio: {argv[0]}: the server is not running (no process answers in {run})\n"
        )


_ASK = """\
import socket, sys
sock = socket.socket(socket.AF_UNIX)
try:
    sock.connect(sys.argv[1])
except PermissionError:
    print("EACCES")
    sys.exit(0)
sock.sendall(b'{"command": "who"}\\n')
print(sock.makefile("rb").readline().decode().strip())
"""


#: A Python that user nobody can run (this one may live in root's home).
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.access(SYSTEM_PYTHON, os.X_OK),
    reason="needs root to run a child as another user, and /usr/bin/python3",
)
def test_another_user_is_refused(tmp_path: pathlib.Path) -> None:
    with serving(tmp_path, processes=1) as server:
        run = tmp_path / "data" / "run"
        # The queue runner's socket too: each process makes sure of the mode at start.
        _wait_for((run / "control-queue.sock").exists)
        assert (run.stat().st_mode & 0o777) == 0o700
        # Through a descriptor of the directory, so that the child needs no way through
        # tmp_path's parents (pytest's are root's alone).
        fd = os.open(run, os.O_PATH | os.O_DIRECTORY)
        try:

            def ask() -> str:
                done = subprocess.run(
                    [SYSTEM_PYTHON, "-c", _ASK, f"/proc/self/fd/{fd}/control-1.sock"],
                    user=65534,
                    group=65534,
                    extra_groups=[],
                    pass_fds=[fd],
                    cwd="/",
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
                assert done.returncode == 0, done.stderr
                return done.stdout.strip()

            # The directory keeps everyone else out ...
            assert ask() == "EACCES"
            # ... and, should it be opened by hand, the server checks the peer itself.
            run.chmod(0o711)
            (run / "control-1.sock").chmod(0o777)
            answer = json.loads(ask())
            assert answer == {"error": "permission denied: only root and uid 0 may ask this server"}
        finally:
            os.close(fd)
        assert "control socket: refused pid" in server.log.read_text()
        assert server.cli("who").returncode == 0  # root still may


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not condition():
        time.sleep(0.02)
    assert condition()


def _session_lines(lines: list[str], session: str) -> list[str]:
    return [line for line in lines if f"<{session}>" in line]


def test_every_line_of_an_imap_session_has_its_id(tmp_path: pathlib.Path) -> None:
    with serving(tmp_path, processes=1) as server:
        client = _imap(server, "bob@example.test")
        port = client.sock.getsockname()[1]
        (row,) = server.who()
        client.select("INBOX")
        client.logout()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "logout: user=<bob" not in server.log.read_text():
            time.sleep(0.05)
    session = str(row["session"])
    lines = server.log.read_text().splitlines()
    imap_lines = [line for line in lines if " sansmail/imap[" in line]
    assert len(imap_lines) == 3  # connect, login, logout
    assert _session_lines(lines, session) == imap_lines
    assert imap_lines[0].endswith(f"<{session}>: connect from [127.0.0.1]:{port}")
    assert "login: user=<bob@example.test>" in imap_lines[1]
    assert "logout: user=<bob@example.test>" in imap_lines[2]


def test_every_json_line_of_an_imap_session_has_its_id(tmp_path: pathlib.Path) -> None:
    with serving(tmp_path, processes=1, log_format="json") as server:
        client = _imap(server, "bob@example.test")
        (row,) = server.who()
        client.select("INBOX")
        client.logout()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "logout: user=<bob" not in server.log.read_text():
            time.sleep(0.05)
    lines = [json.loads(line) for line in server.log.read_text().splitlines()]
    imap_lines = [line for line in lines if line["program"] == "sansmail/imap"]
    assert [line["message"].split(":")[0] for line in imap_lines] == [
        "connect from [127.0.0.1]",
        "login",
        "logout",
    ]
    assert {line["session"] for line in imap_lines} == {row["session"]}
    assert list(imap_lines[0]) == ["time", "host", "program", "pid", "level", "session", "message"]
    assert all("session" not in line for line in lines if line["program"] == "sansmail/master")
