"""Removals after delivery: made durable by a directory fsync that covers many batches
(at most `REMOVAL_SYNC_INTERVAL` after them, and once more when the runner stops), not
one fsync per batch. What a crash can bring back of an unsynced removal is the message
file as it was last written in full, which the next runner sends again: a duplicate,
never a loss."""

from __future__ import annotations

import logging
import pathlib
import shutil
import time
from collections.abc import Iterator

import pytest
import trio
from delivery_helpers import PEER, Sink, free_port, wait_for
from dns_server import DNSServer

from sansmail.config import Config, load_config
from sansmail.mail.envelope import QueuedMessage, QueuedRecipient
from sansmail.storage.aliasfile import AliasSource
from sansmail.storage.maildir import MaildirStore
from sansmail.storage.queue import QueueStore
from sansmail.storage.users import UserStore
from sansmail_trio import _queue
from sansmail_trio._dns import Resolver
from sansmail_trio._queue import QueueRunner

COUNT = 12


@pytest.fixture
def dns() -> Iterator[DNSServer]:
    with DNSServer() as server:
        server.add("peer.test", "MX", "10 mx.peer.test.")
        server.add("mx.peer.test", "A", PEER)
        yield server


def _config(tmp_path: pathlib.Path, dns: DNSServer, peer_port: int) -> Config:
    (tmp_path / "sansmail.toml").write_text(
        f"""\
hostname = "mx.example.test"
domains = ["example.test"]
data_dir = "data"
[dns]
nameservers = ["{dns.host_port}"]
[delivery]
smtp_port = {peer_port}
"""
    )
    return load_config(tmp_path / "sansmail.toml", default_hostname="unused.test")


def _enqueue(queue: QueueStore, subject: str) -> str:
    queue_id = queue.new_id()
    content = f"Subject: {subject}\r\n\r\nhello\r\n".encode()
    writer = queue.begin(queue_id)
    writer.write(content)
    writer.commit(
        QueuedMessage(
            queue_id=queue_id,
            sender="app@example.test",
            arrival=time.time(),
            size=len(content),
            recipients=(QueuedRecipient(address="bob@peer.test"),),
        )
    )
    return queue_id


def _runner(config: Config, queue: QueueStore) -> QueueRunner:
    return QueueRunner(
        config=config,
        queue=queue,
        store=MaildirStore(config.data_dir, hostname="mx.example.test"),
        users=UserStore(config.data_dir / "users.json"),
        aliases=AliasSource(None),
        resolver=Resolver(nameservers=config.dns.nameservers),
        log=logging.getLogger("sansmail.test.queue"),
    )


async def _deliver_all(runner: QueueRunner, queue: QueueStore, sink: Sink, count: int) -> None:
    """Run `runner` until `count` messages reached the sink and the queue is empty."""
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        await wait_for(lambda: len(sink.received) >= count, what="the deliveries")
        await wait_for(lambda: not queue.ids(), what="the queue to empty")
        nursery.cancel_scope.cancel()


def _subjects(sink: Sink) -> list[str]:
    return sorted(
        line[9:].decode()
        for received in sink.received
        for line in received.content.split(b"\r\n")
        if line.startswith(b"Subject: ")
    )


async def test_removals_share_a_later_directory_fsync(
    tmp_path: pathlib.Path, dns: DNSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The interval outlasts the test: every sync seen is the one made on stopping.
    monkeypatch.setattr(_queue, "REMOVAL_SYNC_INTERVAL", 3600.0)
    synced: list[int] = []  # the messages left in the queue at each directory fsync
    real_sync = QueueStore.sync

    def sync(queue: QueueStore) -> None:
        synced.append(len(queue.ids()))
        real_sync(queue)

    monkeypatch.setattr(QueueStore, "sync", sync)
    peer_port = free_port(PEER)
    config = _config(tmp_path, dns, peer_port)
    queue = QueueStore(config.data_dir / "queue")
    for n in range(COUNT):
        _enqueue(queue, f"m{n}")
    runner = _runner(config, queue)
    with Sink(PEER, peer_port) as sink:
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            await wait_for(lambda: len(sink.received) >= COUNT, what="the deliveries")
            await wait_for(lambda: not queue.ids(), what="the queue to empty")
            assert synced == []  # removed, and no fsync per batch
            nursery.cancel_scope.cancel()
    assert synced == [0]  # one, on stopping, for every removal
    assert _subjects(sink) == sorted(f"m{n}" for n in range(COUNT))


async def test_a_removal_a_crash_undid_is_sent_again_not_lost(
    tmp_path: pathlib.Path, dns: DNSServer
) -> None:
    peer_port = free_port(PEER)
    config = _config(tmp_path, dns, peer_port)
    queue = QueueStore(config.data_dir / "queue")
    queue_id = _enqueue(queue, "again")
    # What the disk holds of the file until its removal is synced: the file as committed.
    on_disk = tmp_path / "before-the-crash.q"
    shutil.copy2(queue.root / f"{queue_id}.q", on_disk)
    with Sink(PEER, peer_port) as sink:
        await _deliver_all(_runner(config, queue), queue, sink, 1)
        # The crash came before the directory fsync: the removal is lost, the file back.
        shutil.copy2(on_disk, queue.root / f"{queue_id}.q")
        await _deliver_all(_runner(config, queue), queue, sink, 2)
    assert _subjects(sink) == ["again", "again"]  # a duplicate, as RFC 5321 §6.1 allows


async def test_an_attempt_the_disk_cannot_record_is_one_error_line_and_kept(
    tmp_path: pathlib.Path, dns: DNSServer, caplog: pytest.LogCaptureFixture
) -> None:
    # A full disk when the attempt's record is written (finish_all hands each attempt's
    # failure back in its place): no traceback, the message stays queued as it was.
    peer_port = free_port(PEER)
    config = _config(tmp_path, dns, peer_port)
    queue = QueueStore(config.data_dir / "queue")
    queue_id = _enqueue(queue, "full")
    runner = _runner(config, queue)
    calls: list[int] = []

    def finish_all(attempts: list[object], **_: object) -> list[Exception]:
        calls.append(len(attempts))
        return [OSError(28, "No space left on device")] * len(attempts)

    runner.manager.finish_all = finish_all  # type: ignore[method-assign,assignment]
    caplog.set_level(logging.INFO, logger="sansmail.test.queue")
    with Sink(PEER, peer_port) as sink:
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            await wait_for(lambda: bool(calls), what="the attempt to be finished")
            await wait_for(
                lambda: any("cannot record" in r.getMessage() for r in caplog.records),
                what="the log line",
            )
            nursery.cancel_scope.cancel()
    [line] = [r for r in caplog.records if "cannot record" in r.getMessage()]
    assert line.levelno == logging.ERROR
    assert line.exc_info is None
    assert line.getMessage() == (
        f"{queue_id}: cannot record the delivery attempt, tried again later: "
        "[Errno 28] No space left on device"
    )
    assert not any("internal error" in r.getMessage() for r in caplog.records)
    assert set(queue.ids()) == {queue_id}  # still queued, whole
    assert len(sink.received) == 1
