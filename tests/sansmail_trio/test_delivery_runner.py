"""The queue runner in a process of its own: the SMTP processes announce what they queue
over a pipe, the runner process (``sansmail-queue``) delivers it in batches, one
connection carrying several transactions; and a queue left by sansmail 0.1 (format 1)
is delivered after the upgrade.

The tests of storage run on both storage backends: the queue in its directory, or on
PostgreSQL in the database (read with `PgQueueStore.list`), where there is no runner
lock (every node runs a runner and claims messages under a lease) and no 0.1 queue to
recover: the tests of those are Maildir-only."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import smtplib
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing
from delivery_helpers import PEER, Sink, free_port
from dns_server import DNSServer
from trio_helpers import (
    BOTH_BACKENDS,
    maildir_only,
    pg_query,
    quick_auth,
    storage_table,
    wait_until_started,
)

from sansmail.config import Config, load_config
from sansmail.mail.envelope import QueuedMessage, QueuedRecipient, encode_envelope
from sansmail.storage.aliasfile import AliasSource
from sansmail.storage.maildir import MaildirStore
from sansmail.storage.queue import QueueStore
from sansmail.storage.users import UserStore
from sansmail_trio import serve
from sansmail_trio._dns import Resolver
from sansmail_trio._queue import BATCH_SIZE, QueueRunner, pipe_waker, read_wakeups

COUNT = 20

#: The tests that use `server_backend` run on both storage backends.
pytestmark = BOTH_BACKENDS


def _queued(config: Config) -> list[QueuedMessage]:
    """What the queue of `config`'s server holds: its directory, or its table."""
    if config.storage.backend != "postgresql":
        return QueueStore(config.data_dir / "queue").list()
    # Imported here: psycopg is there only with the postgresql extra.
    from sansmail.storage.pg import Database  # noqa: PLC0415
    from sansmail.storage.pg._queue import PgQueueStore  # noqa: PLC0415

    # A look, not a node: list() claims nothing, so the node name is arbitrary.
    db = Database(config.storage.dsn)
    try:
        return PgQueueStore(db, node="test").list()
    finally:
        db.close()


@pytest.fixture
def dns() -> Iterator[DNSServer]:
    with DNSServer() as server:
        server.add("peer.test", "MX", "10 mx.peer.test.")
        server.add("mx.peer.test", "A", PEER)
        yield server


# -- the pipe ---------------------------------------------------------------------------------


async def test_the_pipe_carries_queue_ids_from_any_writer() -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    wake = pipe_waker(write_end)
    woken: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_wakeups, read_end, woken.append)
        wake("A1")
        wake("B2")
        os.write(write_end, b"not an id\n")  # nothing we wrote: ignored
        os.write(write_end, b"C3")  # a line arrives in pieces ...
        await trio.sleep(0.01)
        os.write(write_end, b"\nD4\n")  # ... and is read whole
        os.close(write_end)  # every writer gone: the reader ends
    assert woken == ["A1", "B2", "C3", "D4"]


def test_a_full_or_broken_pipe_never_stops_a_session() -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    wake = pipe_waker(write_end)
    for n in range(100_000):  # far more than a pipe holds: the rest is dropped
        wake(f"Q{n}")
    os.close(read_end)
    wake("LAST")  # the runner is gone: no error either
    os.close(write_end)


# -- serve() beside a runner process ---------------------------------------------------------


