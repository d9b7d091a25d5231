"""Memory stays bounded under a huge line, literal or message: the resident memory peak
(VmHWM) of a `sansmail-trio serve` server process while a client sends 256 MiB, which a
server that buffered it would have to hold. bench/memory_limits.py does 1 GiB."""

from __future__ import annotations

import contextlib
import pathlib
import shutil
import socket
import subprocess
from collections.abc import Iterator

import pytest
from trio_helpers import FAST_HASHER, wait_until_started

from sansmail.mail.address import parse_address
from sansmail.storage.users import UserStore

ALICE = "alice@example.test"
MIB = 1 << 20
SIZE = 256 * MIB
#: What an attack may add to the peak: a few read buffers and the session's state, far
#: below the attack's size.
BOUND = 32 * MIB
LINES = (b"y" * 998 + b"\r\n") * 1024  # 1,000-octet DATA lines (RFC 5321 §4.5.3.1.6)


def _status(pid: int, name: str) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(name)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, int], int]]:
    """One server for the module: its ports and its server process's pid."""
    tmp = tmp_path_factory.mktemp("memory")
    (tmp / "sansmail.toml").write_text(
        'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n'
        '[listen]\nsmtp = "127.0.0.1:0"\npop3 = "127.0.0.1:0"\nimap = "127.0.0.1:0"\n'
        '[dns]\nnameservers = ["127.0.0.1:9"]\n'
    )
    UserStore(tmp / "data" / "users.json", hasher=FAST_HASHER).add(parse_address(ALICE), "secret")
    script = shutil.which("sansmail-trio")
    assert script is not None
    log = tmp / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([script, "serve"], cwd=tmp, stderr=out)
    try:
        ports = wait_until_started(proc, log)
        children = pathlib.Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text()
        (pid,) = (
            int(c)
            for c in children.split()
            if pathlib.Path(f"/proc/{c}/comm").read_text().strip() != "sansmail-queue"
        )
        yield ports, pid
    finally:
        proc.kill()
        proc.wait(10)


class _Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.buf = b""

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                return b"<closed>"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def until(self, prefix: bytes) -> bytes:
        while not (line := self.line()).startswith(prefix) and line != b"<closed>":
            pass
        return line

    def flood(self, chunk: bytes) -> int:
        """Send SIZE octets of `chunk`; the octets taken before the server closed."""
        sent = 0
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < SIZE:
                piece = chunk[: SIZE - sent]
                self.sock.sendall(piece)
                sent += len(piece)
        return sent


def _peak(pid: int, attack: Iterator[None]) -> int:
    """What running `attack` added to the server process's resident memory peak."""
    # Writing 5 to clear_refs resets VmHWM to the current VmRSS (proc(5)).
    pathlib.Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = _status(pid, "VmRSS")
    for _ in attack:
        pass
    return _status(pid, "VmHWM") - before


def test_smtp_data_and_bdat_over_the_size_limit(server: tuple[dict[str, int], int]) -> None:
    ports, pid = server
    answers: list[bytes] = []

    def transaction(bdat: bool) -> Iterator[None]:
        c = _Client(ports["smtp"])
        c.line()
        c.sock.sendall(b"EHLO client.example\r\n")
        c.until(b"250 ")
        c.sock.sendall(f"MAIL FROM:<a@example.org>\r\nRCPT TO:<{ALICE}>\r\n".encode())
        c.line()
        c.line()
        if bdat:
            c.sock.sendall(b"BDAT %d LAST\r\n" % SIZE)
            taken = c.flood(LINES)
        else:
            c.sock.sendall(b"DATA\r\n")
            c.until(b"354")
            taken = c.flood(LINES)
            c.sock.sendall(b"\r\n.\r\n")
        assert taken == SIZE  # read to the end, so the client hears why
        answers.append(c.line())
        c.sock.close()
        yield

    assert _peak(pid, transaction(bdat=False)) < BOUND
    assert _peak(pid, transaction(bdat=True)) < BOUND
    assert answers == [b"552 5.3.4 Message size exceeds fixed limit"] * 2


@pytest.mark.parametrize(
    ("service", "login", "prefix", "answer"),
    [
        ("smtp", b"", b"", b"500 Line too long; closing"),
        ("pop3", b"", b"", b"-ERR line too long, closing"),
        ("imap", b"", b"", b"* BYE [TOOBIG] command line too long, closing"),
        (
            "imap",
            b"l LOGIN alice@example.test secret\r\n",
            b"a APPEND INBOX {%d+}\r\n" % SIZE,
            b"* BYE [TOOBIG] non-synchronizing literal over the limit, closing",
        ),
        (
            "imap",
            b"l LOGIN alice@example.test secret\r\ns SELECT INBOX\r\n",
            b"a SEARCH TEXT {%d+}\r\n" % SIZE,
            b"* BYE [TOOBIG] non-synchronizing literal over the limit, closing",
        ),
    ],
    ids=["smtp-line", "pop3-line", "imap-line", "imap-append-literal", "imap-search-literal"],
)
def test_endless_lines_and_literals_end_the_session(
    server: tuple[dict[str, int], int], service: str, login: bytes, prefix: bytes, answer: bytes
) -> None:
    ports, pid = server
    heard: list[bytes] = []

    def attack() -> Iterator[None]:
        c = _Client(ports[service])
        c.line()
        if login:
            c.sock.sendall(login)
            for tag in (b"l ", b"s ")[: login.count(b"\r\n")]:
                assert c.until(tag).startswith(tag + b"OK")
        c.sock.sendall(prefix)
        taken = c.flood(b"x" * MIB)
        assert taken < SIZE  # the server stopped reading long before the end
        heard.append(c.until(answer[:5]))
        c.sock.close()
        yield

    assert _peak(pid, attack()) < BOUND
    assert heard == [answer]
