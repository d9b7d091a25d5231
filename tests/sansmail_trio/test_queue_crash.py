"""The queue across `kill -9`: `sansmail-trio serve` as a real process, killed with
SIGKILL while mail waits in the queue and while it is being delivered, then started
again. Every acknowledged message must arrive; none may arrive twice unless the kill
fell between the remote server's 250 and our note of it (RFC 5321 §6.1 accepts that).

On both storage backends: on PostgreSQL the queue is the queue_messages table (the
commit before the 250 is what fsync is to the file queue), and a killed node's claims
are taken over by the next one when their lease ends."""

from __future__ import annotations

import collections
import pathlib
import shutil
import smtplib
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
from delivery_helpers import Sink, free_port
from dns_server import DNSServer
from trio_helpers import BOTH_BACKENDS, started_lines, storage_table, wait_until_started

from sansmail.mail.envelope import QueuedMessage
from sansmail.storage.queue import QueueStore

pytestmark = BOTH_BACKENDS

PEER = "127.0.0.2"
COUNT = 20
#: [storage] queue_lease, in seconds, on PostgreSQL. The killed server's queue runner
#: (a child process) gives its claims back when it sees its parent gone, but one whose
#: attempt is still running at the end of its grace keeps its claim until the lease
#: ends; the default (a minute) is longer than the restarted server is given here to
#: deliver everything. Short, not zero: the runner renews it every third of it.
LEASE = 2


@pytest.fixture
def dns() -> Iterator[DNSServer]:
    with DNSServer() as server:
        server.add("peer.test", "MX", "10 mx.peer.test.")
        server.add("mx.peer.test", "A", PEER)
        yield server


def _queue(tmp_path: pathlib.Path, dsn: str | None) -> Callable[[], list[QueuedMessage]]:
    """What the queue holds now, read as the test needs it: the queue directory's
    files, or the queue_messages rows."""
    if dsn is None:
        return QueueStore(tmp_path / "data" / "queue").list

    def rows() -> list[QueuedMessage]:
        # Imported here: psycopg is there only with the postgresql extra.
        from sansmail.storage.pg import Database  # noqa: PLC0415
        from sansmail.storage.pg._queue import PgQueueStore  # noqa: PLC0415

        # A look, not a node: list() claims nothing, so the node name is arbitrary.
        db = Database(dsn)
        try:
            return PgQueueStore(db, node="test").list()
        finally:
            db.close()

    return rows


def _configure(tmp_path: pathlib.Path, dns: DNSServer, peer_port: int, dsn: str | None) -> None:
    storage = storage_table(dsn, queue_lease=f"{LEASE}s")
    # Port 0: each start listens where the system says, read back from the log.
    (tmp_path / "sansmail.toml").write_text(
        f"""\
hostname = "mx.example.test"
domains = ["example.test"]
data_dir = "data"
mynetworks = ["127.0.0.0/8"]
[listen]
smtp = "127.0.0.1:0"
[dns]
nameservers = ["{dns.host_port}"]
[delivery]
smtp_port = {peer_port}
minimal_backoff = "1s"
maximal_backoff = "1s"
"""
        + storage
    )


def _serve(tmp_path: pathlib.Path) -> tuple[subprocess.Popen[bytes], int]:
    """The server started, and its SMTP port."""
    script = shutil.which("sansmail-trio")
    assert script is not None
    path = tmp_path / "serve.log"
    seen = started_lines(path)
    with path.open("ab") as log:
        proc = subprocess.Popen([script, "serve"], cwd=tmp_path, stderr=log)
    return proc, wait_until_started(proc, path, seen=seen)["smtp"]


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()  # SIGKILL: no cleanup at all
    proc.wait(10)


def _send_all(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        for n in range(COUNT):
            client.sendmail(
                "app@example.test", ["bob@peer.test"], f"Subject: m{n}\r\n\r\nbody {n}\r\n"
            )


def _subjects(sink: Sink) -> collections.Counter[str]:
    found: collections.Counter[str] = collections.Counter()
    for received in sink.received:
        for line in received.content.split(b"\r\n"):
            if line.startswith(b"Subject: "):
                found[line[9:].decode()] += 1
    return found


def _wait(condition: object, timeout: float, what: str, log: pathlib.Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}\n" + log.read_text()[-4000:])


def test_queued_mail_survives_kill_9(
    tmp_path: pathlib.Path, dns: DNSServer, backend_dsn: str | None
) -> None:
    peer_port = free_port(PEER)
    _configure(tmp_path, dns, peer_port, backend_dsn)
    log = tmp_path / "serve.log"
    proc, port = _serve(tmp_path)
    try:
        _send_all(port)  # the peer is down: everything is deferred
    finally:
        _kill(proc)
    queued = _queue(tmp_path, backend_dsn)
    assert len(queued()) == COUNT
    with Sink(PEER, peer_port) as sink:
        proc, _ = _serve(tmp_path)
        try:
            _wait(lambda: sum(_subjects(sink).values()) >= COUNT, 30, "delivery", log)
            _wait(lambda: not queued(), 10, "the queue to empty", log)
            time.sleep(1.5)  # a second delivery, if any, would arrive by now
        finally:
            _kill(proc)
    subjects = _subjects(sink)
    assert set(subjects) == {f"m{n}" for n in range(COUNT)}
    assert max(subjects.values()) == 1, subjects


def test_kill_9_during_delivery_loses_nothing(
    tmp_path: pathlib.Path, dns: DNSServer, backend_dsn: str | None
) -> None:
    peer_port = free_port(PEER)
    _configure(tmp_path, dns, peer_port, backend_dsn)
    log = tmp_path / "serve.log"
    queued = _queue(tmp_path, backend_dsn)
    with Sink(PEER, peer_port) as sink:
        proc, port = _serve(tmp_path)
        try:
            _send_all(port)
            _wait(lambda: sink.received, 30, "the first delivery", log)
        finally:
            _kill(proc)
        proc, _ = _serve(tmp_path)
        try:
            _wait(lambda: len(_subjects(sink)) >= COUNT, 30, "every message", log)
            _wait(lambda: not queued(), 10, "the queue to empty", log)
        finally:
            _kill(proc)
    subjects = _subjects(sink)
    assert set(subjects) == {f"m{n}" for n in range(COUNT)}
    # Only a message whose 250 the kill separated from our envelope update can come
    # twice; the runner has at most MAX_ACTIVE of those in flight, and here far fewer.
    assert sum(subjects.values()) - COUNT <= COUNT // 2, subjects
