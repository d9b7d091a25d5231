"""Queue runners of several nodes on one PostgreSQL queue: together they drain it with
each message delivered once (to aiosmtpd on 127.0.0.2), and the messages a node that
died had claimed (a claim never given back; a runner process killed with SIGKILL in
the middle of its conversations) are finished by another once its leases end."""

from __future__ import annotations

import collections
import logging
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import trio
import trio.testing
from delivery_helpers import PEER, Sink, free_port, wait_for
from dns_server import DNSServer

from sansmail.config import Config, load_config
from sansmail.mail.envelope import QueuedMessage, QueuedRecipient
from sansmail.sessions.qmgr import Opened
from sansmail.storage.aliasfile import AliasSource
from sansmail.storage.maildir import MaildirStore
from sansmail.storage.pg import Database
from sansmail.storage.pg._queue import PgQueueStore, QueueUnavailableError
from sansmail.storage.users import UserStore
from sansmail_trio import _queue
from sansmail_trio._dns import Resolver
from sansmail_trio._pgnotify import Listener
from sansmail_trio._queue import QueueRunner

COUNT = 40
NODE = pathlib.Path(__file__).with_name("pg_queue_node.py")
ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def dns() -> Iterator[DNSServer]:
    with DNSServer() as server:
        server.add("peer.test", "MX", "10 mx.peer.test.")
        server.add("mx.peer.test", "A", PEER)
        yield server


def configure(tmp_path: pathlib.Path, dns: DNSServer, peer_port: int) -> Config:
    # No grace at a stop: the runner gives back what is in flight at once.
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "sansmail.toml").write_text(
        f"""\
hostname = "mx.example.test"
domains = ["example.test"]
data_dir = "data"
[smtp]
shutdown_grace = "0s"
[dns]
nameservers = ["{dns.host_port}"]
[delivery]
smtp_port = {peer_port}
"""
    )
    return load_config(tmp_path / "sansmail.toml", default_hostname="unused.test")


def runner(config: Config, queue: PgQueueStore, dns: DNSServer, name: str) -> QueueRunner:
    return QueueRunner(
        config=config,
        queue=queue,
        store=MaildirStore(config.data_dir, hostname=config.hostname),
        users=UserStore(config.data_dir / "users.json"),
        aliases=AliasSource(None),
        resolver=Resolver([dns.address], timeout=5),
        log=logging.getLogger(f"sansmail.test.{name}"),
    )


def enqueue(queue: PgQueueStore, count: int) -> list[str]:
    ids = []
    for n in range(count):
        qid = queue.new_id()
        writer = queue.begin(qid)
        writer.write(f"Subject: m{n}\r\n\r\nhello\r\n".encode())
        writer.commit(
            QueuedMessage(
                queue_id=qid,
                sender="app@example.test",
                arrival=time.time(),
                size=0,
                recipients=(QueuedRecipient(address=f"user{n}@peer.test"),),
            )
        )
        ids.append(qid)
    return ids


def subjects(sink: Sink) -> list[str]:
    return sorted(
        line[9:].decode()
        for received in sink.received
        for line in received.content.split(b"\r\n")
        if line.startswith(b"Subject: ")
    )


def delivered_by(caplog: pytest.LogCaptureFixture) -> collections.Counter[str]:
    """How many "status=sent" lines each runner's log has."""
    return collections.Counter(
        record.name.rpartition(".")[2]
        for record in caplog.records
        if "status=sent" in record.getMessage()
    )