async def test_serve_with_wake_announces_and_leaves_delivery_to_the_runner(
    tmp_path: pathlib.Path, backend_dsn: str | None
) -> None:
    (tmp_path / "sansmail.toml").write_text(
        'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n'
        'mynetworks = ["127.0.0.0/8"]\n[listen]\nsmtp = "127.0.0.1:0"\n'
        '[dns]\nnameservers = ["127.0.0.1:9"]\n' + storage_table(backend_dsn)
    )
    config = load_config(tmp_path / "sansmail.toml", default_hostname="unused.test")
    woken: list[str] = []
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:

        async def run(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
            await serve(
                config,
                shutdown=shutdown,
                task_status=task_status,
                auth_settings=quick_auth(config),
                wake=woken.append,
            )

        bound = await nursery.start(run)
        port = bound["smtp"][0][1]

        def relay() -> None:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.sendmail("a@example.org", ["b@far.test"], b"Subject: x\r\n\r\nhi\r\n")

        await trio.to_thread.run_sync(relay)
        (message,) = _queued(config)
        assert woken == [message.queue_id]
        if config.storage.backend == "postgresql":
            # No runner here: no node's lease holds the message, which a runner (the
            # runner process's, or any node's) claims as soon as it looks.
            held = "SELECT lease_holder FROM queue_messages WHERE queue_id = %s"
            assert pg_query(config.storage.dsn, held, (message.queue_id,)) == [(None,)]
        else:
            # No runner here: the runner's lock is free for the runner process to take.
            lock = QueueStore(config.data_dir / "queue").lock(wait=False)
            assert lock is not None
            os.close(lock)
        shutdown.set()


@maildir_only("the file queue's runner lock and recovery; on PostgreSQL every node runs a runner")
@pytest.mark.usefixtures("server_backend")
async def test_a_runner_waits_for_the_runner_of_an_earlier_start(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "sansmail.toml").write_text(
        'hostname = "mx.example.test"\ndomains = ["example.test"]\ndata_dir = "data"\n'
        '[dns]\nnameservers = ["127.0.0.1:9"]\n'
    )
    config = load_config(tmp_path / "sansmail.toml", default_hostname="unused.test")
    queue = QueueStore(config.data_dir / "queue")
    half_written = config.data_dir / "queue" / "HALF1.q"
    earlier = queue.lock()  # the runner of an earlier start, still going
    assert earlier is not None
    half_written.write_bytes(b"")  # what it may be about to recover or write
    runner = QueueRunner(
        config=config,
        queue=queue,
        store=MaildirStore(config.data_dir, hostname="mx.example.test"),
        users=UserStore(config.data_dir / "users.json"),
        aliases=AliasSource(None),
        resolver=Resolver(),
        log=logging.getLogger("sansmail.test.queue"),
    )
    started = trio.Event()
    async with trio.open_nursery() as nursery:

        async def run() -> None:
            await nursery.start(runner.run)
            started.set()

        nursery.start_soon(run)
        with trio.fail_after(30):  # bounds a failing test only
            while "waiting for the queue runner of an earlier start" not in caplog.text:
                await trio.sleep(0.01)
        await trio.testing.wait_all_tasks_blocked()
        assert not started.is_set()
        assert half_written.exists()  # no recovery under another runner's feet
        os.close(earlier)  # it exits
        await started.wait()
        assert not half_written.exists()  # recovered, now that it is ours
        assert "queue recovery: HALF1.q" in caplog.text
        nursery.cancel_scope.cancel()


# -- sansmail-trio serve ------------------------------------------------------------------------


def _configure(
    tmp_path: pathlib.Path, dns: DNSServer, peer_port: int, processes: int, storage: str = ""
) -> Config:
    (tmp_path / "sansmail.toml").write_text(
        f"""\
hostname = "mx.example.test"
domains = ["example.test"]
data_dir = "data"
mynetworks = ["127.0.0.0/8"]
processes = {processes}
[listen]
smtp = "127.0.0.1:0"
[dns]
nameservers = ["{dns.host_port}"]
[delivery]
smtp_port = {peer_port}
minimal_backoff = "1s"
maximal_backoff = "1s"
{storage}"""
    )
    return load_config(tmp_path / "sansmail.toml", default_hostname="unused.test")


def _serve(tmp_path: pathlib.Path, processes: int) -> tuple[subprocess.Popen[bytes], int]:
    script = shutil.which("sansmail-trio")
    assert script is not None
    path = tmp_path / "serve.log"
    with path.open("ab") as log:
        proc = subprocess.Popen([script, "serve"], cwd=tmp_path, stderr=log)
    return proc, wait_until_started(proc, path, processes=processes)["smtp"]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
    assert proc.wait(30) == 0


def _wait(condition: Any, what: str, log: pathlib.Path) -> None:
    deadline = time.monotonic() + 30  # bounds a failing test only
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}\n" + log.read_text()[-4000:])


