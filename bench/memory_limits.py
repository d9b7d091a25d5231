"""Resident memory of a `sansmail-trio serve` server process while a client sends a huge
line, literal or message: each must cost a bounded amount, whatever its size.

    python3 bench/memory_limits.py [--size MiB] [--only NAME,...] [--tmpdir DIR] [--keep]

Theory of operation
-------------------
One `sansmail-trio serve` (``processes = 1``: one server process, beside the parent and
the queue runner) listens for SMTP, POP3 and IMAP on loopback, with the default limits
(``max_message_size`` 25 MiB, IMAP lines 64 KiB). For each attack, one after the other
on the same server:

1. The server process's peak resident memory is reset (``5`` written to
   ``/proc/PID/clear_refs`` resets VmHWM to the current VmRSS), and VmRSS is read:
   **before**.
2. One client connection does the attack, sending ``--size`` MiB (1024: 1 GiB) as fast
   as loopback takes it, then reads the server's answer. A server that closes the
   connection early (a line past its limit ends the session) stops the attack there:
   the octets it took are shown.
3. VmHWM is read: **peak** is VmHWM - before, the most the attack ever added.

The attacks: a line without end to SMTP, POP3 and IMAP; an SMTP DATA and a BDAT of
``--size`` over ``max_message_size``; an IMAP APPEND with a non-synchronizing literal
(LITERAL+) of that size, one with a synchronizing literal whose refusal (NO [TOOBIG])
the client ignores, sending the octets anyway, and a SEARCH with a non-synchronizing
literal of that size (past ``imap_max_command_size``); and pipelined NOOPs to SMTP and
IMAP from a client that never reads the answers (what the server has to say must not
pile up either: it stops reading once the socket's buffers are full).

The table gives, per attack, the octets the server took, its answer, the seconds it took
and before / peak in MiB. A bounded server shows a peak of a few MiB whatever ``--size``
is (run it with 64 and 1024 to see it does not grow).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from argon2 import PasswordHasher

from sansmail.mail.address import parse_address
from sansmail.storage.users import UserStore

ALICE = "alice@example.test"
MIB = 1 << 20
CHUNK = b"x" * MIB
# DATA content: 998-octet lines (RFC 5321 §4.5.3.1.6), 1,000 with CRLF.
DATA_CHUNK = (b"y" * 998 + b"\r\n") * 1024


def _status(pid: int) -> dict[str, int]:
    fields = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def _reset_peak(pid: int) -> None:
    pathlib.Path(f"/proc/{pid}/clear_refs").write_text("5")


class Client:
    """A blocking line client with a memory of what it has read."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.buf = b""

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                return b"<closed>" if not self.buf else self.buf
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def until(self, prefix: bytes) -> bytes:
        while True:
            line = self.line()
            if line.startswith(prefix) or line == b"<closed>":
                return line

    def flood(self, total: int, chunk: bytes = CHUNK) -> int:
        """Send `total` octets of `chunk`; the octets the server took before it closed."""
        sent = 0
        try:
            while sent < total:
                piece = chunk[: total - sent]
                self.sock.sendall(piece)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # closed, or no longer reading (the answers not read fill the pipe)
        return sent

    def close(self) -> None:
        self.sock.close()


def smtp_line(ports: dict[str, int], size: int) -> tuple[int, bytes]:
    c = Client(ports["smtp"])
    c.line()
    sent = c.flood(size)
    return sent, _answer(c)


def smtp_data(ports: dict[str, int], size: int) -> tuple[int, bytes]:
    c = Client(ports["smtp"])
    c.line()
    c.send(b"EHLO bench.example\r\n")
    c.until(b"250 ")
    c.send(f"MAIL FROM:<a@example.org>\r\nRCPT TO:<{ALICE}>\r\nDATA\r\n".encode())
    c.until(b"354")
    sent = c.flood(size, DATA_CHUNK)
    with contextlib.suppress(OSError):
        c.send(b"\r\n.\r\n")  # the flood may end mid-line
    return sent, _answer(c)


def smtp_bdat(ports: dict[str, int], size: int) -> tuple[int, bytes]:
    c = Client(ports["smtp"])
    c.line()
    c.send(b"EHLO bench.example\r\n")
    c.until(b"250 ")
    c.send(f"MAIL FROM:<a@example.org>\r\nRCPT TO:<{ALICE}>\r\n".encode())
    c.line()
    c.line()
    c.send(f"BDAT {size} LAST\r\n".encode())
    sent = c.flood(size, DATA_CHUNK)
    return sent, _answer(c)


def pop3_line(ports: dict[str, int], size: int) -> tuple[int, bytes]:
    c = Client(ports["pop3"])
    c.line()
    sent = c.flood(size)
    return sent, _answer(c)


def imap_line(ports: dict[str, int], size: int) -> tuple[int, bytes]:
    c = Client(ports["imap"])
    c.line()
    sent = c.flood(size)
    return sent, _answer(c)


