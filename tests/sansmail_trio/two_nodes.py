"""Two real ``sansmail-trio serve`` processes sharing one PostgreSQL database, for
test_two_nodes.py: node A listens on 127.0.0.1 and node B on 127.0.0.2, each with a
data_dir of its own (its self-signed certificate, keys, control sockets) and the same
dsn; and an aiosmtpd sink on 127.0.0.1 that the relayed mail reaches through
``[delivery] transport``, recording which node sent each message (by its EHLO name) and
able to hold a node's conversations at RCPT, before any content is accepted.

Each node is started in a session of its own, so that killing its process group reaches
the master, its server process and its queue runner together.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs
from aiosmtpd.controller import Controller

REMOTE = "remote.test"
DOMAIN = "example.test"
#: Seconds of [storage] queue_lease: short, so that a dead node's claims end soon.
LEASE = 2
#: ... and where no node dies: long enough that a node starved of CPU by a loaded
#: machine (its leases renewed every third of one) does not lose a claim it still works
#: on, which would let a second node deliver the message again (RFC 5321's duplicate,
#: allowed after a takeover but not what the steady-state test counts).
STEADY_LEASE = 10
GUARD = 30.0  # seconds: a bound on a hang only, never a timing assertion

CONFIG = """\
hostname = "{hostname}"
domains = ["{domain}"]
data_dir = "data"
processes = 1
mynetworks = ["127.0.0.0/8"]
[listen]
smtp = "{host}:0"
pop3 = "{host}:0"
imap = "{host}:0"
[storage]
backend = "postgresql"
dsn = "{dsn}"
queue_lease = "{lease}s"
[smtp]
shutdown_grace = "0s"
[dns]
nameservers = ["127.0.0.1:9"]
[antispam]
spf = "off"
dkim = "off"
dmarc = "off"
[delivery]
transport = {{ "{remote}" = "[127.0.0.1]:{sink_port}" }}
tls = "none"
minimal_backoff = "1s"
maximal_backoff = "2s"
"""

# "sansmail 1.2 started ...: smtp on 127.0.0.2:2525; ...; domains=..."
_STARTED = re.compile(r"sansmail \S+ started[^:]*: (.*?); domains=")


def wait_for(check: Callable[[], Any], *, what: str, timeout: float = GUARD) -> Any:
    """Poll `check` until it returns something true; fail naming `what` at the bound."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what}")
        time.sleep(0.05)