def _subjects(sink: Sink) -> list[str]:
    return sorted(
        line[9:].decode()
        for received in sink.received
        for line in received.content.split(b"\r\n")
        if line.startswith(b"Subject: ")
    )


def test_the_runner_process_delivers_what_every_server_process_queues(
    tmp_path: pathlib.Path, dns: DNSServer, backend_dsn: str | None
) -> None:
    peer_port = free_port(PEER)
    storage = storage_table(backend_dsn)
    config = _configure(tmp_path, dns, peer_port, processes=2, storage=storage)
    log = tmp_path / "serve.log"
    with Sink(PEER, peer_port) as sink:
        proc, port = _serve(tmp_path, processes=2)
        try:
            children = pathlib.Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text()
            names = [pathlib.Path(f"/proc/{c}/comm").read_text().strip() for c in children.split()]
            assert names.count("sansmail-queue") == 1
            # A connection per message: the kernel spreads them over both processes.
            for n in range(COUNT):
                with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                    client.sendmail(
                        "app@example.test", ["bob@peer.test"], f"Subject: m{n}\r\n\r\n."
                    )
            _wait(lambda: len(sink.received) >= COUNT, "every delivery", log)
            _wait(lambda: not _queued(config), "the queue to empty", log)
        finally:
            _stop(proc)
    assert _subjects(sink) == sorted(f"m{n}" for n in range(COUNT))
    text = log.read_text()
    assert text.count("status=sent") == COUNT
    assert "sansmail/queue[" in text


def _write_format_1(queue: pathlib.Path, queue_id: str, subject: str) -> None:
    """A message as sansmail 0.1 queued it: ``<id>.msg`` beside an indented ``<id>.env``."""
    content = f"Subject: {subject}\r\n\r\nqueued by 0.1\r\n".encode()
    message = QueuedMessage(
        queue_id=queue_id,
        sender="app@example.test",
        arrival=time.time() - 60,
        size=len(content),
        recipients=(QueuedRecipient(address="bob@peer.test", attempts=1, last_reason="451 x"),),
    )
    (queue / f"{queue_id}.msg").write_bytes(content)
    doc = json.loads(encode_envelope(message))
    (queue / f"{queue_id}.env").write_text(json.dumps(doc, indent=1) + "\n")


@maildir_only("a queue directory left by sansmail 0.1; a database has no such past")
@pytest.mark.usefixtures("server_backend")
def test_a_format_1_queue_is_delivered_after_the_upgrade_in_batches(
    tmp_path: pathlib.Path, dns: DNSServer
) -> None:
    peer_port = free_port(PEER)
    _configure(tmp_path, dns, peer_port, processes=1)
    queue_dir = tmp_path / "data" / "queue"
    queue_dir.mkdir(parents=True)
    ids = [f"OLD{n:03d}" for n in range(COUNT)]
    for n, queue_id in enumerate(ids):
        _write_format_1(queue_dir, queue_id, f"old{n}")
    log = tmp_path / "serve.log"
    queue = QueueStore(queue_dir)
    with Sink(PEER, peer_port) as sink:
        proc, _port = _serve(tmp_path, processes=1)
        try:
            _wait(lambda: len(sink.received) >= COUNT, "every delivery", log)
            _wait(lambda: not queue.list(), "the queue to empty", log)
        finally:
            _stop(proc)
        # Everything was due at start: opened together, and delivered by agents of
        # BATCH_SIZE messages, each on one connection (one EHLO per connection).
        assert sink.ehlos <= -(-COUNT // BATCH_SIZE)
    assert _subjects(sink) == sorted(f"old{n}" for n in range(COUNT))
    text = log.read_text()
    for queue_id in ids:
        assert f"queue recovery: {queue_id}.env, {queue_id}.msg: now {queue_id}.q" in text
    assert [name for name in os.listdir(queue_dir) if name != "lock"] == []