def _imap_login(ports: dict[str, int]) -> Client:
    c = Client(ports["imap"])
    c.line()
    c.send(f"l LOGIN {ALICE} secret\r\n".encode())
    c.until(b"l ")
    return c


def imap_append_nonsync(ports: dict[str, int], size: int) -> tuple[int, bytes]:
    c = _imap_login(ports)
    c.send(b"a APPEND INBOX {%d+}\r\n" % size)
    sent = c.flood(size, DATA_CHUNK)
    with contextlib.suppress(OSError):
        c.send(b"\r\n")
    return sent, _answer(c)


def imap_append_sync_ignored(ports: dict[str, int], size: int) -> tuple[int, bytes]:
    c = _imap_login(ports)
    c.send(b"a APPEND INBOX {%d}\r\n" % size)
    refusal = c.line()
    sent = c.flood(size, DATA_CHUNK)
    return sent, refusal + b" / " + _answer(c)


def imap_search_literal(ports: dict[str, int], size: int) -> tuple[int, bytes]:
    c = _imap_login(ports)
    c.send(b"s SELECT INBOX\r\n")
    c.until(b"s ")
    c.send(b"a SEARCH TEXT {%d+}\r\n" % size)
    sent = c.flood(size)
    return sent, _answer(c)


def smtp_unread(ports: dict[str, int], size: int) -> tuple[int, bytes]:
    c = Client(ports["smtp"])
    c.line()
    c.sock.settimeout(5)  # the server stops reading when its answers are not read
    sent = c.flood(size, b"NOOP\r\n" * (MIB // 6))
    return sent, _answer(c)


def imap_unread(ports: dict[str, int], size: int) -> tuple[int, bytes]:
    c = _imap_login(ports)
    c.sock.settimeout(5)
    sent = c.flood(size, b"n NOOP\r\n" * (MIB // 8))
    return sent, _answer(c)


def _answer(c: Client) -> bytes:
    try:
        c.sock.settimeout(60)
        line = c.line()
    except OSError as exc:
        line = f"<{type(exc).__name__}>".encode()
    c.close()
    return line


ATTACKS: dict[str, Callable[[dict[str, int], int], tuple[int, bytes]]] = {
    "smtp line": smtp_line,
    "smtp DATA": smtp_data,
    "smtp BDAT": smtp_bdat,
    "pop3 line": pop3_line,
    "imap line": imap_line,
    "imap APPEND {n+}": imap_append_nonsync,
    "imap APPEND {n} ignored": imap_append_sync_ignored,
    "imap SEARCH {n+}": imap_search_literal,
    "smtp NOOPs unread": smtp_unread,
    "imap NOOPs unread": imap_unread,
}


def start(tmp: pathlib.Path) -> tuple[subprocess.Popen[bytes], dict[str, int], int]:
    (tmp / "sansmail.toml").write_text(
        'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n'
        '[listen]\nsmtp = "127.0.0.1:0"\npop3 = "127.0.0.1:0"\nimap = "127.0.0.1:0"\n'
        '[dns]\nnameservers = ["127.0.0.1:9"]\n'
        '[antispam]\nspf = "off"\ndkim = "off"\ndmarc = "off"\n'
    )
    UserStore(
        tmp / "data" / "users.json",
        hasher=PasswordHasher(time_cost=1, memory_cost=8, parallelism=1),
    ).add(parse_address(ALICE), "secret")
    script = shutil.which("sansmail-trio")
    assert script is not None, "sansmail-trio is not installed"
    log = tmp / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([script, "serve"], cwd=tmp, stderr=out)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.findall(r"(\w+) on 127\.0\.0\.1:(\d+)", log.read_text())
        if "started" in log.read_text() and found:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        raise SystemExit("server did not start:\n" + log.read_text())
    ports = {name: int(port) for name, port in found}
    children = pathlib.Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    servers = [
        int(c)
        for c in children
        if pathlib.Path(f"/proc/{c}/comm").read_text().strip() != "sansmail-queue"
    ]
    assert len(servers) == 1, servers
    return proc, ports, servers[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="MiB per attack (1024)")
    parser.add_argument("--only", default="", help="attacks to run, comma-separated")
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    size = args.size * MIB
    chosen = [a for a in ATTACKS if not args.only or a in args.only.split(",")]
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="memory-limits-", dir=args.tmpdir))
    proc, ports, pid = start(tmp)
    print(f"server process {pid}; {args.size} MiB per attack")
    print(f"{'attack':26} {'taken MiB':>10} {'s':>6} {'before':>7} {'peak+':>7}  answer")
    try:
        for name in chosen:
            _reset_peak(pid)
            before = _status(pid)["VmRSS"]
            started = time.monotonic()
            sent, answer = ATTACKS[name](ports, size)
            took = time.monotonic() - started
            peak = _status(pid)["VmHWM"]
            print(
                f"{name:26} {sent / MIB:10.1f} {took:6.1f} {before / MIB:7.1f}"
                f" {(peak - before) / MIB:7.1f}  {answer[:90].decode(errors='replace')}",
                flush=True,
            )
    finally:
        proc.terminate()
        proc.wait(30)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