class Node:
    """One ``sansmail-trio serve`` on `host`, its config in `base`/sansmail.toml."""

    def __init__(self, name: str, base: pathlib.Path, host: str, dsn: str, sink_port: int) -> None:
        self.name = name
        self.base = base
        self.host = host
        self.hostname = f"{name}.{DOMAIN}"
        self.log = base / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}
        self.dsn = dsn
        self.sink_port = sink_port
        #: [storage] queue_lease in seconds, written at `launch`.
        self.lease = LEASE
        base.mkdir(parents=True, exist_ok=True)

    def launch(self) -> None:
        """Start the node; `wait_started` waits for it (two nodes start side by side)."""
        (self.base / "sansmail.toml").write_text(
            CONFIG.format(
                hostname=self.hostname,
                domain=DOMAIN,
                host=self.host,
                dsn=self.dsn,
                lease=self.lease,
                remote=REMOTE,
                sink_port=self.sink_port,
            )
        )
        # Not the sansmail-trio script: a wrapper (pyenv's shim) costs seconds of CPU.
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sansmail_trio", "serve"],
                cwd=self.base,
                stderr=out,
                start_new_session=True,
            )

    def wait_started(self) -> None:
        """Wait for the node's "started" line, and read its ports from it."""
        assert self.proc is not None
        deadline = time.monotonic() + 60
        listener = re.compile(rf"(\w+) on {re.escape(self.host)}:(\d+)")
        while time.monotonic() < deadline and self.proc.poll() is None:
            started = _STARTED.findall(self.log.read_text())
            if started:
                self.ports = {n: int(p) for n, p in listener.findall(started[-1])}
                return
            time.sleep(0.02)
        self.kill()
        raise AssertionError(f"node {self.name} did not start: {self.log.read_text()}")

    def start(self) -> None:
        self.launch()
        self.wait_started()

    def kill(self) -> None:
        """SIGKILL to the whole process group: master, server process, queue runner."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        self.proc.wait(10)
        # The group's other members are not our children: wait for them to be gone
        # (their database sessions end with them).
        wait_for(lambda: not _group_alive(pgid), what=f"node {self.name}'s group gone")

    def terminate(self) -> None:
        """SIGTERM to the master (it stops its children); `stop` waits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """Wait for the node to end after `terminate`; SIGKILL to what remains."""
        if self.proc is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def cli(self, *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sansmail_trio", *argv],
            cwd=self.base,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def port(self, service: str) -> int:
        return self.ports[service]


def _group_alive(pgid: int) -> bool:
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                fields = stat.rpartition(")")[2].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    return True
    return False


@attrs.define
class Arrival:
    """One message the sink accepted: which node sent it and its Message-ID."""

    sender: str  # the EHLO name: the node's hostname
    rcpt_tos: list[str]
    message_id: str
    content: bytes


class _Handler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return responses

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        sender = str(session.host_name)
        if self.sink.stalls(sender):
            with self.sink.lock:
                self.sink.held.append((sender, address.lower()))
            # Held before the answer to RCPT: nothing of the message is accepted yet,
            # so a node killed now leaves it undelivered, never half-delivered.
            while self.sink.stalls(sender):
                await asyncio.sleep(0.05)
            # A node killed meanwhile took its conversation with it: answer nothing
            # that could be taken as a delivery.
            if server.transport is None or server.transport.is_closing():
                return "421 4.3.0 gone"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = bytes(envelope.original_content)
        parsed = email.message_from_bytes(content, policy=email.policy.compat32)
        with self.sink.lock:
            self.sink.arrivals.append(
                Arrival(
                    sender=str(session.host_name),
                    rcpt_tos=list(envelope.rcpt_tos),
                    message_id=str(parsed.get("Message-ID", "")),
                    content=content,
                )
            )
        return "250 2.0.0 OK"


class Sink:
    """aiosmtpd on 127.0.0.1:`port`: every message accepted, recorded in `arrivals`;
    the conversations of the nodes named in `stalled` are held at RCPT (recorded in
    `held`) until `release`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lock = threading.Lock()
        self.arrivals: list[Arrival] = []
        self.held: list[tuple[str, str]] = []
        self.stalled: set[str] = set()
        self.controller = Controller(
            _Handler(self), hostname="127.0.0.1", port=port, ready_timeout=60
        )

    def stalls(self, sender: str) -> bool:
        with self.lock:
            return sender in self.stalled

    def stall(self, sender: str) -> None:
        with self.lock:
            self.stalled.add(sender)

    def release(self, sender: str) -> None:
        with self.lock:
            self.stalled.discard(sender)

    def received(self) -> list[Arrival]:
        with self.lock:
            return list(self.arrivals)

    def holding(self) -> list[tuple[str, str]]:
        with self.lock:
            return list(self.held)

    def __enter__(self) -> Sink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release_all()
        self.controller.stop()

    def release_all(self) -> None:
        with self.lock:
            self.stalled.clear()


def start_all(*nodes: Node) -> None:
    """Start `nodes` side by side (each start is mostly CPU: imports, TLS files)."""
    for node in nodes:
        node.launch()
    for node in nodes:
        node.wait_started()


def stop_all(*nodes: Node) -> None:
    """Stop every node, side by side; SIGKILL to what remains of each."""
    for node in nodes:
        node.terminate()
    for node in nodes:
        node.stop()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