async def test_two_runners_drain_one_queue_each_message_once(
    tmp_path: pathlib.Path, dns: DNSServer, pg_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    peer_port = free_port(PEER)
    config = configure(tmp_path, dns, peer_port)
    a = runner(config, PgQueueStore(pg_db, node="a:1"), dns, "a")
    b = runner(config, PgQueueStore(pg_db, node="b:1"), dns, "b")
    smtp_side = PgQueueStore(pg_db, node="smtp:1")
    with Sink(PEER, peer_port) as sink:
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            # Queued while both run, half announced to each (as the SMTP processes of
            # two nodes do); what one is not told of, the claims find all the same.
            ids = await trio.to_thread.run_sync(enqueue, smtp_side, COUNT)
            for index, qid in enumerate(ids):
                (a if index % 2 else b).wake(qid)
            await wait_for(lambda: len(sink.received) >= COUNT, what="every delivery")
            await wait_for(lambda: not smtp_side.ids(), what="the queue to empty")
            nursery.cancel_scope.cancel()
    assert subjects(sink) == sorted(f"m{n}" for n in range(COUNT))  # each exactly once
    assert sum(delivered_by(caplog).values()) == COUNT


async def test_a_message_queued_on_another_node_wakes_the_runner_by_notify(
    tmp_path: pathlib.Path, dns: DNSServer, pg_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_queue, "POLL_INTERVAL", 3600.0)  # only a NOTIFY can wake it
    peer_port = free_port(PEER)
    config = configure(tmp_path, dns, peer_port)
    store = PgQueueStore(pg_db, node="a:1")
    looked: list[float | None] = []
    real_soonest = store.soonest

    def soonest() -> float | None:
        looked.append(real_soonest())
        return looked[-1]

    store.soonest = soonest  # type: ignore[method-assign]
    a = runner(config, store, dns, "a")
    other_node = PgQueueStore(pg_db, node="b:1")
    with Sink(PEER, peer_port) as sink:
        async with trio.open_nursery() as nursery:
            listener: Listener = await nursery.start(Listener(pg_db).run)
            # The wiring a node's runner process needs.
            listener.on("queue", lambda _payload: a.wake())
            await nursery.start(a.run)
            # Idle: it found the queue empty, and waits to be woken.
            await wait_for(lambda: looked, what="the first look at the queue")
            await trio.testing.wait_all_tasks_blocked()
            assert looked == [None]
            await trio.to_thread.run_sync(enqueue, other_node, 3)
            await wait_for(lambda: len(sink.received) >= 3, what="the deliveries")
            nursery.cancel_scope.cancel()
    assert subjects(sink) == ["m0", "m1", "m2"]


async def test_the_messages_of_a_node_that_died_are_finished_by_another(
    tmp_path: pathlib.Path, dns: DNSServer, pg_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    peer_port = free_port(PEER)
    config = configure(tmp_path, dns, peer_port)
    dead = PgQueueStore(pg_db, node="dead:1", lease=1.0)
    ids = await trio.to_thread.run_sync(enqueue, dead, 10)
    # The dead node claimed them all and was killed before any outcome: its claims stay
    # until their leases end.
    claimed = await trio.to_thread.run_sync(lambda: dead.claim(100, now=time.time()))
    assert sorted(m.queue_id for m, _c in claimed.messages) == sorted(ids)
    survivor = runner(config, PgQueueStore(pg_db, node="alive:1", lease=30), dns, "alive")
    with Sink(PEER, peer_port) as sink:
        async with trio.open_nursery() as nursery:
            await nursery.start(survivor.run)
            await wait_for(lambda: len(sink.received) >= len(ids), what="the take-over")
            await wait_for(lambda: not dead.ids(), what="the queue to empty")
            nursery.cancel_scope.cancel()
    assert subjects(sink) == sorted(f"m{n}" for n in range(len(ids)))
    assert delivered_by(caplog) == {"alive": len(ids)}
    # Back from the dead, the node finds its claims gone: nothing of its is written.
    assert await trio.to_thread.run_sync(lambda: dead.renew(ids, now=time.time())) == set()


async def test_a_stopping_runner_gives_back_what_it_holds(
    tmp_path: pathlib.Path, dns: DNSServer, pg_db: Database
) -> None:
    config = configure(tmp_path, dns, free_port(PEER))
    store = PgQueueStore(pg_db, node="a:1")  # a lease of minutes
    a = runner(config, store, dns, "a")

    async def conversation_without_end(*_args: object) -> None:
        await trio.sleep_forever()

    a._client.deliver = conversation_without_end  # type: ignore[method-assign]
    ids = await trio.to_thread.run_sync(enqueue, store, 1)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        a.wake(ids[0])
        await wait_for(lambda: a._active, what="the claim")
        nursery.cancel_scope.cancel()  # SIGTERM, not SIGKILL
    other = PgQueueStore(pg_db, node="b:1")
    claimed = await trio.to_thread.run_sync(lambda: other.claim(10, now=time.time()))
    assert [m.queue_id for m, _c in claimed.messages] == ids  # at once: no lease to wait out


def held_by(db: Database, node: str) -> int:
    with db.transaction() as cur:
        cur.execute("SELECT count(*) FROM queue_messages WHERE lease_holder = %s", (node,))
        row = cur.fetchone()
    return int(row[0]) if row else 0


async def test_a_node_killed_mid_delivery_has_its_messages_finished_by_another(
    tmp_path: pathlib.Path,
    dns: DNSServer,
    pg_dsn: str,
    pg_db: Database,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    # The victim's next hop accepts the connection and never greets: its attempts hang
    # there, holding their claims (renewed every third of its 2 s lease) until it dies.
    with socket.create_server((PEER, 0)) as silent:
        configure(tmp_path / "victim", dns, silent.getsockname()[1])
        ids = await trio.to_thread.run_sync(enqueue, PgQueueStore(pg_db, node="smtp:1"), 5)
        config_path = tmp_path / "victim" / "sansmail.toml"
        with (tmp_path / "victim.log").open("wb") as log:
            victim = subprocess.Popen(
                [sys.executable, str(NODE), pg_dsn, str(config_path), "victim:1", "2"],
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stderr=log,
            )
        try:
            await wait_for(lambda: held_by(pg_db, "victim:1") == len(ids), what="its claims")
        finally:
            victim.kill()
            victim.wait(30)
        assert held_by(pg_db, "victim:1") == len(ids)  # killed holding them all
    sink_port = free_port(PEER)
    config = configure(tmp_path / "survivor", dns, sink_port)
    survivor = runner(config, PgQueueStore(pg_db, node="survivor:1"), dns, "survivor")
    with Sink(PEER, sink_port) as sink:
        async with trio.open_nursery() as nursery:
            await nursery.start(survivor.run)
            await wait_for(lambda: len(sink.received) >= len(ids), what="the take-over")
            await wait_for(lambda: not survivor.queue.ids(), what="the queue to empty")
            nursery.cancel_scope.cancel()
    assert subjects(sink) == sorted(f"m{n}" for n in range(len(ids)))
    assert delivered_by(caplog) == {"survivor": len(ids)}
    assert b"status=sent" not in (tmp_path / "victim.log").read_bytes()


async def test_a_claim_that_returns_after_the_stop_is_given_back(
    tmp_path: pathlib.Path, dns: DNSServer, pg_db: Database
) -> None:
    config = configure(tmp_path, dns, free_port(PEER))
    store = PgQueueStore(pg_db, node="a:1")  # a lease of minutes
    a = runner(config, store, dns, "a")
    ids = await trio.to_thread.run_sync(enqueue, store, 2)
    entered, go_on = threading.Event(), threading.Event()
    real_claim = a.manager.claim

    def claim_slowly(limit: int, *, now: float) -> Opened:
        entered.set()
        go_on.wait(30)
        return real_claim(limit, now=now)

    a.manager.claim = claim_slowly  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await trio.to_thread.run_sync(entered.wait, 30)
        nursery.cancel_scope.cancel()  # stopping while the claim is in its thread
        go_on.set()
    other = PgQueueStore(pg_db, node="b:1")
    claimed = await trio.to_thread.run_sync(lambda: other.claim(10, now=time.time()))
    assert sorted(m.queue_id for m, _c in claimed.messages) == sorted(ids)


async def test_a_claim_does_not_take_again_what_the_runner_has_in_flight(
    tmp_path: pathlib.Path, dns: DNSServer, pg_db: Database
) -> None:
    # The database was away for longer than the lease, so no renewal reached it: the
    # runner's next claim finds its own attempt's lease ended, and must not start a
    # second attempt on the message beside the one still under way.
    config = configure(tmp_path, dns, free_port(PEER))
    store = PgQueueStore(pg_db, node="a:1")
    a = runner(config, store, dns, "a")
    skew = [0.0]
    a.clock = lambda: time.time() + skew[0]

    async def conversation_without_end(*_args: object) -> None:
        await trio.sleep_forever()

    a._client.deliver = conversation_without_end  # type: ignore[method-assign]
    started: list[list[str]] = []
    real_start = a._start

    def start(opened: Opened, nursery: trio.Nursery) -> None:
        started.append([attempt.message.queue_id for attempt in opened.attempts])
        real_start(opened, nursery)

    a._start = start  # type: ignore[method-assign]
    ids = await trio.to_thread.run_sync(enqueue, store, 1)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        a.wake(ids[0])
        await wait_for(lambda: ids[0] in a._active, what="the claim")
        count = len(started)
        skew[0] = store.lease + 1
        a.wake()
        await wait_for(lambda: len(started) > count, what="a claim after the lease")
        nursery.cancel_scope.cancel()
    assert [qid for batch in started for qid in batch] == ids  # one attempt


async def test_a_claim_that_fails_with_an_internal_error_does_not_stop_the_runner(
    tmp_path: pathlib.Path, dns: DNSServer, pg_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    config = configure(tmp_path, dns, free_port(PEER))
    store = PgQueueStore(pg_db, node="a:1")
    a = runner(config, store, dns, "a")
    calls: list[int] = []
    real_claim = a.manager.claim

    def claim(limit: int, *, now: float) -> Opened:
        calls.append(limit)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return real_claim(limit, now=now)

    a.manager.claim = claim  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await wait_for(lambda: calls, what="the first claim")
        a.wake()
        await wait_for(lambda: len(calls) > 1, what="a claim after the failed one")
        nursery.cancel_scope.cancel()
    assert any("cannot claim" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_after_a_failed_claim_wakes_do_not_bring_the_next_one_sooner(
    tmp_path: pathlib.Path, dns: DNSServer, pg_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Messages queued on other nodes, attempts settling here: each would otherwise try
    # a database that refuses connections again at once.
    monkeypatch.setattr(_queue, "CLAIM_RETRY", 60.0)
    config = configure(tmp_path, dns, free_port(PEER))
    a = runner(config, PgQueueStore(pg_db, node="a:1"), dns, "a")
    calls: list[int] = []

    def claim(limit: int, *, now: float) -> Opened:
        calls.append(limit)
        raise QueueUnavailableError("database: too many clients already")

    a.manager.claim = claim  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await wait_for(lambda: calls, what="the first claim")
        for _ in range(10):
            a.wake()
            await trio.sleep(_queue.LINGER * 2)
        nursery.cancel_scope.cancel()
    assert len(calls) == 1
